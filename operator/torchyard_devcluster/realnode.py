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
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from torchyard_devcluster import build, certs, ociimage, paths, procs, realclean
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
    kubelet_config,
    pause_ref,
)

NODE_BINARIES = ("kubelet", "kube-proxy", "coredns", "pause")
CNI_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
HOST_LOCK = Path("/run/torchyard-real-node.lock")
KUBELET_CLIENT_STEM = "apiserver-kubelet-client"
COREDNS_USER = "torchyard:coredns"
GPU_RESOURCE = "nvidia.com/gpu"
ENV_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class RealNodeError(RuntimeError):
    """A real node could not be started; the message says what is missing or which log."""


# --- versions, binaries -----------------------------------------------------------------------


def node_versions() -> dict[str, str]:
    """``COREDNS_VERSION``, ``PAUSE_VERSION`` from hack/node-versions.env (env overrides)."""
    out = {"COREDNS_VERSION": "v1.15.0", "PAUSE_VERSION": "3.10"}
    root = paths.repo_root()
    env_file = None if root is None else root / "hack" / "node-versions.env"
    if env_file is not None and env_file.is_file():
        for raw in env_file.read_text().splitlines():
            line = raw.strip()
            if line and not line.startswith("#") and "=" in line:
                key, value = line.split("=", 1)
                out[key.strip()] = value.strip().strip('"')
    return {k: os.environ.get(k) or v for k, v in out.items()}


def node_bin_dir() -> Path:
    return paths.bin_dir().parent / "node-bin"


def node_binaries_ready() -> bool:
    stamp = node_bin_dir() / ".stamp"
    v = node_versions()
    key = (
        f"k8s={paths.versions()['K8S_VERSION']} coredns={v['COREDNS_VERSION']} "
        f"pause={v['PAUSE_VERSION']} "
    )
    if not stamp.is_file() or not stamp.read_text().startswith(key):
        return False
    return all(os.access(node_bin_dir() / b, os.X_OK) for b in NODE_BINARIES)


def ensure_node_binaries() -> float:
    """Build kubelet, kube-proxy, CoreDNS and pause when missing; seconds spent (0 if cached)."""
    if node_binaries_ready():
        return 0.0
    root = paths.repo_root()
    if root is None:
        raise FileNotFoundError(f"real-node binaries missing in {node_bin_dir()}")
    return build.run_build_script(root / "hack" / "build-node.sh")


def _cni_bin_dir() -> str:
    for d in CNI_BIN_DIRS:
        if all((Path(d) / p).is_file() for p in ("bridge", "host-local", "portmap", "firewall")):
            return d
    raise RealNodeError(
        "CNI plugins (bridge, host-local, portmap, firewall) not found in "
        f"{' or '.join(CNI_BIN_DIRS)}: apt-get install containernetworking-plugins"
    )


def check_host() -> str:
    """Root and the Debian parts (containerd, runc, CNI plugins, iptables); the CNI bin dir."""
    if os.geteuid() != 0:
        raise RealNodeError("real nodes need root (bridges, iptables, mounts, cgroups)")
    missing = [
        f"{tool} (apt-get install {pkg})"
        for tool, pkg in (
            ("containerd", "containerd"),
            ("ctr", "containerd"),
            ("containerd-shim-runc-v2", "containerd"),
            ("runc", "runc"),
            ("iptables", "iptables"),
            ("ip", "iproute2"),
        )
        if shutil.which(tool, path=ENV_PATH) is None
    ]
    if missing:
        raise RealNodeError("real nodes need: " + ", ".join(missing))
    return _cni_bin_dir()


# --- state ------------------------------------------------------------------------------------


@dataclass
class RealState:
    base: Path
    run: Path
    nodes: list[RealNode] = field(default_factory=list)
    processes: list[procs.Proc] = field(default_factory=list)

    def save(self) -> None:
        data = {
            "run": str(self.run),
            "nodes": [
                {"index": n.index, "kubelet_port": n.kubelet_port, "healthz_port": n.healthz_port}
                for n in self.nodes
            ],
            "processes": [p.to_json() for p in self.processes],
        }
        self.base.mkdir(parents=True, exist_ok=True)
        tmp = self.base / "state.json.tmp"
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.base / "state.json")

    @classmethod
    def load(cls, base: Path) -> RealState | None:
        try:
            data = json.loads((base / "state.json").read_text())
        except (OSError, ValueError):
            return None
        run = Path(data["run"])
        nodes = [
            RealNode(
                index=int(n["index"]),
                base=base / f"node-{n['index']}",
                run=run,
                kubelet_port=int(n["kubelet_port"]),
                healthz_port=int(n["healthz_port"]),
            )
            for n in data.get("nodes", [])
        ]
        return cls(base, run, nodes, [procs.Proc.from_json(p) for p in data.get("processes", [])])


