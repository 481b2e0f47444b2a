"""The chart on the real node: ``helm install`` with the images from the local registry into a
namespace that enforces Pod Security ``restricted``; the operator runs as a pod, its liveness
probe passes, ``/metrics`` answers through its Service. Then ``kubectl apply -f
examples/digits-ddp.yaml``: two real worker pods rendezvous through the headless Service's DNS
names, train, and the operator fills ``status.model`` from the termination message; ``kubectl
logs`` and ``torchyard logs`` show the worker's lines. Models go to a PVC bound to a ``local``
PV (the chart's ``operator.defaultStorage``)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

import torchyard_devcluster as devcluster
from torchyard_devcluster import realconfig
from torchyard_devcluster.testing import Kube, poll

from .jobkit import (
    EXAMPLES,
    PROBE,
    Release,
    completion_index,
    new_namespace,
    torchyard_logs,
    wait_finished,
    worker_pods,
)
from .podkit import http_client, wait_phase

pytestmark = pytest.mark.real


def _probes_ran(kube: Kube, rel: Release) -> Any:
    """The pod once its liveness probe has had time for several rounds (no timed assertion:
    we only wait before looking)."""
    p = kube.core.read_namespaced_pod(rel.pod.metadata.name, rel.namespace)
    statuses = p.status.container_statuses or []
    if not statuses or statuses[0].state.running is None:
        return None
    started = statuses[0].state.running.started_at.timestamp()
    rounds = PROBE["initialDelaySeconds"] + PROBE["periodSeconds"] * (PROBE["failureThreshold"] + 1)
    return p if time.time() - started > rounds else None


def test_operator_runs_as_a_pod_in_a_restricted_namespace(
    real_cluster: devcluster.DevCluster, kube: Kube, release: Release, busybox_image: str
) -> None:
    ns = kube.core.read_namespace(release.namespace)
    assert ns.metadata.labels["pod-security.kubernetes.io/enforce"] == "restricted"
    pod = poll(lambda: _probes_ran(kube, release), timeout=300, what="operator probed a while")
    assert pod.spec.node_name.startswith(realconfig.NODE_PREFIX)
    status = pod.status.container_statuses[0]
    assert status.ready, status
    assert status.restart_count == 0, status
    events = kube.core.list_namespaced_event(
        release.namespace, field_selector=f"involvedObject.name={pod.metadata.name}"
    ).items
    # Readiness fails until the operator listens; the liveness probe may time out once while
    # this machine is busy (PROBE tolerates that), never so often that the kubelet would
    # restart the operator.
    unhealthy = [(e.count, e.message) for e in events if e.reason == "Unhealthy"]
    print(f"Unhealthy events: {unhealthy}")
    liveness = [(n, m) for n, m in unhealthy if m.startswith("Liveness")]
    assert all((n or 1) < PROBE["failureThreshold"] for n, _ in liveness), unhealthy


def test_operator_metrics_answer_through_its_service(
    real_cluster: devcluster.DevCluster, kube: Kube, release: Release, busybox_image: str
) -> None:
    svc = f"{release.name}-torchyard-metrics.{release.namespace}.svc.cluster.local"
    client_ns = new_namespace(kube, f"scrape-{uuid.uuid4().hex[:6]}", {})
    try:
        kube.core.create_namespaced_pod(client_ns, http_client("scrape", busybox_image, svc, 8080))
        done = wait_phase(kube, "scrape", client_ns, {"Succeeded", "Failed"})
        body = real_cluster.kubectl("logs", "-n", client_ns, "scrape").stdout
    finally:
        kube.core.delete_namespace(client_ns, propagation_policy="Background")
    assert done.status.phase == "Succeeded", body
    assert "# TYPE torchyard_jobs gauge" in body


# --- the first real job --------------------------------------------------------------------


def test_digits_ddp_trains_on_two_real_pods(
    real_cluster: devcluster.DevCluster, kube: Kube, job_namespace: str, trainer_image: str
) -> None:
    ns = job_namespace
    t0 = time.monotonic()
    real_cluster.kubectl("apply", "-n", ns, "-f", str(EXAMPLES / "digits-ddp.yaml"))
    job = wait_finished(kube, ns, "digits-ddp")
    elapsed = time.monotonic() - t0
    listing = real_cluster.kubectl("get", "pods", "-n", ns, "-o", "wide").stdout
    print(f"\napply -> {job['status']['phase']} in {elapsed:.0f}s\n{listing}")
    status = job["status"]
    assert status["phase"] == "Succeeded", status
    workers = worker_pods(kube, ns, "digits-ddp")
    assert len(workers) >= 2
    assert all(p.spec.node_name.startswith(realconfig.NODE_PREFIX) for p in workers)
    print(f"status.model: {status.get('model')}")
    assert status["model"]["metrics"]["accuracy"] >= 0.95
    rank0 = next(p.metadata.name for p in workers if completion_index(p) == "0")
    kubectl_logs = real_cluster.kubectl("logs", "-n", ns, rank0).stdout
    ty_logs = torchyard_logs(real_cluster, ns, "digits-ddp")
    print(f"kubectl logs {rank0}:\n{kubectl_logs[-1500:]}")
    print(f"torchyard logs:\n{ty_logs.stdout[-1500:]}{ty_logs.stderr[-500:]}")
    # The trainer's own lines (its logging), not only the launcher's.
    assert "rank0 INFO" in kubectl_logs
    assert ty_logs.returncode == 0, ty_logs.stderr
    assert kubectl_logs.strip().splitlines()[-1] in ty_logs.stdout
