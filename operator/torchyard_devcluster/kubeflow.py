"""Kubeflow's controllers as local processes beside the dev control plane (like kueue.py).

``hack/build-kubeflow.sh`` builds them from the Go module proxy into
``$TORCHYARD_CACHE/kubeflow/<component>-<version>/`` with the module's CRDs and webhook
manifests, unmodified. :func:`start` runs one the way its release manifests would, with these
local substitutions (bench/kubeflow_compare.py compares them with torchyard on one cluster):

- **jobset** (``sigs.k8s.io/jobset``, what Trainer v2 creates): internal cert management off
  (its Configuration allows it); the webhook server listens on 127.0.0.1 with a serving
  certificate signed by the dev cluster's CA, and the module's webhooks are registered with
  ``url: https://127.0.0.1:<port>`` (the pod webhooks with the ``objectSelector`` of the
  module's kustomize patch).
- **trainer** (Kubeflow Trainer v2) and **training-operator** (v1, PyTorchJob): their cert
  rotator (``open-policy-agent/cert-controller``) cannot be turned off. It gets what it
  expects: its Secret (it fills it with its own CA) and a ValidatingWebhookConfiguration of
  its fixed name with no webhooks (it "injects" its CA there). The serving certificate it
  would get from a Secret volume at the fixed path ``/tmp/k8s-webhook-server/serving-certs``
  is ours instead (IP SAN 127.0.0.1, signed by the cluster CA), provided by an overlay on
  ``/tmp`` in the process's own mount namespace (nothing on the machine changes); the
  module's webhooks are registered under a configuration of our own name with our CA.
- **Identity.** Each process runs as its own user (client certificate ``bench:<name>``, group
  :data:`BENCH_GROUP` bound to ``cluster-admin``) whose requests a FlowSchema of the same name
  classifies, so ``apiserver_flowcontrol_dispatched_requests_total{flow_schema=…}`` counts one
  controller's API requests (:func:`flow_counts`). Webhooks apply only in namespaces labelled
  :data:`NAMESPACE_LABEL` ``=true``.

These controllers are cluster-wide: use them on a dev cluster of your own
(``TORCHYARD_DEV_CLUSTER_DIR``); :meth:`Controller.stop` removes the webhooks (CRDs stay).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from torchyard_devcluster import certs, kubeconfig, paths, procs
from torchyard_devcluster.cluster import DevCluster, DevClusterError, wait_http
from torchyard_devcluster.crds import apply_crds

VERSIONS = {"jobset": "v0.8.2", "trainer": "v2.0.0", "training-operator": "v1.8.1"}
NAMESPACE_LABEL = "torchyard.io/kubeflow"
BENCH_GROUP = "torchyard:bench"
WEBHOOK_CONFIG_PREFIX = "torchyard-dev-kubeflow"
#: The fixed folder their webhook servers read the serving certificate from (cert-controller).
ROTATOR_CERT_DIR = "/tmp/k8s-webhook-server/serving-certs"


@dataclass(frozen=True)
class Rotator:
    """What a controller's cert rotator needs to find: namespace, Secret, webhook config."""

    namespace: str
    secret: str
    webhook_config: str
    service_dns: str
    env: tuple[tuple[str, str], ...] = ()


ROTATORS = {
    "trainer": Rotator(
        "kubeflow-system",
        "kubeflow-trainer-webhook-cert",
        "validator.trainer.kubeflow.org",
        "kubeflow-trainer-controller-manager.kubeflow-system.svc",
    ),
    "training-operator": Rotator(
        "kubeflow",
        "training-operator-webhook-cert",
        "validator.training-operator.kubeflow.org",
        "training-operator.kubeflow.svc",
        (("MY_POD_NAMESPACE", "kubeflow"),),
    ),
}


def root(name: str) -> Path:
    return paths.cache_dir() / "kubeflow" / f"{name}-{VERSIONS[name]}"


def binary(name: str) -> Path:
    return root(name) / "bin" / name


