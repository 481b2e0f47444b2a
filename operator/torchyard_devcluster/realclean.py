"""Leave nothing behind: the sweeps ``dev-cluster down`` runs after stopping a real node.

A kubelet stopped cleanly has already torn its pods down (CNI DEL, sandbox netns removed);
these sweeps are for everything else - a crashed node, a killed test run: container processes
left in the node's cgroups, containerd shims, rootfs/sandbox mounts, CNI network namespaces,
the bridges, iptables chains and rules, cgroup folders, ``/var/log/containers`` links.

Ownership of global state: the machine has one real-node host at a time (a host lock in
:mod:`torchyard_devcluster.realnode`), and it owns the ``KUBE-*`` and ``CNI-*`` iptables chains
(Docker uses neither), as ``kube-proxy --cleanup`` assumes too.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from torchyard_devcluster.realconfig import CGROUP_V1_CONTROLLERS, CLUSTER_CIDR, RealNode

CGROUP_FS = Path("/sys/fs/cgroup")
OWNED_CHAIN_PREFIXES = ("KUBE-", "CNI-")


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)


# --- processes --------------------------------------------------------------------------------


def _pids_in_cgroup(root: str) -> set[int]:
    """Every process in the node's cgroup subtree (any controller that lists it)."""
    pids: set[int] = set()
    for ctrl in ("pids", "memory", "cpu"):
        base = CGROUP_FS / ctrl / root.lstrip("/")
        if not base.is_dir():
            continue
        for procs_file in base.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(p) for p in procs_file.read_text().split())
    return pids


def _shims_of(socket: Path) -> set[int]:
    """containerd shims started by the containerd listening on ``socket``."""
    out: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"containerd-shim-runc-v2") and str(socket).encode() in argv:
            out.add(int(entry.name))
    return out


def kill_node_processes(node: RealNode) -> int:
    """SIGKILL the node's container processes (by cgroup) and its shims; returns how many."""
    victims = _pids_in_cgroup(node.cgroup_root) | _shims_of(node.socket)
    victims.discard(os.getpid())
    for pid in victims:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while victims and time.monotonic() < deadline:
        victims = {p for p in victims if Path(f"/proc/{p}").exists()}
        time.sleep(0.05)
    return len(victims)


# --- mounts, netns, links, cgroups ------------------------------------------------------------


