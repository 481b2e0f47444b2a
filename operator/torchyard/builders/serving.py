"""Pure builders for serving a model version: a Deployment + Service, or a KServe
InferenceService, running ``python -m torchyard_trainer.serve`` (Open Inference Protocol v2).

**Owner.** The Deployment and the Service are owned by the ModelVersion they serve (when there
is one): they serve exactly that version's bytes, so deleting the version — whose artifact
policy may delete the folder — takes its serving away with it through the garbage collector,
never leaving pods whose model vanished under them. A version outlives its jobs (it has no
owner itself), so the serving lives as long as the version does; ``kubectl delete deployment``
stops serving without touching the version. A Deployment for a bare storage URI (no
ModelVersion object) has no owner.

**Names.** ``<model>-v<N>`` by default (one Deployment per version, side by side during a
roll-out); ``name`` gives a stable one (``digits-mlp-production``): re-deploying after a
promotion then updates that Deployment in place (a rolling update) and moves its owner to the
new version.

**Pods.** The restricted Pod Security Standard (non-root, no privilege escalation, every
capability dropped, RuntimeDefault seccomp, read-only root filesystem with an emptyDir /tmp);
the store's claim mounted read-only; probes on ``/v2/health/live`` and ``/v2/health/ready``;
metrics on the container port ``metrics-0`` (the worker's convention: the chart's PodMonitor
for serving keeps ports named ``metrics-<n>``) and the label ``torchyard.io/role: serving``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchyard.api.constants import DEFAULT_TRAINER_IMAGE
from torchyard.api.contract import (
    DEFAULT_METRICS_PORT,
    DEFAULT_PVC_ROOT,
    TERMINATION_MESSAGE_PATH,
    Env,
    Label,
    is_remote,
    local_path,
    pvc_claim,
    split_uri,
)
from torchyard.api.modelversion import MODEL_LABEL

Manifest = dict[str, Any]

ROLE_SERVING = "serving"
"""Value of ``torchyard.io/role`` on serving pods (workers have ``worker``)."""
VERSION_LABEL = "torchyard.io/model-version"
ALIAS_LABEL = "torchyard.io/model-alias"
SHA256_ANNOTATION = "torchyard.io/model-sha256"
SERVING_CONTAINER = "server"
HTTP_PORT = 8080
"""KServe's and Triton's conventional REST port."""
HTTP_PORT_NAME = "http"
METRICS_PORT_NAME = "metrics-0"
SERVE_MODULE = "torchyard_trainer.serve"
KSERVE_MODEL_DIR = "/mnt/models"
"""Where KServe's storage initializer puts the ``STORAGE_URI`` of a custom container."""


class ServingError(ValueError):
    """A version that cannot be served the way asked (the CLI prints it as one line)."""


@dataclass(frozen=True)
class ServingTarget:
    """The version to serve, resolved (from a ModelVersion object or given as a URI)."""

    model: str
    version: int
    uri: str
    """Storage URI of the version directory: pvc://<claim>/…/<model>/v<N> (or file://…)."""
    namespace: str = "default"
    sha256: str | None = None
    alias: str | None = None
    """The alias it was deployed by (a label on the objects; informative)."""
    owner: Manifest | None = None
    """The ModelVersion object serving is owned by (needs metadata.name and .uid)."""


@dataclass(frozen=True)
class ServingOptions:
    image: str = DEFAULT_TRAINER_IMAGE
    image_pull_policy: str | None = None
    replicas: int = 1
    cpu: str = "1"
    memory: str = "1Gi"
    name: str | None = None
    """Deployment/Service name; default ``<model>-v<N>``."""
    max_batch: int = 1024
    labels: dict[str, str] = field(default_factory=dict)


def serving_name(t: ServingTarget, o: ServingOptions) -> str:
    if o.name:
        return o.name
    # a DNS-1035 label: at most 63 characters, the version suffix kept
    suffix = f"-v{t.version}"
    return re.sub(r"-+$", "", t.model[: 63 - len(suffix)]) + suffix


def selector_labels(t: ServingTarget, o: ServingOptions) -> dict[str, str]:
    return {Label.ROLE: ROLE_SERVING, "app.kubernetes.io/instance": serving_name(t, o)}


