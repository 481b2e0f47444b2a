"""Control-plane faults for tests: kill one component of a dev cluster and start it again with
the very command line ``up`` recorded (same ports, certificates and etcd data), so the
cluster comes back as it was — a crashed process restarted by its supervisor.

Only for a cluster of your own (``up(state_dir=...)``): killing the shared cluster's API server
breaks everyone else's tests.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torchyard_devcluster import procs
from torchyard_devcluster.cluster import (
    ClusterState,
    DevCluster,
    DevClusterError,
    _apiserver_ready,
    _locked,
    wait_http,
)
from torchyard_devcluster.nodes import MANAGED_LABEL
from torchyard_devcluster.stages import ANNOTATION_PREFIX

#: Where kubelets (and kwok for its fake nodes) keep their node Leases.
NODE_LEASE_NAMESPACE = "kube-node-lease"
#: A pod annotation :func:`resync_fake_nodes` changes to give kwok a watch event for the pod.
RESYNC_ANNOTATION = ANNOTATION_PREFIX + "resync"

#: Components whose restart makes in-flight API requests fail with errors kwok does not retry.
_BREAK_IN_FLIGHT_REQUESTS = ("etcd", "kube-apiserver")


def _state(state_dir: Path) -> ClusterState:
    state = ClusterState.load(state_dir)
    if state is None:
        raise DevClusterError(f"no dev cluster in {state_dir}")
    return state


def _component(state: ClusterState, name: str) -> procs.Proc:
    for p in state.processes:
        if p.name == name:
            return p
    raise DevClusterError(f"no component {name!r}: {[p.name for p in state.processes]}")


def kill_component(state_dir: Path, name: str, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` (default SIGKILL: a crash, no graceful shutdown) to one component and
    wait until it is gone."""
    proc = _component(_state(state_dir), name)
    if not procs.alive(proc):
        return
    os.kill(proc.pid, sig)
    deadline = time.monotonic() + 30
    while procs.alive(proc):
        if time.monotonic() > deadline:
            raise DevClusterError(f"{name} (pid {proc.pid}) survived signal {sig}")
        time.sleep(0.05)


def _launch_again(state_dir: Path, name: str) -> tuple[ClusterState, procs.Proc]:
    """Start a stopped component from its recorded command line (same log, ports, data) and
    record the new process in the cluster's state."""
    with _locked(state_dir):
        state = _state(state_dir)
        old = _component(state, name)
        if procs.alive(old):
            raise DevClusterError(f"{name} still runs (pid {old.pid})")
        new = procs.start(name, old.argv, Path(old.log), cwd=state_dir)
        state.processes[state.processes.index(old)] = new
        state.save()
    return state, new


def start_component(state_dir: Path, name: str, *, timeout: float = 120.0) -> None:
    """Start a killed component again from its recorded command line and wait until the API
    server answers ``/readyz`` (which checks etcd too). After etcd or the API server, the fake
    nodes are resynced (:func:`resync_fake_nodes`)."""
    state, new = _launch_again(state_dir, name)
    deadline = time.monotonic() + timeout
    while not _apiserver_ready(state, timeout=2.0):
        if not procs.alive(new):
            raise DevClusterError(f"{name} exited on restart:\n{procs.tail(new.log)}")
        if time.monotonic() > deadline:
            raise DevClusterError(f"API server not ready {timeout:.0f} s after {name} restarted")
        time.sleep(0.2)
    if name in _BREAK_IN_FLIGHT_REQUESTS:
        resync_fake_nodes(state_dir, timeout=max(deadline - time.monotonic(), 30.0))