def _unescape(field: str) -> str:
    """/proc/self/mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def mounts_under(prefix: Path, mountinfo: str | None = None) -> list[str]:
    """Mount points at or below ``prefix``, deepest first (the order to unmount them)."""
    text = mountinfo if mountinfo is not None else Path("/proc/self/mountinfo").read_text()
    root = str(prefix).rstrip("/")
    points = set()
    for line in text.splitlines():
        fields = line.split()
        point = _unescape(fields[4]) if len(fields) > 4 else ""
        if point == root or point.startswith(root + "/"):
            points.add(point)
    return sorted(points, key=lambda p: (p.count("/"), p), reverse=True)


def unmount_under(prefix: Path) -> list[str]:
    """Unmount everything below ``prefix`` (lazily when busy); returns what is still mounted."""
    for point in mounts_under(prefix):
        if _run(["umount", point]).returncode != 0:
            _run(["umount", "--lazy", point])
    return mounts_under(prefix)


def _in_cluster_cidr(text: str) -> bool:
    net = ipaddress.ip_network(CLUSTER_CIDR)
    for word in text.split():
        with contextlib.suppress(ValueError):
            if ipaddress.ip_interface(word).ip in net:
                return True
    return False


def delete_pod_netns() -> list[str]:
    """Delete the network namespaces whose interfaces hold a pod address of the cluster."""
    netns_dir = Path("/run/netns")
    deleted: list[str] = []
    for ns in sorted(netns_dir.iterdir()) if netns_dir.is_dir() else []:
        addrs = _run(["ip", "-n", ns.name, "-4", "-o", "addr", "show"]).stdout
        if _in_cluster_cidr(addrs) and _run(["ip", "netns", "del", ns.name]).returncode == 0:
            deleted.append(ns.name)
    return deleted


def delete_link(name: str) -> None:
    if _run(["ip", "link", "show", name]).returncode == 0:
        _run(["ip", "link", "del", name])


def _hierarchies() -> list[str]:
    """Names of the mounted cgroup hierarchies under /sys/fs/cgroup (cpu, memory, unified…)."""
    if not CGROUP_FS.is_dir():
        return list(CGROUP_V1_CONTROLLERS)
    return sorted(d.name for d in CGROUP_FS.iterdir() if d.is_dir() and not d.is_symlink())


def remove_cgroups(root: str) -> None:
    """rmdir the node's cgroup folders, children first, in every mounted hierarchy (the v1
    controllers and the hybrid ``unified`` v2 one, where runc also makes them)."""
    for ctrl in _hierarchies():
        base = CGROUP_FS / ctrl / root.lstrip("/")
        if not base.is_dir():
            continue
        for d in sorted(
            (p for p in base.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
        ):
            with contextlib.suppress(OSError):
                d.rmdir()
        with contextlib.suppress(OSError):
            base.rmdir()


def remove_container_log_links(pod_logs: Path) -> int:
    """The kubelet links ``/var/log/containers/*.log`` into its pod log folder."""
    removed = 0
    links = Path("/var/log/containers")
    for link in links.iterdir() if links.is_dir() else []:
        with contextlib.suppress(OSError):
            if link.is_symlink() and os.readlink(link).startswith(str(pod_logs)):
                link.unlink()
                removed += 1
    _rmdir_empty(links)  # the kubelet made it; it makes it again when needed
    return removed


# --- iptables ---------------------------------------------------------------------------------


def _owned(chain: str) -> bool:
    return chain.startswith(OWNED_CHAIN_PREFIXES)


def plan_iptables_cleanup(rules: str) -> tuple[list[list[str]], list[str]]:
    """From ``iptables -S`` output of one table: the rule deletions (argv after ``-t T``) for
    rules in other chains that jump to an owned chain, and the owned chains to flush+delete."""
    deletions: list[list[str]] = []
    owned: list[str] = []
    for line in rules.splitlines():
        words = shlex.split(line)
        if len(words) >= 2 and words[0] == "-N" and _owned(words[1]):
            owned.append(words[1])
        elif len(words) >= 2 and words[0] == "-A" and not _owned(words[1]):
            target = words[words.index("-j") + 1] if "-j" in words[:-1] else ""
            if _owned(target):
                deletions.append(["-D", *words[1:]])
    return deletions, owned


def clean_iptables(binaries: Iterable[str] = ("iptables", "ip6tables")) -> list[str]:
    """Remove the owned chains and every jump to them; returns what was removed."""
    removed: list[str] = []
    for binary in binaries:
        for table in ("nat", "filter", "mangle"):
            listing = _run([binary, "-w", "-t", table, "-S"])
            if listing.returncode != 0:
                continue
            deletions, owned = plan_iptables_cleanup(listing.stdout)
            for rule in deletions:
                _run([binary, "-w", "-t", table, *rule])
            for chain in owned:
                _run([binary, "-w", "-t", table, "-F", chain])
            for chain in owned:
                if _run([binary, "-w", "-t", table, "-X", chain]).returncode == 0:
                    removed.append(f"{binary} -t {table} {chain}")
    return removed


def leftovers(nodes: Iterable[RealNode]) -> list[str]:
    """What of the real nodes is still on the machine (empty when fully clean)."""
    out: list[str] = []
    nodes_list = list(nodes)
    for node in nodes_list:
        out += [f"mount {m}" for m in mounts_under(node.base)]
        out += [f"process {p}" for p in _pids_in_cgroup(node.cgroup_root) | _shims_of(node.socket)]
        if _run(["ip", "link", "show", node.bridge]).returncode == 0:
            out.append(f"link {node.bridge}")
        out += [
            f"cgroup {ctrl}{node.cgroup_root}"
            for ctrl in _hierarchies()
            if (CGROUP_FS / ctrl / node.cgroup_root.lstrip("/")).exists()
        ]
    for table in ("nat", "filter"):
        _, owned = plan_iptables_cleanup(_run(["iptables", "-w", "-t", table, "-S"]).stdout)
        out += [f"iptables -t {table} chain {c}" for c in owned]
    for node in nodes_list:
        results = CNI_RESULTS.glob(f"{node.network}-*") if CNI_RESULTS.is_dir() else []
        out += [f"file {r}" for r in results]
    if (KUBELET_FIXED_DIR / "device-plugins" / "kubelet.sock").exists():
        out.append(f"file {KUBELET_FIXED_DIR / 'device-plugins' / 'kubelet.sock'}")
    netns_dir = Path("/run/netns")
    for ns in netns_dir.iterdir() if netns_dir.is_dir() else []:
        if _in_cluster_cidr(_run(["ip", "-n", ns.name, "-4", "-o", "addr", "show"]).stdout):
            out.append(f"netns {ns.name}")
    return out


# --- files outside the state folder -----------------------------------------------------------

CONTAINERD_RUN = Path("/run/containerd")
CNI_RESULTS = Path("/var/lib/cni/results")
KUBELET_FIXED_DIR = Path("/var/lib/kubelet")


def shim_socket(containerd_socket: Path, namespace: str, task_id: str) -> Path:
    """Where containerd 1.6 puts a shim's socket: ``/run/containerd/s/<sha256(address/ns/id)>``
    whatever the instance's state folder (runtime/v2/shim.SocketAddress)."""
    digest = hashlib.sha256(f"{containerd_socket}/{namespace}/{task_id}".encode()).hexdigest()
    return CONTAINERD_RUN / "s" / digest


def _task_ids(node: RealNode) -> list[str]:
    tasks = node.base / "containerd" / "state" / "io.containerd.runtime.v2.task" / "k8s.io"
    return [d.name for d in tasks.iterdir()] if tasks.is_dir() else []


def _rmdir_empty(*dirs: Path) -> None:
    for d in dirs:
        with contextlib.suppress(OSError):
            d.rmdir()


def remove_host_files(node: RealNode) -> None:
    """What the node's kubelet, containerd and CNI write at fixed paths: shim sockets, libcni's
    result cache, the kubelet's device-plugin socket; their folders go when left empty."""
    for task in _task_ids(node):
        shim_socket(node.socket, "k8s.io", task).unlink(missing_ok=True)
    prefix = f"{node.network}-"
    for result in CNI_RESULTS.glob(f"{prefix}*") if CNI_RESULTS.is_dir() else []:
        container = result.name[len(prefix) :].rsplit("-", 1)[0]
        (CNI_RESULTS / f"cni-loopback-{container}-lo").unlink(missing_ok=True)
        result.unlink(missing_ok=True)
    (KUBELET_FIXED_DIR / "device-plugins" / "kubelet.sock").unlink(missing_ok=True)
    (KUBELET_FIXED_DIR / "device-plugins" / "DEPRECATION").unlink(missing_ok=True)
    _rmdir_empty(
        CONTAINERD_RUN / "s",
        CONTAINERD_RUN / "runc" / "k8s.io",
        CONTAINERD_RUN / "runc",
        CONTAINERD_RUN,
        CNI_RESULTS,
        CNI_RESULTS.parent,
        KUBELET_FIXED_DIR / "device-plugins",
        KUBELET_FIXED_DIR,
    )
