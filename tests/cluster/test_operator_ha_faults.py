"""A control-plane fault under two replicas with leader election (the chart's default): etcd
or kube-apiserver is SIGKILLed mid-burst and kept down until the leader, unable to renew its
Lease, steps down (exit 3, as controller-runtime does; the test restarts it as the kubelet
would). Once the component is back the replicas elect a leader again, every job converges with
one child of each kind, and the API server's per-replica write counts
(tests/cluster/test_operator_ha.py's FlowSchemas) show one actor at a time: no sample in which
both replicas' counts rose, and no more changes of writer than the Lease had transitions.

The counts live in the API server's memory: a kube-apiserver restart starts them again from
zero. The interval that spans the restart shows no rise (it cannot be told from nothing), so the
writes a replica makes between the new server's start and its first sample (~0.1 s) go
unattributed; every other interval is checked as with etcd. Like
tests/cluster/test_operator_controlplane_faults.py, this module starts its OWN dev cluster
(``TORCHYARD_HA_FAULTS_CLUSTER_DIR``, default ``~/.cache/torchyard/dev-cluster-hafaults``)
and stops it at the end.
"""

from __future__ import annotations

import itertools
import signal
import threading
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
from tests.cluster.test_operator_ha import (
    ELECTION,
    FLOWS,
    LEASE,
    assert_one_of_each_child,
    drop_identities,
    identity,
    leader_gauge,
)

from torchyard.api.constants import Phase
from torchyard.controller.leader import EXIT_LEASE_LOST
from torchyard_devcluster import kubeflow
from torchyard_devcluster.faults import kill_component, start_component
from torchyard_devcluster.testing import Kube, poll

pytestmark = pytest.mark.cluster

JOBS = 4  # half before the fault, half after


@pytest.fixture(scope="module")
def own_kube() -> Iterator[Kube]:
    with own_cluster("TORCHYARD_HA_FAULTS_CLUSTER_DIR", "dev-cluster-hafaults") as kube:
        yield kube