def ready(name: str) -> bool:
    """True when the component's binary, CRDs and webhook manifests are cached."""
    stamp = root(name) / ".stamp"
    if not stamp.is_file() or not stamp.read_text().startswith(f"{name}={VERSIONS[name]} "):
        return False
    return os.access(binary(name), os.X_OK) and any((root(name) / "crds").glob("*.yaml"))


def build_failure(name: str) -> str | None:
    """What stopped the last build of ``name`` (command and error), if it failed."""
    f = root(name) / "BUILD-FAILED.txt"
    return f.read_text() if f.is_file() else None


# --------------------------------------------------------------------------- identities


def user_kubeconfig(cluster: DevCluster, name: str) -> Path:
    """A kubeconfig for user ``bench:<name>`` (group :data:`BENCH_GROUP`): a client of its
    own, counted by the FlowSchema :func:`ensure_identity` creates."""
    pki = cluster.state_dir / "pki"
    ca = certs.CertPaths(pki / "ca.crt", pki / "ca.key")
    folder = cluster.state_dir / "bench-users"
    cert = certs.client_cert(folder, name, ca, f"bench:{name}", orgs=(BENCH_GROUP,))
    path = folder / f"{name}.kubeconfig"
    kubeconfig.write(path, cluster.server, ca.cert, cert, f"bench:{name}")
    return path


