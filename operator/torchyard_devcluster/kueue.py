"""Kueue (``sigs.k8s.io/kueue``) as a local process beside the dev control plane.

``hack/build-kueue.sh`` builds the manager from the Go module proxy into
``$TORCHYARD_CACHE/kueue/<KUEUE_VERSION>/`` and copies, unmodified, the module's CRDs
(``config/components/crd/bases``) and webhook manifests (``config/components/webhook``).
:func:`start` then runs it the way a cluster install would, with three local substitutions:

- **Webhooks.** Kueue's internal cert management is off; the webhook server listens on
  127.0.0.1 with a serving certificate signed by the dev cluster's CA, and the module's
  Mutating/ValidatingWebhookConfigurations are registered with ``url: https://127.0.0.1:<port>``
  instead of a Service. Only the webhooks of the enabled integration (``batch/job``) and of
  Kueue's own API group are registered, and the namespaced ones only for namespaces labelled
  :data:`NAMESPACE_LABEL` ``=true`` (so a Kueue that died cannot block other tests' Jobs).
  Kueue also manages Jobs only in those namespaces (``managedJobsNamespaceSelector``).
- **Metrics certificate.** With internal cert management off, Kueue v0.17 reads its metrics
  certificate from the fixed path ``/etc/kueue/metrics/certs`` (``cmd/kueue/main.go``). The
  process runs in its own mount namespace (``unshare``; a user namespace too when not root)
  where an overlay on ``/etc`` provides that folder; nothing on the machine is changed.
- **One at a time.** Kueue is cluster-wide (CRDs, ClusterQueues): a lock file in the cluster's
  state folder serialises Kueue users across test sessions. :meth:`Kueue.stop` removes the
  webhooks, stops the process and deletes the Kueue CRDs again, so ``gang: auto`` on the dev
  cluster sees no Kueue afterwards.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import fcntl
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from torchyard_devcluster import certs, paths, procs
from torchyard_devcluster.build import run_build_script
from torchyard_devcluster.cluster import DevCluster, DevClusterError, wait_http
from torchyard_devcluster.crds import apply_crds, load_crds

GROUP = "kueue.x-k8s.io"
VERSION = "v1beta2"
#: Namespaces whose Jobs this Kueue manages (and whose objects its webhooks see).
NAMESPACE_LABEL = "torchyard.io/kueue"
#: Kueue's own namespace (its Configuration's ``namespace``).
KUEUE_NAMESPACE = "kueue-system"
FRAMEWORKS: tuple[str, ...] = ("batch/job",)
#: API groups whose webhooks are registered: the batch/job integration and Kueue's own types.
WEBHOOK_GROUPS = frozenset({"batch", GROUP})
WEBHOOK_CONFIG_PREFIX = "torchyard-dev-kueue"
DEFAULT_FEATURE_GATES = "VisibilityOnDemand=false"  # its API server needs an APIService


def root() -> Path:
    return paths.cache_dir() / "kueue" / kueue_version()


def kueue_version() -> str:
    return paths.versions().get("KUEUE_VERSION", "v0.17.0")


def binary() -> Path:
    return root() / "bin" / "kueue"


def crd_dir() -> Path:
    return root() / "crds"


def webhook_manifests() -> Path:
    return root() / "webhook" / "manifests.yaml"


def build_script() -> Path | None:
    repo = paths.repo_root()
    return None if repo is None else repo / "hack" / "build-kueue.sh"


def ready() -> bool:
    """True when the binary, CRDs and webhook manifests of the pinned version are cached."""
    stamp = root() / ".stamp"
    if not stamp.is_file() or not stamp.read_text().startswith(f"kueue={kueue_version()} "):
        return False
    return (
        os.access(binary(), os.X_OK)
        and webhook_manifests().is_file()
        and any(crd_dir().glob("kueue.x-k8s.io_*.yaml"))
    )


def ensure_built() -> float:
    """Build Kueue when missing (``hack/build-kueue.sh``); returns the seconds spent."""
    if ready():
        return 0.0
    script = build_script()
    if script is None:
        raise FileNotFoundError(f"Kueue not built in {root()} and hack/build-kueue.sh is missing")
    print(f"building Kueue {kueue_version()} into {root()} (first time: minutes)…", file=sys.stderr)
    return run_build_script(script)


# --------------------------------------------------------------------------- configuration


def configuration(*, webhook_port: int, health_port: int, cert_dir: Path) -> dict[str, Any]:
    """Kueue's Configuration (config.kueue.x-k8s.io/v1beta2) for a local process."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": KUEUE_NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": "0"},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "manageJobsWithoutQueueName": False,
        "managedJobsNamespaceSelector": {"matchLabels": {NAMESPACE_LABEL: "true"}},
        "integrations": {"frameworks": list(FRAMEWORKS)},
    }