def labels(t: ServingTarget, o: ServingOptions) -> dict[str, str]:
    out = {
        **o.labels,
        **selector_labels(t, o),
        MODEL_LABEL: t.model,
        VERSION_LABEL: str(t.version),
        "app.kubernetes.io/name": "torchyard-serving",
        Label.MANAGED_BY: Label.MANAGED_BY_VALUE,
    }
    if t.alias:
        out[ALIAS_LABEL] = t.alias
    return out


def _metadata(t: ServingTarget, o: ServingOptions) -> Manifest:
    meta: Manifest = {"name": serving_name(t, o), "namespace": t.namespace,
                      "labels": labels(t, o)}
    if t.owner is not None:
        om = t.owner["metadata"]
        meta["ownerReferences"] = [{
            "apiVersion": t.owner.get("apiVersion", "torchyard.io/v1alpha1"),
            "kind": t.owner.get("kind", "ModelVersion"),
            "name": om["name"], "uid": om["uid"],
            # not a controller: a ModelVersion has no controller over what it owns; the
            # reference is for the garbage collector only
            "blockOwnerDeletion": False,
        }]
    return meta


def _threads(cpu: str) -> int:
    """Intra-op threads for a CPU request: whole cores, at least one ("500m" -> 1)."""
    value = float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    return max(1, math.ceil(value))


def _args(model_dir: str, t: ServingTarget, o: ServingOptions) -> list[str]:
    return ["--model-dir", model_dir, "--name", t.model, "--port", str(HTTP_PORT),
            "--metrics-port", str(DEFAULT_METRICS_PORT), "--threads", str(_threads(o.cpu)),
            "--max-batch", str(o.max_batch)]


def _security() -> Manifest:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
        "runAsNonRoot": True,  # the trainer image runs as uid 1000
        "readOnlyRootFilesystem": True,
    }


def _probe(path: str, period: int, failures: int, port: str | int = HTTP_PORT_NAME) -> Manifest:
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": period,
            "failureThreshold": failures, "timeoutSeconds": 5}


def _storage(t: ServingTarget) -> tuple[str, list[Manifest], list[Manifest]]:
    """(the version's path in the pod, volumes, mounts): its claim, read-only."""
    scheme, _ = split_uri(t.uri)
    if is_remote(t.uri):
        raise ServingError(
            f"{t.uri}: a Deployment serves from a pvc:// (or file://) store; for an object "
            "store use --kserve (KServe's storage initializer downloads it)")
    if scheme not in ("pvc", "file"):
        raise ServingError(f"{t.uri}: not a storage URI (pvc://, file://)")
    path = str(local_path(t.uri, Path(DEFAULT_PVC_ROOT)))
    claim = pvc_claim(t.uri)
    if claim is None:
        return path, [], []
    volumes = [{"name": "store", "persistentVolumeClaim": {"claimName": claim,
                                                           "readOnly": True}}]
    mounts = [{"name": "store", "mountPath": f"{DEFAULT_PVC_ROOT}/{claim}", "readOnly": True}]
    return path, volumes, mounts


def _container(t: ServingTarget, o: ServingOptions, model_dir: str, mounts: list[Manifest]
               ) -> Manifest:
    c: Manifest = {
        "name": SERVING_CONTAINER,
        "image": o.image,
        "command": ["python", "-m", SERVE_MODULE],
        "args": _args(model_dir, t, o),
        "env": [{"name": Env.PVC_ROOT, "value": DEFAULT_PVC_ROOT},
                {"name": Env.METRICS_PORT, "value": str(DEFAULT_METRICS_PORT)},
                {"name": "OMP_NUM_THREADS", "value": str(_threads(o.cpu))}],
        "ports": [{"name": HTTP_PORT_NAME, "containerPort": HTTP_PORT},
                  {"name": METRICS_PORT_NAME, "containerPort": DEFAULT_METRICS_PORT}],
        "resources": {"requests": {"cpu": o.cpu, "memory": o.memory},
                      "limits": {"memory": o.memory}},
        "readinessProbe": _probe("/v2/health/ready", 5, 3),
        "livenessProbe": _probe("/v2/health/live", 10, 6),
        "volumeMounts": [*mounts, {"name": "tmp", "mountPath": "/tmp"}],
        "securityContext": _security(),
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if o.image_pull_policy:
        c["imagePullPolicy"] = o.image_pull_policy
    return c


def build_deployment(t: ServingTarget, o: ServingOptions) -> Manifest:
    """The Deployment serving ``t`` (see the module docstring for its choices)."""
    model_dir, volumes, mounts = _storage(t)
    meta = _metadata(t, o)
    pod_meta: Manifest = {"labels": dict(meta["labels"])}
    if t.sha256:  # a new version's digest rolls the pods even under a stable --name
        pod_meta["annotations"] = {SHA256_ANNOTATION: t.sha256}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": o.replicas,
            "selector": {"matchLabels": selector_labels(t, o)},
            "template": {
                "metadata": pod_meta,
                "spec": {
                    "containers": [_container(t, o, model_dir, mounts)],
                    "volumes": [*volumes, {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}],
                    "securityContext": {"runAsNonRoot": True,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "automountServiceAccountToken": False,
                },
            },
        },
    }