def flow_schema(name: str) -> dict[str, Any]:
    """A FlowSchema ``bench-<name>`` for user ``bench:<name>`` at the exempt priority level
    (the level the admin's requests get: no client is queued differently)."""
    return {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "FlowSchema",
        "metadata": {"name": f"bench-{name}"},
        "spec": {
            "matchingPrecedence": 100,
            "priorityLevelConfiguration": {"name": "exempt"},
            "rules": [
                {
                    "subjects": [{"kind": "User", "user": {"name": f"bench:{name}"}}],
                    "resourceRules": [
                        {
                            "verbs": ["*"],
                            "apiGroups": ["*"],
                            "resources": ["*"],
                            "namespaces": ["*"],
                            "clusterScope": True,
                        }
                    ],
                    "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                }
            ],
        },
    }


def ensure_identity(cluster: DevCluster, api: Any, name: str) -> Path:
    """User, cluster-admin binding of :data:`BENCH_GROUP` and FlowSchema for ``name``;
    returns the user's kubeconfig."""
    from kubernetes import client

    rbac: Any = client.RbacAuthorizationV1Api(api)
    custom: Any = client.CustomObjectsApi(api)
    binding = {
        "metadata": {"name": "torchyard-bench"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "cluster-admin",
        },
        "subjects": [
            {"kind": "Group", "name": BENCH_GROUP, "apiGroup": "rbac.authorization.k8s.io"}
        ],
    }
    with contextlib.suppress(client.ApiException):
        rbac.create_cluster_role_binding(binding)
    try:
        custom.create_cluster_custom_object(
            "flowcontrol.apiserver.k8s.io", "v1", "flowschemas", flow_schema(name)
        )
    except client.ApiException as e:
        if e.status != 409:
            raise
    return user_kubeconfig(cluster, name)


_FLOW_RE = re.compile(
    r'^apiserver_flowcontrol_dispatched_requests_total\{flow_schema="bench-([^"]+)"[^}]*\}'
    r"\s+([0-9.e+]+)$"
)


def flow_counts(api: Any) -> dict[str, float]:
    """Requests the API server dispatched so far per bench user (FlowSchema ``bench-<name>``)."""
    host = api.configuration.host
    text = api.rest_client.pool_manager.request("GET", f"{host}/metrics").data.decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _FLOW_RE.match(line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


# --------------------------------------------------------------------------- webhooks


def webhook_configurations(
    manifests: str, *, name: str, port: int, ca_bundle: bytes
) -> list[dict[str, Any]]:
    """The module's webhook configurations pointing at ``https://127.0.0.1:<port><path>``,
    scoped to namespaces labelled :data:`NAMESPACE_LABEL`; JobSet's pod webhooks get the
    ``objectSelector`` its kustomize patch adds. Named ``torchyard-dev-kubeflow-<name>-…``."""
    out: list[dict[str, Any]] = []
    bundle = base64.b64encode(ca_bundle).decode()
    for doc in yaml.safe_load_all(manifests):
        if not isinstance(doc, dict) or not str(doc.get("kind", "")).endswith(
            "WebhookConfiguration"
        ):
            continue
        hooks: list[dict[str, Any]] = []
        for hook in doc.get("webhooks") or []:
            h = copy.deepcopy(hook)
            path = h["clientConfig"]["service"]["path"]
            h["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}", "caBundle": bundle}
            h["namespaceSelector"] = {"matchLabels": {NAMESPACE_LABEL: "true"}}
            resources = {r for rule in h.get("rules") or [] for r in rule.get("resources") or []}
            if name == "jobset" and resources == {"pods"}:
                h["objectSelector"] = {
                    "matchExpressions": [
                        {"key": "jobset.sigs.k8s.io/jobset-name", "operator": "Exists"}
                    ]
                }
            hooks.append(h)
        kind = str(doc["kind"])
        short = "mutating" if kind.startswith("Mutating") else "validating"
        out.append(
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": kind,
                "metadata": {"name": f"{WEBHOOK_CONFIG_PREFIX}-{name}-{short}"},
                "webhooks": hooks,
            }
        )
    return out


def _adm_call(api: Any, kind: str, verb: str) -> Any:
    from kubernetes import client

    adm: Any = client.AdmissionregistrationV1Api(api)
    suffix = "mutating" if kind.startswith("Mutating") else "validating"
    return getattr(adm, f"{verb}_{suffix}_webhook_configuration")


def _replace_webhook_config(api: Any, doc: dict[str, Any]) -> None:
    from kubernetes import client

    with contextlib.suppress(client.ApiException):
        _adm_call(api, doc["kind"], "delete")(doc["metadata"]["name"])
    _adm_call(api, doc["kind"], "create")(doc)


def _delete_webhook_configs(api: Any, configs: list[tuple[str, str]]) -> None:
    from kubernetes import client

    for kind, name in configs:
        try:
            _adm_call(api, kind, "delete")(name)
        except client.ApiException as e:
            if e.status != 404:
                raise


# --------------------------------------------------------------------------- the process


@dataclass
class Controller:
    """A running controller; :meth:`stop` removes its webhooks and stops it."""

    name: str
    proc: procs.Proc
    work_dir: Path
    health_port: int
    api: Any
    webhook_configs: list[tuple[str, str]] = field(default_factory=list)
    stopped: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return Path(self.proc.log).read_text(errors="replace")

    def alive(self) -> bool:
        return procs.alive(self.proc)

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        try:
            _delete_webhook_configs(self.api, self.webhook_configs)
            procs.stop(self.proc, grace=15)
            _remove_overlay(self.work_dir)
        finally:
            self.api.close()


def _remove_overlay(run: Path) -> None:
    for name in ("overlay-work", "overlay-upper"):
        folder = run / name
        for sub in [folder, *folder.rglob("*")] if folder.exists() else []:
            if sub.is_dir() and not sub.is_symlink():
                with contextlib.suppress(OSError):
                    sub.chmod(0o700)
        shutil.rmtree(folder, ignore_errors=True)


# Inside a private mount namespace: overlay /tmp with an upper folder holding the serving
# certificate at the rotator's fixed path, then become the controller.
_OVERLAY_SH = (
    'mount -t overlay overlay -o "lowerdir=/tmp,upperdir=$1,workdir=$2" /tmp'
    ' && shift 2 && exec "$@"'
)


def _overlay_argv(run: Path, serving: certs.CertPaths) -> list[str]:
    if os.geteuid() != 0:
        raise DevClusterError("the Kubeflow controllers' cert overlay needs root here")
    upper, work = run / "overlay-upper", run / "overlay-work"
    dest = upper / ROTATOR_CERT_DIR.removeprefix("/tmp/")
    dest.mkdir(parents=True)
    work.mkdir()
    shutil.copy(serving.cert, dest / "tls.crt")
    shutil.copy(serving.key, dest / "tls.key")
    unshare = shutil.which("unshare") or "unshare"
    return [
        *(unshare, "--mount", "--propagation", "private", "--"),
        *("sh", "-c", _OVERLAY_SH, "kubeflow-overlay", str(upper), str(work)),
    ]


def _argv(name: str, run: Path, webhook_port: int, health_port: int, cert_dir: Path) -> list[str]:
    health = f"--health-probe-bind-address=127.0.0.1:{health_port}"
    if name == "jobset":
        config = run / "config.yaml"
        webhook = {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)}
        doc = {
            "apiVersion": "config.jobset.x-k8s.io/v1alpha1",
            "kind": "Configuration",
            "webhook": webhook,
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
        }
        config.write_text(yaml.safe_dump(doc))
        return [str(binary(name)), f"--config={config}", health, "--metrics-bind-address=0"]
    common = [str(binary(name)), health, f"--webhook-server-port={webhook_port}"]
    if name == "trainer":
        return [*common, "--metrics-bind-address=0"]
    # training-operator: PyTorchJob only (the release manifest enables all six schemes).
    return [*common, "--metrics-bind-address=0", "--enable-scheme=pytorchjob"]