def webhook_configurations(manifests: str, *, port: int, ca_bundle: bytes) -> list[dict[str, Any]]:
    """The module's webhook configurations, restricted to :data:`WEBHOOK_GROUPS`, pointing at
    ``https://127.0.0.1:<port><path>`` and scoped to namespaces labelled
    :data:`NAMESPACE_LABEL`. Named ``torchyard-dev-kueue-<mutating|validating>``."""
    out: list[dict[str, Any]] = []
    bundle = base64.b64encode(ca_bundle).decode()
    for doc in yaml.safe_load_all(manifests):
        if not isinstance(doc, dict) or not str(doc.get("kind", "")).endswith(
            "WebhookConfiguration"
        ):
            continue
        kind = str(doc["kind"])
        hooks: list[dict[str, Any]] = []
        for hook in doc.get("webhooks") or []:
            groups = {g for rule in hook.get("rules") or [] for g in rule.get("apiGroups") or []}
            if not groups or not groups <= WEBHOOK_GROUPS:
                continue
            h = copy.deepcopy(hook)
            path = h["clientConfig"]["service"]["path"]
            h["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}", "caBundle": bundle}
            h["namespaceSelector"] = {"matchLabels": {NAMESPACE_LABEL: "true"}}
            hooks.append(h)
        short = "mutating" if kind.startswith("Mutating") else "validating"
        out.append(
            {
                "apiVersion": doc.get("apiVersion", "admissionregistration.k8s.io/v1"),
                "kind": kind,
                "metadata": {"name": f"{WEBHOOK_CONFIG_PREFIX}-{short}"},
                "webhooks": hooks,
            }
        )
    return out