def resync_fake_nodes(state_dir: Path, *, timeout: float = 60.0) -> None:
    """Restart kwok and have it play every fake-node pod's stage from the pod as it is now.

    Why: kwok (v0.8.0) drops a stage whose status patch failed with an error it does not count
    as retryable (only connection refused, timeouts, 429 and 503 are); a patch in flight when
    etcd or the API server dies gets a reset connection or a 500, so the pod kwok was turning
    Ready at that instant stays Pending for good. A real kubelet re-syncs its pods' status every
    sync period; this is the fake nodes' equivalent.

    A restart alone is not that: the new kwok process has a new lease holder identity, so it
    leaves the fake nodes' pods alone (read-only) until the old process's node Leases expire
    (40 s), and the re-list of a node's pods it does on taking the node over can run before its
    own Lease cache shows the takeover, skipping them for good (seen in CI: a pod created while
    kwok was down stayed Pending). So the old Leases are deleted while kwok is down (the new one
    creates its own at once), and once it holds every fake node, each live pod on one gets an
    annotation touch — a watch event kwok now acts on — repeated for pods still Pending. Only
    pod metadata and node Leases are written, never an object the operator under test writes."""
    from kubernetes import client

    state = _state(state_dir)
    cluster = DevCluster(state_dir, state.kubeconfig, state.server, started=False)
    api = cluster.api_client()
    try:
        core: Any = client.CoreV1Api(api)
        leases: Any = client.CoordinationV1Api(api)
        nodes = [n.metadata.name for n in core.list_node(label_selector=MANAGED_LABEL).items]
        kill_component(state_dir, "kwok")
        for node in nodes:
            _ignore_not_found(leases.delete_namespaced_lease, node, NODE_LEASE_NAMESPACE)
        state, new = _launch_again(state_dir, "kwok")
        deadline = time.monotonic() + timeout
        wait_http(new, f"http://127.0.0.1:{state.ports['kwok']}/healthz", timeout=timeout)
        while missing := [n for n in nodes if not _lease_exists(leases, n)]:
            if time.monotonic() > deadline:
                raise DevClusterError(f"kwok took no Lease for {missing}")
            time.sleep(0.2)
        time.sleep(1.0)  # kwok's own Lease cache: a watch event behind the API's answer
        touched = _touch_pods(core, set(nodes), phases=("Pending", "Running"))
        while touched and time.monotonic() < deadline:
            time.sleep(1.0)
            touched = _touch_pods(core, set(nodes), phases=("Pending",))
    finally:
        api.close()


def _lease_exists(leases: Any, node: str) -> bool:
    from kubernetes import client

    try:
        leases.read_namespaced_lease(node, NODE_LEASE_NAMESPACE)
    except client.ApiException as e:
        if e.status == 404:
            return False
        raise
    return True


def _ignore_not_found(call: Callable[..., object], *args: object) -> None:
    from kubernetes import client

    try:
        call(*args)
    except client.ApiException as e:
        if e.status != 404:
            raise


def _touch_pods(core: Any, nodes: set[str], *, phases: tuple[str, ...]) -> int:
    """Annotate each live pod on ``nodes`` in one of ``phases`` (a new value each time: an
    unchanged patch makes no watch event); returns how many were touched."""
    touched = 0
    stamp = f"{time.time():.3f}"
    for pod in core.list_pod_for_all_namespaces().items:
        meta, spec = pod.metadata, pod.spec
        if spec.node_name not in nodes or meta.deletion_timestamp or pod.status.phase not in phases:
            continue
        patch = {"metadata": {"annotations": {RESYNC_ANNOTATION: stamp}}}
        _ignore_not_found(core.patch_namespaced_pod, meta.name, meta.namespace, patch)
        touched += 1
    return touched


def restart_component(
    state_dir: Path, name: str, *, down_for: float = 0.0, sig: int = signal.SIGKILL
) -> float:
    """Kill ``name``, leave it down ``down_for`` seconds, start it again; returns the seconds
    from the kill until the API server was ready again."""
    t0 = time.monotonic()
    kill_component(state_dir, name, sig)
    time.sleep(down_for)
    start_component(state_dir, name)
    return time.monotonic() - t0


__all__ = ["kill_component", "restart_component", "resync_fake_nodes", "start_component"]