def real_dir(state_dir: Path) -> Path:
    return state_dir / "real"


def _run_dir(state_dir: Path) -> Path:
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:10]
    return Path("/run/torchyard") / digest


def _sh(argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PATH=ENV_PATH + ":" + os.environ.get("PATH", ""))
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False)
    if check and done.returncode != 0:
        raise RealNodeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


# --- host lock: one real-node host per machine (iptables chains are global) -------------------


def _claim_host(state_dir: Path) -> None:
    HOST_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with HOST_LOCK.open("a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        fh.seek(0)
        owner = fh.read().strip()
        if owner and owner != str(state_dir) and (Path(owner) / "real" / "state.json").exists():
            other = RealState.load(Path(owner) / "real")
            if other is not None and any(procs.alive(p) for p in other.processes):
                raise RealNodeError(
                    f"this machine's real nodes belong to the dev cluster in {owner}; "
                    "one cluster per machine can have real nodes (run `down` there first)"
                )
        fh.seek(0)
        fh.truncate()
        fh.write(str(state_dir))


def _release_host(state_dir: Path) -> None:
    with contextlib.suppress(OSError), HOST_LOCK.open("r+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        if fh.read().strip() == str(state_dir):
            fh.seek(0)
            fh.truncate()


# --- certificates and kubeconfigs -------------------------------------------------------------


def _client_cert(pki: Path, stem: str, common_name: str, orgs: tuple[str, ...] = ()) -> Any:
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
    """kube-apiserver flags so it can call kubelets (logs, exec) with a client certificate."""
    cert = _client_cert(pki, KUBELET_CLIENT_STEM, "kube-apiserver-kubelet-client")
    return [f"--kubelet-client-certificate={cert.cert}", f"--kubelet-client-key={cert.key}"]


def _write_kubeconfig(path: Path, server: str, pki: Path, stem: str, cn: str, *orgs: str) -> Path:
    from torchyard_devcluster import cluster

    cert = _client_cert(pki, stem, cn, tuple(orgs))
    cluster._kubeconfig(path, server, pki / "ca.crt", cert, cn)
    return path


# --- host preparation -------------------------------------------------------------------------


def _prepare_bridge(node: RealNode) -> None:
    """The node's bridge with its gateway address, made before any pod so the kubelet can bind
    its InternalIP there (the CNI bridge plugin adopts an existing bridge)."""
    if _sh(["ip", "link", "show", node.bridge], check=False).returncode != 0:
        _sh(["ip", "link", "add", node.bridge, "type", "bridge"])
    addrs = _sh(["ip", "-4", "-o", "addr", "show", "dev", node.bridge]).stdout
    if f" {node.gateway}/" not in addrs:
        _sh(["ip", "addr", "add", f"{node.gateway}/24", "dev", node.bridge])
    _sh(["ip", "link", "set", node.bridge, "up"])


def _prepare_cgroups(node: RealNode) -> None:
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


def _enable_forwarding() -> None:
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


def import_image(state_dir: Path, archive: Path) -> None:
    """Import an OCI/Docker image archive into every real node's containerd (CRI namespace)."""
    state = RealState.load(real_dir(state_dir))
    if state is None or not state.nodes:
        raise RealNodeError(f"no real nodes in {state_dir}")
    for node in state.nodes:
        _sh(
            ["ctr", "--address", str(node.socket), "-n", "k8s.io", "images", "import", str(archive)]
        )


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


def _start_containerd(state: RealState, node: RealNode, cni_bin: str, logs: Path) -> None:
    conf = node.base / "containerd.toml"
    (node.base / "net.d").mkdir(parents=True, exist_ok=True)
    (node.base / "net.d" / "10-torchyard.conflist").write_text(json.dumps(cni_conflist(node)))
    pause = pause_ref(node_versions()["PAUSE_VERSION"])
    conf.write_text(containerd_config(node, cni_bin_dir=cni_bin, pause_image=pause))
    p = _launch(state, f"containerd-{node.name}", ["containerd", f"--config={conf}"], logs)
    version = ["ctr", "--address", str(node.socket), "version"]
    _wait(p, "socket answers", lambda: _sh(version, check=False).returncode == 0, 60)
    _sh(
        [
            "ctr",
            "--address",
            str(node.socket),
            "-n",
            "k8s.io",
            "images",
            "import",
            str(pause_archive()),
        ]
    )


def _start_kubelet(
    state: RealState, node: RealNode, server: str, pki: Path, taint: bool, logs: Path
) -> None:
    kc = _write_kubeconfig(
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
        f"--node-labels={REAL_NODE_LABEL}=true",
        "--v=1",
    ]
    p = _launch(state, f"kubelet-{node.name}", argv, logs)
    url = f"http://127.0.0.1:{node.healthz_port}/healthz"
    _wait(p, "healthz", lambda: _http_ok(url), 120)


def _http_ok(url: str) -> bool:
    import httpx

    return httpx.get(url, timeout=2.0).status_code == 200


def _start_coredns(state: RealState, server: str, pki: Path, api: Any, logs: Path) -> None:
    from kubernetes import client

    rbac: Any = client.RbacAuthorizationV1Api(api)
    role, binding = coredns_rbac(COREDNS_USER)
    with contextlib.suppress(client.ApiException):  # 409: kept from an earlier up
        rbac.create_cluster_role(role)
    with contextlib.suppress(client.ApiException):
        rbac.create_cluster_role_binding(binding)
    kc = _write_kubeconfig(state.base / "coredns.kubeconfig", server, pki, "coredns", COREDNS_USER)
    health, ready = procs.free_ports(2)
    conf = state.base / "Corefile"
    bind = state.nodes[0].gateway
    conf.write_text(corefile(kubeconfig=kc, bind_ip=bind, health_port=health, ready_port=ready))
    p = _launch(state, "coredns", [str(node_bin_dir() / "coredns"), "-conf", str(conf)], logs)
    _wait(p, "ready", lambda: _http_ok(f"http://127.0.0.1:{ready}/ready"), 120)


def _start_kube_proxy(state: RealState, server: str, pki: Path, logs: Path) -> None:
    kc = _write_kubeconfig(
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


def _wait_nodes(api: Any, names: list[str], gpus: int, timeout: float) -> None:
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
        return build_s
    teardown(cluster.state_dir)
    _claim_host(cluster.state_dir)
    pki = cluster.state_dir / "pki"
    if not (pki / f"{KUBELET_CLIENT_STEM}.crt").is_file():
        # A cluster started before real nodes existed: logs/exec through the API server will be
        # refused (it has no kubelet client certificate); everything else works.
        apiserver_flags(pki)
    state = RealState(base=base, run=_run_dir(cluster.state_dir))
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
    _enable_forwarding()
    for node in state.nodes:
        node.base.mkdir(parents=True, exist_ok=True)
        _prepare_bridge(node)
        _prepare_cgroups(node)
        _start_containerd(state, node, cni_bin, logs)
        _start_kubelet(state, node, cluster.server, pki, taint, logs)
    api = cluster.api_client()
    try:
        _wait_nodes(api, [n.name for n in state.nodes], gpus, timeout)
        _start_kube_proxy(state, cluster.server, pki, logs)
        _start_coredns(state, cluster.server, pki, api, logs)
    finally:
        api.close()


def nodes(state_dir: Path) -> list[str]:
    state = RealState.load(real_dir(state_dir))
    return [] if state is None else [n.name for n in state.nodes]


# --- teardown ---------------------------------------------------------------------------------


def _drain(state_dir: Path, state: RealState, timeout: float) -> None:
    """Delete the pods bound to the real nodes and give the kubelets ``timeout`` seconds to tear
    them down (CNI DEL, netns, mounts) the clean way."""
    from torchyard_devcluster import cluster as cluster_mod

    c = cluster_mod.current(state_dir=state_dir)
    kubelets = [p for p in state.processes if p.name.startswith("kubelet-")]
    if c is None or not kubelets or not all(procs.alive(p) for p in kubelets):
        return
    from kubernetes import client

    api = c.api_client()
    try:
        core: Any = client.CoreV1Api(api)
        names = {n.name for n in state.nodes}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pods = [
                p for p in core.list_pod_for_all_namespaces().items if p.spec.node_name in names
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
        procs.stop(p, grace=15.0)
    proxy = node_bin_dir() / "kube-proxy"
    if proxy.is_file():
        _sh([str(proxy), "--cleanup"], check=False)
    for node in state.nodes:
        realclean.kill_node_processes(node)
        realclean.unmount_under(node.base)
        realclean.remove_container_log_links(node.base / "pod-logs")
    realclean.delete_pod_netns()
    for node in state.nodes:
        realclean.delete_link(node.bridge)
        realclean.remove_cgroups(node.cgroup_root)
    realclean.clean_iptables()
    left = realclean.leftovers(state.nodes)
    if not any(line.startswith("mount ") for line in left):
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(state.run, ignore_errors=True)
    _release_host(state_dir)
    return left