def _mount_namespace_argv() -> list[str]:
    """``unshare`` giving the child a private mount namespace (and a user namespace when we
    are not root, where an unprivileged overlay mount is allowed)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        raise DevClusterError("Kueue needs `unshare` (util-linux) for its metrics cert folder")
    if os.geteuid() == 0:
        return [unshare, "--mount", "--propagation", "private", "--"]
    return [unshare, "--user", "--map-root-user", "--mount", "--propagation", "private", "--"]


# Inside the new mount namespace: overlay /etc (lower: the real one, read-only to us) with an
# upper folder holding kueue/metrics/certs, then become Kueue.
_OVERLAY_SH = (
    'mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1,workdir=$2" /etc'
    ' && shift 2 && exec "$@"'
)


# --------------------------------------------------------------------------- the process


@dataclass
class Kueue:
    """A running Kueue manager; :meth:`stop` undoes everything :func:`start` did."""

    cluster: DevCluster
    proc: procs.Proc
    work_dir: Path
    webhook_port: int
    health_port: int
    api: Any
    lock: IO[str]
    webhook_configs: list[tuple[str, str]] = field(default_factory=list)
    stopped: bool = False

    def log_text(self) -> str:
        return Path(self.proc.log).read_text(errors="replace")

    def alive(self) -> bool:
        return procs.alive(self.proc)

    def enable_namespace(self, namespace: str) -> None:
        """Label ``namespace`` so this Kueue manages its Jobs (and its webhooks apply)."""
        from kubernetes import client

        core: Any = client.CoreV1Api(self.api)
        core.patch_namespace(namespace, {"metadata": {"labels": {NAMESPACE_LABEL: "true"}}})

    def stop(self, *, remove_crds: bool = True) -> None:
        if self.stopped:
            return
        self.stopped = True
        try:
            _delete_webhook_configs(self.api, self.webhook_configs)
            procs.stop(self.proc, grace=15)
            _remove_overlay(self.work_dir)
            if remove_crds:
                remove_kueue_crds(self.api)
        finally:
            self.api.close()
            fcntl.flock(self.lock, fcntl.LOCK_UN)
            self.lock.close()


def _remove_overlay(run: Path) -> None:
    """The overlay folders of a stopped Kueue (the kernel leaves ``etc-work/work`` mode 000);
    the log, config and certificates stay."""
    for name in ("etc-work", "etc-upper"):
        folder = run / name
        if not folder.exists():
            continue
        for sub in [folder, *folder.rglob("*")]:
            if sub.is_dir() and not sub.is_symlink():
                with contextlib.suppress(OSError):
                    sub.chmod(0o700)
        shutil.rmtree(folder, ignore_errors=True)


def _delete_webhook_configs(api: Any, configs: list[tuple[str, str]]) -> None:
    from kubernetes import client

    adm: Any = client.AdmissionregistrationV1Api(api)
    for kind, name in configs:
        delete = (
            adm.delete_mutating_webhook_configuration
            if kind.startswith("Mutating")
            else adm.delete_validating_webhook_configuration
        )
        try:
            delete(name)
        except client.ApiException as e:
            if e.status != 404:
                raise


def _leftover_webhook_configs() -> list[tuple[str, str]]:
    return [
        ("MutatingWebhookConfiguration", f"{WEBHOOK_CONFIG_PREFIX}-mutating"),
        ("ValidatingWebhookConfiguration", f"{WEBHOOK_CONFIG_PREFIX}-validating"),
    ]


def remove_kueue_crds(api: Any, *, timeout: float = 120.0) -> None:
    """Delete Kueue's CRDs and wait until its API group is gone. Kueue is stopped by then, so
    the finalizers it would have removed (``kueue.x-k8s.io/resource-in-use``) are cleared
    here first; otherwise the CRDs would stay Terminating."""
    from kubernetes import client

    ext: Any = client.ApiextensionsV1Api(api)
    custom: Any = client.CustomObjectsApi(api)
    apis: Any = client.ApisApi(api)
    names = [str(d["metadata"]["name"]) for d in load_crds(crd_dir().glob("*.yaml"))]
    for crd in ext.list_custom_resource_definition().items:
        if crd.spec.group != GROUP or crd.metadata.name not in names:
            continue
        plural = crd.spec.names.plural
        version = next((v.name for v in crd.spec.versions if v.storage), VERSION)
        listing = custom.list_cluster_custom_object(GROUP, version, plural)
        for obj in listing.get("items") or []:
            meta = obj.get("metadata") or {}
            if not meta.get("finalizers"):
                continue
            patch = {"metadata": {"finalizers": None}}
            with contextlib.suppress(client.ApiException):
                if meta.get("namespace"):
                    custom.patch_namespaced_custom_object(
                        GROUP, version, meta["namespace"], plural, meta["name"], patch
                    )
                else:
                    custom.patch_cluster_custom_object(GROUP, version, plural, meta["name"], patch)
        try:
            ext.delete_custom_resource_definition(crd.metadata.name)
        except client.ApiException as e:
            if e.status != 404:
                raise
    deadline = time.monotonic() + timeout
    while True:
        groups = {g.name for g in apis.get_api_versions().groups or []}
        if GROUP not in groups:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"API group {GROUP} still served {timeout:.0f}s after deletion")
        time.sleep(0.2)


def _write_certs(ca: certs.CertPaths, cert_dir: Path, upper: Path, overlay_work: Path) -> None:
    """The webhook's serving certificate in ``cert_dir``, and the same pair as the metrics
    server's in the overlay's upper folder: /etc/kueue/metrics/certs inside Kueue's mount
    namespace."""
    serving = certs.serving_cert(cert_dir, "tls", ca, "kueue-webhook", ips=("127.0.0.1",))
    metrics_certs = upper / "kueue" / "metrics" / "certs"
    metrics_certs.mkdir(parents=True)
    overlay_work.mkdir()
    shutil.copy(serving.cert, metrics_certs / "tls.crt")
    shutil.copy(serving.key, metrics_certs / "tls.key")


def _register_webhooks(kueue: Kueue, ca_bundle: bytes) -> None:
    """Kueue's webhook configurations, pointed at its port on 127.0.0.1 (recorded on ``kueue``
    so that stop() deletes them)."""
    from kubernetes import client

    adm: Any = client.AdmissionregistrationV1Api(kueue.api)
    for doc in webhook_configurations(
        webhook_manifests().read_text(), port=kueue.webhook_port, ca_bundle=ca_bundle
    ):
        if doc["kind"].startswith("Mutating"):
            adm.create_mutating_webhook_configuration(doc)
        else:
            adm.create_validating_webhook_configuration(doc)
        kueue.webhook_configs.append((doc["kind"], doc["metadata"]["name"]))


def start(
    cluster: DevCluster,
    *,
    work_dir: Path | None = None,
    feature_gates: str = DEFAULT_FEATURE_GATES,
    timeout: float = 120.0,
) -> Kueue:
    """Install Kueue's CRDs, start the manager and register its webhooks; waits until it is
    ready. Blocks while another session's Kueue runs on the same cluster."""
    from kubernetes import client

    ensure_built()
    lock = (cluster.state_dir / "kueue.lock").open("a+")
    fcntl.flock(lock, fcntl.LOCK_EX)
    api = cluster.api_client()
    try:
        # A Kueue killed without stop() may have left its webhooks: they name a dead port.
        _delete_webhook_configs(api, _leftover_webhook_configs())
        apply_crds(api, crd_dir())
        core: Any = client.CoreV1Api(api)
        try:
            core.create_namespace({"metadata": {"name": KUEUE_NAMESPACE}})
        except client.ApiException as e:
            if e.status != 409:
                raise

        work = work_dir or cluster.state_dir / "kueue"
        work.mkdir(parents=True, exist_ok=True)
        run = Path(tempfile.mkdtemp(prefix="run-", dir=work))
        pki = cluster.state_dir / "pki"
        ca = certs.CertPaths(pki / "ca.crt", pki / "ca.key")
        cert_dir, upper, overlay_work = run / "certs", run / "etc-upper", run / "etc-work"
        _write_certs(ca, cert_dir, upper, overlay_work)

        webhook_port, health_port = procs.free_ports(2)
        config = run / "config.yaml"
        config.write_text(
            yaml.safe_dump(
                configuration(
                    webhook_port=webhook_port, health_port=health_port, cert_dir=cert_dir
                ),
                sort_keys=False,
            )
        )
        argv = [
            *_mount_namespace_argv(),
            "sh",
            "-c",
            _OVERLAY_SH,
            "kueue-overlay",
            str(upper),
            str(overlay_work),
            str(binary()),
            f"--config={config}",
            f"--feature-gates={feature_gates}",
        ]
        env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
        proc = procs.start("kueue", argv, run / "kueue.log", cwd=run, env=env)
        kueue = Kueue(
            cluster=cluster,
            proc=proc,
            work_dir=run,
            webhook_port=webhook_port,
            health_port=health_port,
            api=api,
            lock=lock,
        )
    except BaseException:
        api.close()
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
        raise
    try:
        wait_http(proc, f"http://127.0.0.1:{health_port}/readyz", timeout=timeout)
        _register_webhooks(kueue, ca.cert.read_bytes())
    except BaseException:
        kueue.stop()
        raise
    return kueue


@contextlib.contextmanager
def running(cluster: DevCluster, **kwargs: Any) -> Iterator[Kueue]:
    """``with running(cluster) as kueue:`` — Kueue for the duration of the block."""
    kueue = start(cluster, **kwargs)
    try:
        yield kueue
    finally:
        kueue.stop()


__all__ = [
    "FRAMEWORKS",
    "GROUP",
    "NAMESPACE_LABEL",
    "VERSION",
    "Kueue",
    "configuration",
    "ensure_built",
    "ready",
    "remove_kueue_crds",
    "running",
    "start",
    "webhook_configurations",
]
