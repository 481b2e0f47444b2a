"""Real nodes on the dev cluster: a kubelet + its own containerd + runc per node, a CNI bridge,
one CoreDNS and one kube-proxy (iptables) for the machine, all local processes.

``up`` adds ``n`` nodes to a running dev cluster; ``teardown`` (called by the cluster's
``down`` before anything else) drains them, stops every process and sweeps what a crash may
have left (:mod:`torchyard_devcluster.realclean`). State: ``<state-dir>/real/state.json``.
Binaries come from ``hack/build-node.sh`` (cached like the control plane); containerd, runc
and the CNI plugins from Debian. Needs root (bridges, iptables, mounts, cgroups).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

from torchyard_devcluster import procs, realclean, realstart
from torchyard_devcluster.realconfig import RealNode
from torchyard_devcluster.realstart import apiserver_flags
from torchyard_devcluster.realstate import (
    KUBELET_CLIENT_STEM,
    RealNodeError,
    RealState,
    check_host,
    claim_host,
    ensure_node_binaries,
    node_bin_dir,
    real_dir,
    release_host,
    run_dir,
    sh,
)

__all__ = [
    "RealNodeError",
    "RealState",
    "apiserver_flags",
    "ensure_node_binaries",
    "import_image",
    "nodes",
    "real_dir",
    "teardown",
    "up",
]


def import_image(state_dir: Path, archive: Path) -> None:
    """Import an OCI/Docker image archive into every real node's containerd (CRI namespace)."""
    state = RealState.load(real_dir(state_dir))
    if state is None or not state.nodes:
        raise RealNodeError(f"no real nodes in {state_dir}")
    for node in state.nodes:
        realstart.ctr_import(node, archive)


def _healthy(state: RealState, n: int) -> bool:
    return len(state.nodes) >= n and all(procs.alive(p) for p in state.processes)


def up(cluster: Any, *, n: int, gpus: int = 8, taint: bool = False, timeout: float = 300) -> float:
    """Add ``n`` real nodes to the running dev ``cluster`` (reused when already up); returns the
    seconds spent building binaries (0.0 when cached)."""
    if n <= 0:
        return 0.0
    cni_bin = check_host()
    build_s = ensure_node_binaries()
    base = real_dir(cluster.state_dir)
    old = RealState.load(base)
    if old is not None and _healthy(old, n):
        # Reused: its kubelet may have garbage-collected the pause image since, which it cannot
        # pull back (no registry.k8s.io here), and then no pod starts. Re-importing is cheap.
        for node in old.nodes:
            realstart.ctr_import(node, realstart.pause_archive())
        return build_s
    teardown(cluster.state_dir)
    claim_host(cluster.state_dir)
    pki = cluster.state_dir / "pki"
    if not (pki / f"{KUBELET_CLIENT_STEM}.crt").is_file():
        # A cluster started before real nodes existed: logs/exec through the API server will be
        # refused (it has no kubelet client certificate); everything else works.
        apiserver_flags(pki)
    state = RealState(base=base, run=run_dir(cluster.state_dir))
    state.run.mkdir(parents=True, exist_ok=True)
    ports = procs.free_ports(2 * n)
    for i in range(n):
        state.nodes.append(
            RealNode(i, base / f"node-{i}", state.run, ports[2 * i], ports[2 * i + 1])
        )
    state.save()
    try:
        _start_all(state, cluster, cni_bin, gpus=gpus, taint=taint, timeout=timeout)
    except BaseException:
        teardown(cluster.state_dir)
        raise
    return build_s


def _start_all(
    state: RealState, cluster: Any, cni_bin: str, *, gpus: int, taint: bool, timeout: float
) -> None:
    logs = cluster.state_dir / "logs"
    pki = cluster.state_dir / "pki"
    realstart.enable_forwarding()
    for node in state.nodes:
        node.base.mkdir(parents=True, exist_ok=True)
        realstart.prepare_bridge(node)
        realstart.prepare_cgroups(node)
        realstart.start_containerd(state, node, cni_bin, logs)
        realstart.start_kubelet(state, node, cluster.server, pki, taint, logs)
    api = cluster.api_client()
    try:
        realstart.wait_nodes(api, [n.name for n in state.nodes], gpus, timeout)
        realstart.start_kube_proxy(state, cluster.server, pki, logs)
        realstart.start_coredns(state, cluster.server, pki, api, logs)
    finally:
        api.close()


