"""kube-apiserver and etcd are SIGKILLed and started again under a running operator, mid-burst:
the operator stays up, its readiness probe says not-ready while the API is gone and ready once
it is back (liveness stays ok: restarting the operator would not bring the API back), it
reconnects its watches, sees every transition that happened (jobs whose pods finish around
the outage end Succeeded), and no job gets a child twice.

This module starts its OWN dev cluster (``TORCHYARD_FAULTS_CLUSTER_DIR``, default
``~/.cache/torchyard/dev-cluster-faults``, its own ports) and stops it at the end: killing
the shared cluster's API server would break every other test running against it.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.cluster.opkit import (
    WAIT,
    OperatorProcess,
    create,
    example,
    get,
    held,
    live_pods,
    own_cluster,
    release,
)

from torchyard.api.constants import Phase
from torchyard_devcluster.faults import kill_component, resync_fake_nodes, start_component
from torchyard_devcluster.nodes import NODE_PREFIX, pod_control_annotations
from torchyard_devcluster.testing import Kube, poll

pytestmark = pytest.mark.cluster

JOBS = 6  # half before the fault, half after


@pytest.fixture(scope="module")
def own_kube() -> Iterator[Kube]:
    with own_cluster("TORCHYARD_FAULTS_CLUSTER_DIR", "dev-cluster-faults") as kube:
        yield kube


def probe(op: OperatorProcess, path: str) -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{op.health_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    except OSError:
        return 0, {}


def _manifest(i: int) -> dict[str, Any]:
    m = held(example("digits-ddp.yaml"))
    m["metadata"]["name"] = f"cp-{i}"
    return m


def _running(kube: Kube, ns: str, i: int) -> list[Any]:
    pods = [p for p in live_pods(kube, ns, f"cp-{i}") if p.status.phase == "Running"]
    return pods if len(pods) == 2 else []


@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_operator_survives_a_control_plane_restart(
    own_kube: Kube, tmp_path: Path, component: str
) -> None:
    kube = own_kube
    ns = f"cp-{component}-{uuid.uuid4().hex[:6]}"
    kube.core.create_namespace({"metadata": {"name": ns}})
    poll(lambda: _has_default_sa(kube, ns), timeout=WAIT, what="default ServiceAccount")
    op = OperatorProcess(kube, ns, tmp_path)
    op.start()
    try:
        _run(kube, ns, op, component)
    except BaseException:
        print(op.log_text())
        raise
    finally:
        op.kill(signal.SIGTERM)


def _run(kube: Kube, ns: str, op: OperatorProcess, component: str) -> None:
    sdir = kube.cluster.state_dir
    poll(lambda: probe(op, "/readyz")[0] == 200, timeout=WAIT, what="operator ready")
    for i in range(JOBS // 2):
        create(kube, ns, _manifest(i))
    first = poll(lambda: _running(kube, ns, 0), timeout=WAIT, what="cp-0 running")
    # The transition the operator must not miss: cp-0's pods finish around the outage.
    release(kube, ns, first)
    kill_component(sdir, component)
    # Not ready (the job watch may notice first; the API check within a ping period).
    poll(lambda: _unready_without_api(op), timeout=WAIT, interval=0.1, what="not ready")
    assert probe(op, "/healthz")[0] == 200  # live: a restart would not help
    start_component(sdir, component)
    poll(lambda: probe(op, "/readyz")[0] == 200, timeout=WAIT, what="ready again")

    for i in range(JOBS // 2, JOBS):
        create(kube, ns, _manifest(i))
    for i in range(1, JOBS):
        release(kube, ns, poll(lambda i=i: _running(kube, ns, i), timeout=WAIT, what=f"cp-{i}"))
    poll(
        lambda: all(_phase(kube, ns, i) == Phase.SUCCEEDED for i in range(JOBS)),
        timeout=WAIT,
        interval=0.5,
        what="every job Succeeded",
    )
    assert op.alive()
    assert op.starts == 1
    _assert_one_of_each_child(kube, ns)


def test_resynced_fake_nodes_run_a_pod_they_missed(own_kube: Kube) -> None:
    """What the restarts above lean on (``start_component`` resyncs the fake nodes after etcd
    or the API server): kwok drops a pod whose status patch failed during the outage, and a
    restarted kwok plays that pod's stage again. Here kwok is down while a pod is bound to its
    node, so only the resync can make it Running."""
    kube = own_kube
    ns = f"cp-resync-{uuid.uuid4().hex[:6]}"
    kube.core.create_namespace({"metadata": {"name": ns}})
    poll(lambda: _has_default_sa(kube, ns), timeout=WAIT, what="default ServiceAccount")
    sdir = kube.cluster.state_dir
    kill_component(sdir, "kwok")
    try:
        kube.core.create_namespaced_pod(
            ns,
            {
                "metadata": {"name": "missed", "annotations": pod_control_annotations(hold=True)},
                "spec": {
                    "nodeName": f"{NODE_PREFIX}0",
                    "containers": [{"name": "c", "image": "registry.invalid/none:0"}],
                },
            },
        )
        time.sleep(2.0)  # long enough for a live kwok to have marked it Running
        assert kube.core.read_namespaced_pod("missed", ns).status.phase == "Pending"
    finally:
        resync_fake_nodes(sdir)
    poll(
        lambda: kube.core.read_namespaced_pod("missed", ns).status.phase == "Running",
        timeout=WAIT,
        what="the missed pod Running after the resync",
    )
    kube.core.delete_namespace(ns)


def _unready_without_api(op: OperatorProcess) -> bool:
    status, body = probe(op, "/readyz")
    return status == 503 and str(body.get("api", "")).startswith("no answer")


def _has_default_sa(kube: Kube, ns: str) -> bool:
    from kubernetes import client

    try:
        kube.core.read_namespaced_service_account("default", ns)
        return True
    except client.ApiException:
        return False


def _phase(kube: Kube, ns: str, i: int) -> str:
    obj = get(kube, ns, "TrainingJob", f"cp-{i}") or {}
    return str((obj.get("status") or {}).get("phase", ""))


def _assert_one_of_each_child(kube: Kube, ns: str) -> None:
    owners: dict[str, list[str]] = {}
    for kind, items in (
        ("Job", kube.batch.list_namespaced_job(ns).items),
        ("Service", kube.core.list_namespaced_service(ns).items),
        ("ConfigMap", kube.core.list_namespaced_config_map(ns).items),
    ):
        for o in items:
            for ref in o.metadata.owner_references or []:
                if ref.kind == "TrainingJob":
                    owners.setdefault(ref.name, []).append(kind)
    want = sorted(["Job", "Service", "ConfigMap"])
    assert {n: sorted(k) for n, k in owners.items()} == {f"cp-{i}": want for i in range(JOBS)}
    for i in range(JOBS):
        obj = get(kube, ns, "TrainingJob", f"cp-{i}") or {}
        assert obj["status"].get("restarts", 0) == 0, obj["status"]
