"""`torchyard deploy <model>@<alias>|<model>/v<N>`: serve a model version.

The reference resolves against the ModelVersion objects of the namespace (the operator makes
one per version a job produced; :func:`torchyard.state.modelversion.resolve_ref`), and the
objects come from the pure builders of :mod:`torchyard.builders.serving`: a Deployment + a
Service owned by the ModelVersion, created with server-side apply (re-running updates them),
or with ``--kserve`` a KServe InferenceService printed for ``kubectl apply`` on clusters that
run KServe. ``--uri`` serves a version folder that has no ModelVersion object (no owner then);
``--dry-run`` prints the YAML instead of creating anything.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
import yaml

from torchyard.api.constants import GROUP, VERSION
from torchyard.api.modelversion import MODEL_VERSION_PLURAL, parse_version_ref
from torchyard.builders.serving import (
    HTTP_PORT,
    ServingError,
    ServingOptions,
    ServingTarget,
    build_deployment,
    build_inference_service,
    build_pod_monitor,
    build_service,
    serving_name,
    target_from_version,
)
from torchyard.cli_cluster.kube import (
    ContextOpt,
    Kube,
    KubeconfigOpt,
    NamespaceOpt,
    connect,
    err_usage,
    fail,
    one_line_errors,
)
from torchyard.state.modelversion import resolve_ref

FIELD_MANAGER = "torchyard-deploy"


def _resolve(kube: Kube, ref: str, model: str, alias: str | None) -> ServingTarget:
    # every version of the namespace, not a selector on the model label: a ModelVersion made by
    # hand (kubectl apply) may lack the label the operator sets; resolve_ref matches spec.model
    got = kube.custom.list_namespaced_custom_object(
        GROUP, VERSION, kube.namespace, MODEL_VERSION_PLURAL)
    body = resolve_ref(ref, list(got.get("items") or []))
    if body is None:
        fail(f"no ModelVersion {ref} in namespace {kube.namespace} "
             f"(`torchyard models {model} -n {kube.namespace}` lists its versions)")
    try:
        target = target_from_version(body)
    except ServingError as exc:
        fail(str(exc))
    return ServingTarget(**{**target.__dict__, "alias": alias})


def _apply(kube: Kube, manifest: dict[str, Any]) -> None:
    """Server-side apply: created the first time, updated to this spec after that."""
    from kubernetes import client

    meta = manifest["metadata"]
    args = (meta["name"], meta["namespace"], manifest)
    kwargs: dict[str, Any] = {"field_manager": FIELD_MANAGER, "force": True,
              "_content_type": "application/apply-patch+yaml"}
    if manifest["kind"] == "Deployment":
        client.AppsV1Api(kube.api).patch_namespaced_deployment(*args, **kwargs)
    elif manifest["kind"] == "PodMonitor":
        kube.custom.patch_namespaced_custom_object(
            "monitoring.coreos.com", "v1", meta["namespace"], "podmonitors", meta["name"],
            manifest, **kwargs)
    else:
        client.CoreV1Api(kube.api).patch_namespaced_service(*args, **kwargs)


def deploy(
    ref: Annotated[str, typer.Argument(help="<model>@<alias> or <model>/v<N>.")],
    uri: Annotated[str | None, typer.Option(
        "--uri", help="Serve this version folder (pvc://<claim>/<store>/<model>/v<N>) without "
                      "a ModelVersion object; REF must be <model>/v<N>.")] = None,
    image: Annotated[str | None, typer.Option(
        "--image", help="The trainer image (it carries the server).")] = None,
    image_pull_policy: Annotated[str | None, typer.Option("--image-pull-policy")] = None,
    replicas: Annotated[int, typer.Option("--replicas", min=0)] = 1,
    cpu: Annotated[str, typer.Option("--cpu", help="CPU request per replica.")] = "1",
    memory: Annotated[str, typer.Option("--memory", help="Memory request = limit.")] = "1Gi",
    name: Annotated[str | None, typer.Option(
        "--name", help="Deployment/Service name (default <model>-v<N>; a stable name such as "
                       "<model>-production is updated in place by the next deploy).")] = None,
    kserve: Annotated[bool, typer.Option(
        "--kserve", help="Print a KServe InferenceService instead of creating a Deployment.")
    ] = False,
    pod_monitor: Annotated[bool, typer.Option(
        "--pod-monitor", help="Also a Prometheus Operator PodMonitor for the serving pods "
                              "(their metrics-0 port).")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the Deployment and Service as YAML; create nothing.")] = False,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Serve a model version over HTTP (KServe Open Inference Protocol v2)."""
    try:
        model, alias, number = parse_version_ref(ref)
    except ValueError as exc:
        err_usage(str(exc))
    defaults = ServingOptions()
    options = ServingOptions(image=image or defaults.image, image_pull_policy=image_pull_policy,
                             replicas=replicas, cpu=cpu, memory=memory, name=name)
    if uri is not None and number is None:
        err_usage(f"--uri serves one folder: name it <model>/v<N>, not {ref!r}")
    printing = kserve or dry_run
    # printing a --uri version needs no cluster; anything else asks it (resolve, or apply)
    kube = None if uri is not None and printing else connect(kubeconfig, context, namespace)
    if uri is not None:
        assert number is not None
        target = ServingTarget(model, number, uri, kube.namespace if kube else
                               namespace or "default")
    else:
        assert kube is not None
        target = _resolve(kube, ref, model, alias)
    try:
        objects = ([build_inference_service(target, options)] if kserve else
                   [build_deployment(target, options), build_service(target, options)])
        if pod_monitor and not kserve:  # KServe's own annotations ask for the scrape there
            objects.append(build_pod_monitor(target, options))
    except ServingError as exc:
        fail(str(exc))
    if printing:
        sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False))
        return
    assert kube is not None
    for manifest in objects:
        _apply(kube, manifest)
    svc = serving_name(target, options)
    applied = ", ".join(f"{m['kind'].lower()}/{svc}" for m in objects)
    sys.stdout.write(
        f"{applied} applied in "
        f"{target.namespace}: "
        f"{model} v{target.version}{f' ({model}@{alias})' if alias else ''}\n"
        f"  infer: POST http://{svc}.{target.namespace}.svc:{HTTP_PORT}/v2/models/{model}/infer\n"
        f"  wait:  kubectl rollout status -n {target.namespace} deployment/{svc}\n")


def register(app: typer.Typer) -> None:
    """Add `deploy` to the `torchyard` CLI."""
    app.command("deploy")(one_line_errors(deploy))
