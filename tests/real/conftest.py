"""Fixtures for the ``real`` tier: pods run by a real kubelet + containerd on this machine
(``torchyard dev-cluster up --real-nodes N``, see docs/dev-cluster.md "Real nodes").

Every test here is skipped unless ``TORCHYARD_REAL=1``, which ``make test`` sets when run as root
(real nodes need it) after ``hack/real-setup.sh`` has installed Debian's
containerd/runc/containernetworking-plugins/busybox-static/Docker/skopeo, built the node
binaries and pushed the images to the local registry.

- ``real_cluster`` (package): its own dev cluster (state
  ``~/.cache/torchyard/dev-cluster-real``, or ``TORCHYARD_REAL_CLUSTER_DIR``) with no KWOK nodes
  and one real node, its API server reachable from pods (``pod_network``), reused when running;
  stopped when tests/real is done (not at the end of the session: the node, its pods and the
  chart's operator would otherwise run beside the tiers after it), real node and all, unless
  this session did not start it or ``TORCHYARD_KEEP_CLUSTER=1``.
- ``busybox_image`` (package): ``torchyard.local/busybox:1`` - Debian's static busybox in a
  ``FROM scratch`` OCI image, imported into the real nodes' containerd (no registry, no Docker).
- ``namespace`` (function): a fresh namespace, deleted after.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import torchyard_devcluster as devcluster
from torchyard_devcluster import cluster as cluster_mod
from torchyard_devcluster import ociimage, paths, realnode
from torchyard_devcluster.testing import Kube

from . import jobkit

BUSYBOX_REF = "torchyard.local/busybox:1"
BUSYBOX = Path("/bin/busybox")
REAL_NODES = int(os.environ.get("TORCHYARD_TEST_REAL_NODES", "1"))
REAL_GPUS = 4


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "real: pods on a real node (kubelet + containerd)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Only the tests that need the real node are `real` (and opt-in); the pure builders' tests
    # in this folder run everywhere.
    mine = [i for i in items if "real_cluster" in getattr(i, "fixturenames", ())]
    for item in mine:
        item.add_marker(pytest.mark.real)
    if os.environ.get("TORCHYARD_REAL") == "1":
        return
    skip = pytest.mark.skip(
        reason="real-node tier: needs root and TORCHYARD_REAL=1 (make test sets it as root)"
    )
    for item in mine:
        item.add_marker(skip)


def real_state_dir() -> Path:
    override = os.environ.get("TORCHYARD_REAL_CLUSTER_DIR")
    return Path(override) if override else paths.cache_dir() / "dev-cluster-real"


#: How long the tier waits for ``make test``'s background ``hack/real-setup.sh`` (from an empty
#: cache: Docker, the images, the node binaries; the other tiers ran meanwhile).
REAL_SETUP_TIMEOUT_S = 75 * 60


def wait_for_real_setup(
    status_path: str | None, timeout: float = REAL_SETUP_TIMEOUT_S, poll: float = 5.0
) -> None:
    """Wait for the background setup that ``make test`` started (its status file: ``starting``,
    ``running PID``, ``ok``, ``failed RC``); fail with its log's tail when it failed or died.
    Without ``TORCHYARD_REAL_SETUP_STATUS`` (a run by hand) there is nothing to wait for."""
    if not status_path:
        return
    status = Path(status_path)
    log = status.with_suffix(".log")
    deadline = time.monotonic() + timeout
    started = time.monotonic()

    def read() -> list[str]:
        return status.read_text().split() if status.exists() else []

    while True:
        words = read()
        state = words[0] if words else "missing"
        if state == "ok":
            return
        alive = state == "running" and len(words) > 1 and Path(f"/proc/{words[1]}").exists()
        early = state == "starting" and time.monotonic() - started < 60
        if state == "failed" or not (alive or early) or time.monotonic() > deadline:
            time.sleep(min(poll, 1.0))  # it may have just written its last word
            if read()[:1] == ["ok"]:
                return
            lines = log.read_text(errors="replace").splitlines()[-40:] if log.exists() else []
            pytest.fail(
                f"hack/real-setup.sh: {' '.join(read()) or state} (log {log}):\n" + "\n".join(lines)
            )
        time.sleep(poll)


@pytest.fixture(scope="package")
def real_cluster() -> Iterator[devcluster.DevCluster]:
    wait_for_real_setup(os.environ.get("TORCHYARD_REAL_SETUP_STATUS"))
    sdir = real_state_dir()
    c = devcluster.up(nodes=0, state_dir=sdir, pod_network=True)
    if not c.pod_network and not cluster_mod.other_users(sdir):
        # A kept cluster from before pods could reach its API server: ours to replace.
        devcluster.down(state_dir=sdir)
        c = devcluster.up(nodes=0, state_dir=sdir, pod_network=True)
    mark = cluster_mod.register_user(sdir)
    try:
        realnode.up(c, n=REAL_NODES, gpus=REAL_GPUS)
        yield c
    finally:
        cluster_mod.unregister_user(mark)
        keep = os.environ.get("TORCHYARD_KEEP_CLUSTER") or cluster_mod.other_users(sdir)
        if c.started and not keep:
            devcluster.down(state_dir=sdir)


@pytest.fixture(scope="package")
def kube(real_cluster: devcluster.DevCluster) -> Iterator[Kube]:
    k = Kube.connect(real_cluster)
    yield k
    k.close()


@pytest.fixture(scope="package")
def busybox_image(
    real_cluster: devcluster.DevCluster, tmp_path_factory: pytest.TempPathFactory
) -> str:
    if not BUSYBOX.is_file() or shutil.which("busybox") is None:
        pytest.fail("needs Debian's busybox-static (/bin/busybox): apt-get install busybox-static")
    archive = tmp_path_factory.mktemp("images") / "busybox.oci.tar"
    ociimage.write_archive(
        archive,
        BUSYBOX_REF,
        [ociimage.ImageFile("bin/busybox", BUSYBOX.read_bytes())],
        entrypoint=["/bin/busybox"],
        cmd=["sh"],
    )
    realnode.import_image(real_cluster.state_dir, archive)
    return BUSYBOX_REF


@pytest.fixture
def namespace(kube: Kube) -> Iterator[str]:
    from kubernetes import client

    name = f"real-{uuid.uuid4().hex[:8]}"
    kube.core.create_namespace({"metadata": {"name": name}})
    deadline = time.monotonic() + 60
    while True:
        try:
            kube.core.read_namespaced_service_account("default", name)
            break
        except client.ApiException as e:
            if e.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    yield name
    kube.core.delete_namespace(name, propagation_policy="Background")


#: The images `make images` builds and pushes to the local registry (hack/images.sh).
REGISTRY = os.environ.get("TORCHYARD_REAL_REGISTRY", "127.0.0.1:5000")
#: Overridable to test other builds (e.g. a tag pushed by hand).
OPERATOR_REF = os.environ.get("TORCHYARD_REAL_OPERATOR_IMAGE") or (
    f"{REGISTRY}/torchyard/operator:dev"
)
TRAINER_REF = os.environ.get("TORCHYARD_REAL_TRAINER_IMAGE") or (
    f"{REGISTRY}/torchyard/trainer:dev-cpu"
)


def _pushed_digest(ref: str) -> str | None:
    """The manifest digest the registry serves for ``ref`` (None when it is not there)."""
    import httpx

    host, _, rest = ref.partition("/")
    repo, _, tag = rest.rpartition(":")
    accept = "application/vnd.oci.image.index.v1+json,application/vnd.oci.image.manifest.v1+json,"
    accept += "application/vnd.docker.distribution.manifest.v2+json"
    try:
        r = httpx.head(f"http://{host}/v2/{repo}/manifests/{tag}", headers={"Accept": accept})
    except httpx.HTTPError:
        return None
    return r.headers.get("Docker-Content-Digest") if r.status_code == 200 else None


def _registry_image(ref: str) -> str:
    """``ref`` pinned to the digest the registry holds now (``repo@sha256:…``): the node pulls
    exactly what was pushed last, never a stale copy it cached under the same tag."""
    digest = _pushed_digest(ref)
    if digest is None:
        pytest.skip(f"{ref} is not in the local registry: run `make images` (pushes it)")
    return f"{ref.rpartition(':')[0]}@{digest}"


@pytest.fixture(scope="package")
def operator_image(real_cluster: devcluster.DevCluster) -> str:
    """The operator image, pulled by the real node from the local registry."""
    return _registry_image(OPERATOR_REF)


#: ``TORCHYARD_REAL_TRAINER_IMPORTED=1``: the trainer image is already in the real nodes'
#: containerd under ``TRAINER_REF`` (``docker save REF | ctr -n k8s.io images import -``), not
#: pulled from the registry. A shortcut for iterating on worker code where the node lacks the
#: image's 3 GB dependencies layer (a fresh dev cluster's node does; docs/deploy.md, last section).
TRAINER_IMPORTED = os.environ.get("TORCHYARD_REAL_TRAINER_IMPORTED") == "1"


@pytest.fixture(scope="package")
def trainer_image(real_cluster: devcluster.DevCluster) -> str:
    """The trainer image (CPU variant), pulled by the real node from the local registry."""
    return TRAINER_REF if TRAINER_IMPORTED else _registry_image(TRAINER_REF)


def trainer_ref() -> str:
    """The trainer image for the chart's ``operator.trainerImage``: pinned when pushed, else the
    tag (tests that run a worker take the ``trainer_image`` fixture, which skips then)."""
    if TRAINER_IMPORTED:
        return TRAINER_REF
    digest = _pushed_digest(TRAINER_REF)
    return f"{TRAINER_REF.rpartition(':')[0]}@{digest}" if digest else TRAINER_REF


@pytest.fixture(scope="package")
def release(
    real_cluster: devcluster.DevCluster, kube: Kube, operator_image: str
) -> Iterator[jobkit.Release]:
    """The chart, installed once for the session (tests/real/jobkit.py ``chart_release``)."""
    with jobkit.chart_release(real_cluster, kube, operator_image, trainer_ref()) as rel:
        yield rel


@pytest.fixture
def job_namespace(
    real_cluster: devcluster.DevCluster, kube: Kube, release: jobkit.Release
) -> Iterator[str]:
    """A restricted namespace with the ``models`` claim on a local PV (jobkit.jobs_namespace)."""
    with jobkit.jobs_namespace(real_cluster, kube) as ns:
        yield ns
