"""Starting a real node's parts: certificates and kubeconfigs, the bridge and cgroups, the
pause image, containerd, the kubelet, kube-proxy and CoreDNS, and waiting for the nodes. See
:mod:`torchyard_devcluster.realnode`."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from torchyard_devcluster import certs, ociimage, paths, procs, realclean
from torchyard_devcluster.realconfig import (
    CGROUP_V1_CONTROLLERS,
    REAL_NODE_LABEL,
    RealNode,
    cni_conflist,
    containerd_config,
    coredns_rbac,
    corefile,
    gpu_capacity_patch,
    kube_proxy_config,
    kubeconfig,
    kubelet_config,
    pause_ref,
)
from torchyard_devcluster.realstate import (
    COREDNS_USER,
    ENV_PATH,
    GPU_RESOURCE,
    KUBELET_CLIENT_STEM,
    RealNodeError,
    RealState,
    node_bin_dir,
    node_versions,
    sh,
)

# --- certificates and kubeconfigs -------------------------------------------------------------


def client_cert(pki: Path, stem: str, common_name: str, orgs: tuple[str, ...] = ()) -> Any:
    """A client certificate signed by the dev cluster CA (``pki/ca.*``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{pki / 'ca.key'}: expected the EC key of the dev cluster CA")
    ca_cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    return certs._leaf(pki, stem, ca_key, ca_cert, common_name, orgs=orgs)


def apiserver_flags(pki: Path) -> list[str]:
    """kube-apiserver flags so it can call kubelets (logs, exec): a client certificate, and the
    node's InternalIP first (its hostname, the node name, resolves nowhere)."""
    cert = client_cert(pki, KUBELET_CLIENT_STEM, "kube-apiserver-kubelet-client")
    return [
        f"--kubelet-client-certificate={cert.cert}",
        f"--kubelet-client-key={cert.key}",
        "--kubelet-preferred-address-types=InternalIP,Hostname,ExternalIP",
    ]


def write_kubeconfig(path: Path, server: str, pki: Path, stem: str, cn: str, *orgs: str) -> Path:
    cert = client_cert(pki, stem, cn, tuple(orgs))
    ca = (pki / "ca.crt").read_bytes()
    doc = kubeconfig(server, ca, cert.cert.read_bytes(), cert.key.read_bytes(), cn)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    path.chmod(0o600)
    return path


# --- host preparation -------------------------------------------------------------------------


def prepare_bridge(node: RealNode) -> None:
    """The node's bridge with its gateway address, made before any pod so the kubelet can bind
    its InternalIP there (the CNI bridge plugin adopts an existing bridge)."""
    if sh(["ip", "link", "show", node.bridge], check=False).returncode != 0:
        sh(["ip", "link", "add", node.bridge, "type", "bridge"])
    addrs = sh(["ip", "-4", "-o", "addr", "show", "dev", node.bridge]).stdout
    if f" {node.gateway}/" not in addrs:
        sh(["ip", "addr", "add", f"{node.gateway}/24", "dev", node.bridge])
    sh(["ip", "link", "set", node.bridge, "up"])


def prepare_cgroups(node: RealNode) -> None:
    """The kubelet's cgroup root must exist in every v1 controller; a new cpuset cgroup starts
    with no cpus/mems, so copy the parent's."""
    for ctrl in CGROUP_V1_CONTROLLERS:
        base = realclean.CGROUP_FS / ctrl
        if not base.is_dir():
            continue
        d = base / node.cgroup_root.lstrip("/")
        d.mkdir(exist_ok=True)
        if ctrl == "cpuset":
            for f in ("cpuset.cpus", "cpuset.mems"):
                if not (d / f).read_text().strip():
                    (d / f).write_text((base / f).read_text())


def enable_forwarding() -> None:
    for key, value in (("net/ipv4/ip_forward", "1"), ("net/bridge/bridge-nf-call-iptables", "1")):
        p = Path("/proc/sys") / key
        if p.exists() and p.read_text().strip() != value:
            p.write_text(value)


def pause_archive() -> Path:
    """The pause image (``FROM scratch`` + the static ``pause``), packed once per version."""
    version = node_versions()["PAUSE_VERSION"]
    out = node_bin_dir() / f"pause-{version}.oci.tar"
    if not out.is_file():
        data = (node_bin_dir() / "pause").read_bytes()
        ociimage.write_archive(
            out,
            pause_ref(version),
            [ociimage.ImageFile("pause", data)],
            entrypoint=["/pause"],
            user="65535:65535",
        )
    return out


def ctr_import(node: RealNode, archive: Path) -> None:
    """Import an image archive into the node's containerd, CRI namespace."""
    sh(["ctr", "--address", str(node.socket), "-n", "k8s.io", "images", "import", str(archive)])


# --- the image store kept between clusters -----------------------------------------------------


def image_store(node: RealNode) -> Path:
    """Where node ``i``'s containerd root waits between ``dev-cluster down`` and the next ``up``:
    the images it pulled (the CPU trainer's ~5 GB among them) stay, as on a real node that
    reboots, instead of being pulled and unpacked again by every new cluster."""
    return paths.cache_dir() / "real-node-images" / f"node-{node.index}"


def restore_image_store(node: RealNode) -> bool:
    """Move the kept store back in as the node's containerd root (before containerd starts)."""
    store, root = image_store(node), node.containerd_root
    if not store.is_dir() or root.exists():
        return False
    root.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(store, root)  # a rename: the cache and the cluster's state share a filesystem
    return True


def forget_containers(node: RealNode) -> None:
    """Delete every container (and its snapshot) of the node's CRI namespace, keeping images: run
    at teardown while containerd still answers and the kubelet is stopped, so the kept store
    holds no sandbox that the next kubelet would find without its pod."""
    ctr = ["ctr", "--address", str(node.socket), "-n", "k8s.io"]
    for task in sh([*ctr, "tasks", "ls", "-q"], check=False).stdout.split():
        sh([*ctr, "tasks", "kill", "--signal", "SIGKILL", task], check=False)
        sh([*ctr, "tasks", "delete", "--force", task], check=False)
    ids = sh([*ctr, "containers", "ls", "-q"], check=False).stdout.split()
    if ids:
        sh([*ctr, "containers", "delete", *ids], check=False)


def keep_image_store(node: RealNode) -> None:
    """After teardown (nothing mounted under the node any more): the containerd root becomes
    the kept store, replacing the previous one."""
    root, store = node.containerd_root, image_store(node)
    if not root.is_dir():
        return
    if store.exists():
        shutil.rmtree(store, ignore_errors=True)
    store.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(root, store)


# --- processes --------------------------------------------------------------------------------


def _launch(state: RealState, name: str, argv: list[str], logs: Path) -> procs.Proc:
    env = dict(os.environ, PATH=ENV_PATH + ":" + os.environ.get("PATH", ""))
    p = procs.start(name, argv, logs / f"{name}.log", cwd=state.base, env=env)
    state.processes.append(p)
    state.save()
    return p


def _wait(proc: procs.Proc, what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not procs.alive(proc):
            raise RealNodeError(
                f"{proc.name} exited; log tail ({proc.log}):\n{procs.tail(proc.log)}"
            )
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.25)
    raise RealNodeError(
        f"{proc.name}: {what} not reached in {timeout:.0f}s; log tail ({proc.log}):\n"
        + procs.tail(proc.log)
    )


def start_containerd(state: RealState, node: RealNode, cni_bin: str, logs: Path) -> None:
    conf = node.base / "containerd.toml"
    (node.base / "net.d").mkdir(parents=True, exist_ok=True)
    (node.base / "net.d" / "10-torchyard.conflist").write_text(json.dumps(cni_conflist(node)))
    pause = pause_ref(node_versions()["PAUSE_VERSION"])
    conf.write_text(containerd_config(node, cni_bin_dir=cni_bin, pause_image=pause))
    restore_image_store(node)
    p = _launch(state, f"containerd-{node.name}", ["containerd", f"--config={conf}"], logs)
    version = ["ctr", "--address", str(node.socket), "version"]
    _wait(p, "socket answers", lambda: sh(version, check=False).returncode == 0, 60)
    ctr_import(node, pause_archive())


def start_kubelet(
    state: RealState, node: RealNode, server: str, pki: Path, taint: bool, logs: Path
) -> None:
    kc = write_kubeconfig(
        node.base / "kubelet.kubeconfig",
        server,
        pki,
        f"kubelet-{node.name}",
        f"system:node:{node.name}",
        "system:nodes",
    )
    conf = node.base / "kubelet.yaml"
    doc = kubelet_config(
        node,
        ca_file=pki / "ca.crt",
        cluster_dns=state.nodes[0].gateway,
        resolv_conf=Path("/etc/resolv.conf"),
        taint=taint,
    )
    conf.write_text(yaml.safe_dump(doc, sort_keys=False))
    argv = [
        str(node_bin_dir() / "kubelet"),
        f"--config={conf}",
        f"--kubeconfig={kc}",
        f"--hostname-override={node.name}",
        f"--node-ip={node.gateway}",
        f"--root-dir={node.base / 'kubelet'}",
        f"--cert-dir={node.base / 'kubelet' / 'pki'}",
        f"--node-labels={REAL_NODE_LABEL}=true",
        "--v=1",
    ]
    p = _launch(state, f"kubelet-{node.name}", argv, logs)
    url = f"http://127.0.0.1:{node.healthz_port}/healthz"
    _wait(p, "healthz", lambda: _http_ok(url), 120)


def _http_ok(url: str) -> bool:
    import httpx

    return httpx.get(url, timeout=2.0).status_code == 200


def start_coredns(state: RealState, server: str, pki: Path, api: Any, logs: Path) -> None:
    from kubernetes import client

    rbac: Any = client.RbacAuthorizationV1Api(api)
    role, binding = coredns_rbac(COREDNS_USER)
    with contextlib.suppress(client.ApiException):  # 409: kept from an earlier up
        rbac.create_cluster_role(role)
    with contextlib.suppress(client.ApiException):
        rbac.create_cluster_role_binding(binding)
    kc = write_kubeconfig(state.base / "coredns.kubeconfig", server, pki, "coredns", COREDNS_USER)
    health, ready = procs.free_ports(2)
    conf = state.base / "Corefile"
    bind = state.nodes[0].gateway
    conf.write_text(corefile(kubeconfig=kc, bind_ip=bind, health_port=health, ready_port=ready))
    p = _launch(state, "coredns", [str(node_bin_dir() / "coredns"), "-conf", str(conf)], logs)
    _wait(p, "ready", lambda: _http_ok(f"http://127.0.0.1:{ready}/ready"), 120)


def start_kube_proxy(state: RealState, server: str, pki: Path, logs: Path) -> None:
    kc = write_kubeconfig(
        state.base / "kube-proxy.kubeconfig", server, pki, "kube-proxy", "system:kube-proxy"
    )
    healthz, metrics = procs.free_ports(2)
    conf = state.base / "kube-proxy.yaml"
    doc = kube_proxy_config(
        kubeconfig=kc, hostname=state.nodes[0].name, healthz_port=healthz, metrics_port=metrics
    )
    conf.write_text(yaml.safe_dump(doc, sort_keys=False))
    argv = [str(node_bin_dir() / "kube-proxy"), f"--config={conf}", "--v=1"]
    p = _launch(state, "kube-proxy", argv, logs)
    _wait(p, "healthz", lambda: _http_ok(f"http://127.0.0.1:{healthz}/healthz"), 120)


# --- the API side: Ready nodes with GPUs ------------------------------------------------------


def wait_nodes(api: Any, names: list[str], gpus: int, timeout: float) -> None:
    """Each node Ready and (``gpus`` > 0) advertising ``nvidia.com/gpu``; the capacity is
    patched again while the kubelet's first status updates may still reset it."""
    from kubernetes import client

    core: Any = client.CoreV1Api(api)
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending and time.monotonic() < deadline:
        for name in sorted(pending):
            with contextlib.suppress(client.ApiException):
                node = core.read_node_status(name)
                ready = any(
                    c.type == "Ready" and c.status == "True" for c in node.status.conditions or []
                )
                have = (node.status.allocatable or {}).get(GPU_RESOURCE)
                if ready and gpus > 0 and have != str(gpus):
                    core.patch_node_status(name, gpu_capacity_patch(GPU_RESOURCE, gpus))
                elif ready:
                    pending.discard(name)
        time.sleep(0.5)
    if pending:
        raise RealNodeError(f"real nodes not Ready with {gpus} {GPU_RESOURCE}: {sorted(pending)}")