def nodes(state_dir: Path) -> list[str]:
    state = RealState.load(real_dir(state_dir))
    return [] if state is None else [n.name for n in state.nodes]


# --- teardown ---------------------------------------------------------------------------------


def _admin_api(state_dir: Path) -> Any:
    """An admin API client for the cluster in ``state_dir`` (from its state.json and pki/),
    without importing :mod:`torchyard_devcluster.cluster` (which imports this module)."""
    from kubernetes import client

    server = json.loads((state_dir / "state.json").read_text())["server"]
    cfg = client.Configuration()
    cfg.host = server
    cfg.ssl_ca_cert = str(state_dir / "pki" / "ca.crt")
    cfg.cert_file = str(state_dir / "pki" / "admin.crt")
    cfg.key_file = str(state_dir / "pki" / "admin.key")
    return client.ApiClient(configuration=cfg)


def _drain(state_dir: Path, state: RealState, timeout: float) -> None:
    """Delete the pods bound to the real nodes and give the kubelets ``timeout`` seconds to tear
    them down (CNI DEL, netns, mounts) the clean way."""
    kubelets = [p for p in state.processes if p.name.startswith("kubelet-")]
    if not kubelets or not all(procs.alive(p) for p in kubelets):
        return
    from kubernetes import client

    api = _admin_api(state_dir)
    try:
        core: Any = client.CoreV1Api(api)
        names = {n.name for n in state.nodes}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pods = [
                p
                for p in core.list_pod_for_all_namespaces(_request_timeout=10).items
                if p.spec.node_name in names
            ]
            if not pods:
                return
            for p in pods:
                with contextlib.suppress(client.ApiException):
                    core.delete_namespaced_pod(
                        p.metadata.name, p.metadata.namespace, grace_period_seconds=0
                    )
            time.sleep(1.0)
    finally:
        api.close()


def teardown(state_dir: Path, *, drain_timeout: float = 60.0) -> list[str]:
    """Stop and remove the real nodes of the cluster in ``state_dir``; returns leftovers (empty
    when the machine is clean). Safe to call when there are none."""
    base = real_dir(state_dir)
    state = RealState.load(base)
    if state is None:
        return []
    with contextlib.suppress(Exception):
        _drain(state_dir, state, drain_timeout)
    for p in reversed(state.processes):
        if p.name.startswith("containerd-") and procs.alive(p):
            # The kubelet is stopped (it was started after this containerd): clear the
            # containers, keep the images (realstart.keep_image_store below).
            node = next((n for n in state.nodes if p.name == f"containerd-{n.name}"), None)
            if node is not None:
                with contextlib.suppress(Exception):
                    realstart.forget_containers(node)
        procs.stop(p, grace=15.0)
    proxy = node_bin_dir() / "kube-proxy"
    if proxy.is_file():
        sh([str(proxy), "--cleanup"], check=False)
    for node in state.nodes:
        realclean.kill_node_processes(node)
        realclean.unmount_under(node.base)
        realclean.remove_host_files(node)
        realclean.remove_container_log_links(node.base / "pod-logs")
    realclean.delete_pod_netns()
    for node in state.nodes:
        realclean.delete_link(node.bridge)
        realclean.remove_cgroups(node.cgroup_root)
    realclean.clean_iptables()
    left = realclean.leftovers(state.nodes)
    if not any(line.startswith("mount ") for line in left):
        for node in state.nodes:
            with contextlib.suppress(OSError):
                realstart.keep_image_store(node)
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(state.run, ignore_errors=True)
        with contextlib.suppress(OSError):
            state.run.parent.rmdir()  # /run/torchyard, when no other cluster uses it
    release_host(state_dir)
    return left
