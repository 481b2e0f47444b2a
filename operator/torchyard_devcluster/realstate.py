"""The real nodes' recorded state, pinned versions, binaries, host checks and the host lock
(one cluster per machine has real nodes: iptables chains are global). See
:mod:`torchyard_devcluster.realnode`."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from torchyard_devcluster import build, paths, procs
from torchyard_devcluster.realconfig import RealNode

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


def run_dir(state_dir: Path) -> Path:
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:10]
    return Path("/run/torchyard") / digest


def sh(argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PATH=ENV_PATH + ":" + os.environ.get("PATH", ""))
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False)
    if check and done.returncode != 0:
        raise RealNodeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


# --- host lock: one real-node host per machine (iptables chains are global) -------------------


def claim_host(state_dir: Path) -> None:
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


def release_host(state_dir: Path) -> None:
    with contextlib.suppress(OSError), HOST_LOCK.open("r+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        if fh.read().strip() == str(state_dir):
            HOST_LOCK.unlink()  # while holding it: the next claim makes a fresh one