def build_service(t: ServingTarget, o: ServingOptions) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(t, o),
        "spec": {
            "selector": selector_labels(t, o),
            "ports": [
                {"name": HTTP_PORT_NAME, "port": HTTP_PORT, "targetPort": HTTP_PORT_NAME},
                {"name": METRICS_PORT_NAME, "port": DEFAULT_METRICS_PORT,
                 "targetPort": METRICS_PORT_NAME},
            ],
        },
    }


def build_inference_service(t: ServingTarget, o: ServingOptions) -> Manifest:
    """A KServe InferenceService (serving.kserve.io/v1beta1) with our server as a custom
    predictor container: KServe's storage initializer fetches ``STORAGE_URI`` (pvc://, s3://,
    gs://) into /mnt/models, and KServe's Prometheus annotations point at our metrics port."""
    meta = _metadata(t, o)
    meta["annotations"] = {
        "serving.kserve.io/enable-prometheus-scraping": "true",
        "prometheus.kserve.io/port": str(DEFAULT_METRICS_PORT),
        "prometheus.kserve.io/path": "/metrics",
    }
    container: Manifest = {
        "name": "kserve-container",  # the name KServe gives (and expects of) the predictor
        "image": o.image,
        "command": ["python", "-m", SERVE_MODULE],
        "args": _args(KSERVE_MODEL_DIR, t, o),
        "env": [{"name": "STORAGE_URI", "value": t.uri},
                {"name": "OMP_NUM_THREADS", "value": str(_threads(o.cpu))}],
        "ports": [{"containerPort": HTTP_PORT, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": o.cpu, "memory": o.memory},
                      "limits": {"memory": o.memory}},
        # KServe's container port has no name: the probes give the number
        "readinessProbe": _probe("/v2/health/ready", 5, 3, HTTP_PORT),
        "livenessProbe": _probe("/v2/health/live", 10, 6, HTTP_PORT),
        # no emptyDir /tmp in the InferenceService: the root filesystem stays writable
        "securityContext": {k: v for k, v in _security().items()
                            if k != "readOnlyRootFilesystem"},
    }
    if o.image_pull_policy:
        container["imagePullPolicy"] = o.image_pull_policy
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": meta,
        "spec": {"predictor": {"minReplicas": o.replicas, "protocolVersion": "v2",
                               "containers": [container]}},
    }


def target_from_version(body: Manifest) -> ServingTarget:
    """A ModelVersion object (as the API server returns it) -> what to serve, owned by it."""
    spec, meta = body.get("spec") or {}, body.get("metadata") or {}
    phase = (body.get("status") or {}).get("phase")
    if phase in ("Missing", "Deleting"):
        raise ServingError(f"ModelVersion {meta.get('name')} is {phase}: "
                           f"{(body.get('status') or {}).get('message') or 'not servable'}")
    artifact = spec.get("artifact") or {}
    return ServingTarget(model=str(spec["model"]), version=int(spec["version"]),
                         uri=str(artifact["uri"]), namespace=str(meta.get("namespace")
                                                                 or "default"),
                         sha256=artifact.get("sha256"), owner=body)



def build_pod_monitor(t: ServingTarget, o: ServingOptions) -> Manifest:
    """A Prometheus Operator PodMonitor for this Deployment's pods: the ``metrics-0`` port, as
    the chart's worker PodMonitor scrapes workers (honorLabels false: ``namespace`` and ``pod``
    come from Kubernetes; the server exports ``model``/``version``, which collide with
    nothing)."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": _metadata(t, o),
        "spec": {
            "selector": {"matchLabels": selector_labels(t, o)},
            "podMetricsEndpoints": [{"port": METRICS_PORT_NAME, "path": "/metrics",
                                     "honorLabels": False}],
        },
    }
