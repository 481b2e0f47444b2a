"""Fixtures for tests against the real dev control plane (etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, KWOK). See docs/dev-cluster.md.

- ``cluster`` (session): a :class:`torchyard_devcluster.DevCluster`; brings the cluster up once
  (building the binaries on first use) or reuses the one already running, installs ``crds/*.yaml``
  when that folder has any, and stops it at the end only if this session started it
  (``TORCHYARD_KEEP_CLUSTER=1`` keeps it running).
- ``kube`` (session): :class:`torchyard_devcluster.testing.Kube`, the ``kubernetes`` API objects.
- ``namespace`` (function): a fresh namespace (its default ServiceAccount exists), deleted after.
- ``crd_dir`` (session): ``<repo>/crds`` path (may not exist yet).
- ``kueue`` (module): Kueue running as a local process (:mod:`torchyard_devcluster.kueue`:
  its CRDs, webhooks on 127.0.0.1, the batch/job integration), stopped and its CRDs removed
  after the module; ``kueue.enable_namespace(ns)`` lets it manage a namespace's Jobs.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import torchyard_devcluster as devcluster
from torchyard_devcluster import kueue as kueue_proc
from torchyard_devcluster.cluster import other_users, register_user, unregister_user
from torchyard_devcluster.crds import apply_crds
from torchyard_devcluster.testing import Kube, crd_files

REPO_ROOT = Path(__file__).resolve().parents[2]
NODES = int(os.environ.get("TORCHYARD_TEST_NODES", "4"))
GPUS_PER_NODE = int(os.environ.get("TORCHYARD_TEST_GPUS_PER_NODE", "8"))


def pytest_configure(config: pytest.Config) -> None:
    # Also registered in pyproject.toml; repeated here so this folder runs on its own.
    config.addinivalue_line("markers", "cluster: needs the real dev control plane (hack/)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


def pytest_collection_finish(session: pytest.Session) -> None:
    # Build the control-plane binaries (first time: ~15 min on 2 cores) once the selection is
    # final and before any test runs, so a per-test timeout (pytest-timeout) never cuts the
    # build short.
    if session.config.option.collectonly or not any(
        i.get_closest_marker("cluster") for i in session.items
    ):
        return
    from torchyard_devcluster import build

    build.ensure_binaries()
    if any("kueue" in getattr(i, "fixturenames", ()) for i in session.items):
        kueue_proc.ensure_built()


@pytest.fixture(scope="session")
def crd_dir() -> Path:
    return REPO_ROOT / "crds"


@pytest.fixture(scope="session")
def cluster(crd_dir: Path) -> Iterator[devcluster.DevCluster]:
    c = devcluster.up(nodes=NODES, gpus_per_node=GPUS_PER_NODE)
    # Other pytest sessions may share this cluster: the one that started it only stops it
    # when no other registered session is still alive.
    mark = register_user(c.state_dir)
    try:
        if crd_files(crd_dir):
            api = c.api_client()
            try:
                apply_crds(api, crd_dir)
            finally:
                api.close()
        yield c
    finally:
        unregister_user(mark)
        keep = os.environ.get("TORCHYARD_KEEP_CLUSTER") or other_users(c.state_dir)
        if c.started and not keep:
            devcluster.down(state_dir=c.state_dir)


@pytest.fixture(scope="module")
def kueue(cluster: devcluster.DevCluster) -> Iterator[kueue_proc.Kueue]:
    with kueue_proc.running(cluster) as k:
        yield k


@pytest.fixture(scope="session")
def kube(cluster: devcluster.DevCluster) -> Iterator[Kube]:
    k = Kube.connect(cluster)
    yield k
    k.close()


@pytest.fixture
def namespace(kube: Kube, request: pytest.FixtureRequest) -> Iterator[str]:
    from kubernetes import client

    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{base or 't'}-{uuid.uuid4().hex[:6]}"
    kube.core.create_namespace({"metadata": {"name": name, "labels": {"torchyard.io/test": "1"}}})
    # Pods need the namespace's default ServiceAccount (made by the controller-manager).
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
    try:
        kube.core.delete_namespace(name, propagation_policy="Background")
    except client.ApiException as e:
        if e.status != 404:
            raise