def _prepare_rotator(api: Any, rot: Rotator) -> None:
    """The Secret and the empty webhook configuration cert-controller insists on."""
    from kubernetes import client

    core: Any = client.CoreV1Api(api)
    for create, body in (
        (core.create_namespace, {"metadata": {"name": rot.namespace}}),
        (
            lambda b: core.create_namespaced_secret(rot.namespace, b),
            {"metadata": {"name": rot.secret}},
        ),
    ):
        try:
            create(body)
        except client.ApiException as e:
            if e.status != 409:
                raise
    doc = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": rot.webhook_config},
    }
    _replace_webhook_config(api, doc)


def start(cluster: DevCluster, name: str, *, timeout: float = 180.0) -> Controller:
    """Install ``name``'s CRDs, start it as user ``bench:<name>``, register its webhooks and
    wait until it is ready."""
    if not ready(name):
        why = build_failure(name) or "not built: run hack/build-kubeflow.sh"
        raise DevClusterError(f"{name} {VERSIONS[name]} unavailable: {why}")
    api = cluster.api_client()
    try:
        apply_crds(api, root(name) / "crds")
        kc = ensure_identity(cluster, api, name)
        run = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=cluster.state_dir))
        pki = cluster.state_dir / "pki"
        ca = certs.CertPaths(pki / "ca.crt", pki / "ca.key")
        rot = ROTATORS.get(name)
        dns = (rot.service_dns,) if rot else ()
        serving = certs.serving_cert(run / "certs", "tls", ca, f"{name}-webhook", dns=dns)
        webhook_port, health_port = procs.free_ports(2)
        argv = _argv(name, run, webhook_port, health_port, run / "certs")
        if rot is not None:
            _prepare_rotator(api, rot)
            argv = [*_overlay_argv(run, serving), *argv]
        env = {**os.environ, "KUBECONFIG": str(kc), **dict(rot.env if rot else ())}
        proc = procs.start(name, argv, run / f"{name}.log", cwd=run, env=env)
    except BaseException:
        api.close()
        raise
    ctl = Controller(name=name, proc=proc, work_dir=run, health_port=health_port, api=api)
    try:
        wait_http(proc, f"http://127.0.0.1:{health_port}/readyz", timeout=timeout)
        manifests = root(name) / "webhook" / "manifests.yaml"
        docs = webhook_configurations(
            manifests.read_text(), name=name, port=webhook_port, ca_bundle=ca.cert.read_bytes()
        )
        for doc in docs:
            _replace_webhook_config(api, doc)
            ctl.webhook_configs.append((doc["kind"], doc["metadata"]["name"]))
    except BaseException:
        ctl.stop()
        raise
    return ctl


__all__ = [
    "BENCH_GROUP",
    "NAMESPACE_LABEL",
    "VERSIONS",
    "Controller",
    "build_failure",
    "ensure_identity",
    "flow_counts",
    "flow_schema",
    "ready",
    "start",
    "user_kubeconfig",
    "webhook_configurations",
]