class WriteSampler(threading.Thread):
    """Both replicas' server-side write counts, sampled back to back until stopped."""

    def __init__(self, kube: Kube, names: list[str]) -> None:
        super().__init__(daemon=True)
        self.kube, self.names = kube, names
        self.samples: list[dict[str, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.1):
            try:
                counts = kubeflow.flow_counts(self.kube.api_client)
            except Exception:
                continue  # the API server's /metrics does not need etcd; a blip is no sample
            self.samples.append({n: counts.get(FLOWS[n], 0.0) for n in self.names})

    def writers(self) -> list[list[str]]:
        """Per interval between two samples: the replicas whose count rose."""
        return [[n for n in self.names if b[n] > a[n]] for a, b in itertools.pairwise(self.samples)]


def _manifest(i: int) -> dict[str, Any]:
    m = held(example("digits-ddp.yaml"))
    m["metadata"]["name"] = f"hf-{i}"
    return m


def _running(kube: Kube, ns: str, i: int) -> list[Any]:
    pods = [p for p in live_pods(kube, ns, f"hf-{i}") if p.status.phase == "Running"]
    return pods if len(pods) == 2 else []


def _phase(kube: Kube, ns: str, i: int) -> str:
    obj = get(kube, ns, "TrainingJob", f"hf-{i}") or {}
    return str((obj.get("status") or {}).get("phase", ""))


def _has_default_sa(kube: Kube, ns: str) -> bool:
    from kubernetes import client

    try:
        kube.core.read_namespaced_service_account("default", ns)
        return True
    except client.ApiException:
        return False


@pytest.mark.parametrize("component", ["etcd", "kube-apiserver"])
def test_leader_steps_down_while_the_control_plane_is_gone_and_one_actor_resumes(
    own_kube: Kube, tmp_path: Path, component: str
) -> None:
    kube = own_kube
    ns = f"hf-{component[:4]}-{uuid.uuid4().hex[:6]}"
    kube.core.create_namespace({"metadata": {"name": ns}})
    poll(lambda: _has_default_sa(kube, ns), timeout=WAIT, what="default ServiceAccount")
    ops: list[OperatorProcess] = []
    sampler = WriteSampler(kube, ["op-a", "op-b"])
    try:
        for n in ("op-a", "op-b"):
            kubeconfig, FLOWS[n] = identity(kube, ns, n)
            env = {"KUBECONFIG": str(kubeconfig)}
            ops.append(OperatorProcess(kube, ns, tmp_path, ELECTION, name=n, env=env))
        for op in ops:
            op.start()
        sampler.start()
        _run(kube, ns, ops, sampler, component)
    except BaseException:
        for op in ops:
            print(f"--- {op.name} log\n{op.log_text()}")
        _dump(kube, ns)
        raise
    finally:
        sampler.stop.set()
        for op in ops:
            op.kill(signal.SIGTERM)
        drop_identities(kube, ns)
        kube.core.delete_namespace(ns, propagation_policy="Background")


def _run(
    kube: Kube, ns: str, ops: list[OperatorProcess], sampler: WriteSampler, component: str
) -> None:
    poll(lambda: sum(leader_gauge(op) == 1 for op in ops) == 1, timeout=WAIT, what="a leader")
    leader = next(op for op in ops if leader_gauge(op) == 1)
    for i in range(JOBS // 2):
        create(kube, ns, _manifest(i))
    first = poll(lambda: _running(kube, ns, 0), timeout=WAIT, what="hf-0 running")
    release(kube, ns, first)  # hf-0 finishes around the outage: a transition not to miss

    kill_component(kube.cluster.state_dir, component)
    # Down until the leader could not renew for its renew deadline and stepped down.
    poll(lambda: not leader.alive(), timeout=WAIT, what="the leader stepping down")
    assert leader.proc is not None
    assert leader.proc.returncode == EXIT_LEASE_LOST, leader.log_text()
    start_component(kube.cluster.state_dir, component)
    leader.start()  # what the kubelet does with the exited container: a new candidate

    poll(lambda: sum(leader_gauge(op) == 1 for op in ops) == 1, timeout=WAIT, what="re-elected")
    for i in range(JOBS // 2, JOBS):
        create(kube, ns, _manifest(i))
    for i in range(1, JOBS):
        release(kube, ns, poll(lambda i=i: _running(kube, ns, i), timeout=WAIT, what=f"hf-{i}"))
    poll(
        lambda: all(_phase(kube, ns, i) == Phase.SUCCEEDED for i in range(JOBS)),
        timeout=WAIT,
        interval=0.5,
        what="every job Succeeded",
    )
    sampler.stop.set()
    sampler.join(timeout=10)
    assert_one_of_each_child(kube, ns, "hf", JOBS)

    writers = sampler.writers()
    both = [w for w in writers if len(w) > 1]
    assert not both, f"both replicas' counts rose within one sample interval {len(both)} times"
    switches = [w[0] for w in writers if w]
    changes = sum(a != b for a, b in itertools.pairwise(switches))
    from kubernetes import client

    lease = client.CoordinationV1Api(kube.api_client).read_namespaced_lease(LEASE, ns)
    # The Lease's transitions count every change of holder (the first acquisition is 0).
    assert changes <= int(lease.spec.lease_transitions or 0), (changes, switches)
    print(f"\nwriter changes {changes}, Lease transitions {lease.spec.lease_transitions}")


def _dump(kube: Kube, ns: str) -> None:
    for i in range(JOBS):
        print(f"--- hf-{i} status", (get(kube, ns, "TrainingJob", f"hf-{i}") or {}).get("status"))
    for j in kube.batch.list_namespaced_job(ns).items:
        print("--- Job", j.metadata.name, j.status.to_dict())
    for p in kube.core.list_namespaced_pod(ns).items:
        print("--- Pod", p.metadata.name, p.status.phase, p.metadata.deletion_timestamp)
