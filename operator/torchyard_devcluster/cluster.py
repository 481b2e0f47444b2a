"""Start and stop the dev control plane: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and a KWOK controller, as plain processes on 127.0.0.1 (envtest-style).

State (certs, etcd data, kubeconfigs, ``state.json`` with pids and ports, ``logs/``) lives in
:func:`torchyard_devcluster.paths.state_dir`. ``up`` reuses a healthy running cluster, cleans a
crashed one and starts afresh; ``down`` stops exactly the recorded processes and removes the
state (the logs are kept in ``<state-dir>.last-logs/``). A lock file next to the state folder
serialises concurrent ``up``/``down`` calls.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from torchyard_devcluster import (
    apiserver,
    build,
    certs,
    componentargs,
    kubeconfig,
    paths,
    procs,
    realnode,
    stages,
)

SERVICE_CIDR = apiserver.SERVICE_CIDR
SERVICE_IP = apiserver.SERVICE_IP
CONTEXT = kubeconfig.CONTEXT
#: Order of start; ``down`` stops in reverse.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


class DevClusterError(RuntimeError):
    """The control plane could not be started; the message holds the failing log's tail."""


@dataclass
class ClusterState:
    state_dir: Path
    ports: dict[str, int]
    processes: list[procs.Proc] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    #: The API server is reachable from pods on real nodes (``apiserver.address_flags``).
    pod_network: bool = False

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    def save(self) -> None:
        data = {
            "ports": self.ports,
            "processes": [p.to_json() for p in self.processes],
            "versions": self.versions,
            "created": self.created,
            "pod_network": self.pod_network,
            "kubeconfig": str(self.kubeconfig),
            "server": self.server,
        }
        tmp = self.state_dir / "state.json.tmp"
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.state_dir / "state.json")

    @classmethod
    def load(cls, state_dir: Path) -> ClusterState | None:
        try:
            data = json.loads((state_dir / "state.json").read_text())
        except (OSError, ValueError):
            return None
        return cls(
            state_dir=state_dir,
            ports={str(k): int(v) for k, v in data.get("ports", {}).items()},
            processes=[procs.Proc.from_json(p) for p in data.get("processes", [])],
            versions={str(k): str(v) for k, v in data.get("versions", {}).items()},
            created=float(data.get("created", 0.0)),
            pod_network=bool(data.get("pod_network", False)),
        )


@dataclass(frozen=True)
class DevCluster:
    """A running dev cluster. ``started`` is True when this ``up`` call started it."""

    state_dir: Path
    kubeconfig: Path
    server: str
    started: bool
    #: Pods on real nodes reach the API server through the ``kubernetes`` Service.
    pod_network: bool = False

    def api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` for the admin user (pool sized for scale tests)."""
        from kubernetes import client

        pki = self.state_dir / "pki"
        cfg = client.Configuration()
        cfg.host = self.server
        cfg.ssl_ca_cert = str(pki / "ca.crt")
        cfg.cert_file = str(pki / "admin.crt")
        cfg.key_file = str(pki / "admin.key")
        cfg.verify_ssl = True
        cfg.connection_pool_maxsize = 32
        return client.ApiClient(configuration=cfg)

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig))
        return subprocess.run(
            [str(paths.binary("kubectl")), *args],
            env=env,
            check=check,
            text=True,
            capture_output=True,
            input=input,
            timeout=120,
        )


# --- locking -------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    state_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = state_dir.parent / f".{state_dir.name}.lock"
    with lock.open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# --- health --------------------------------------------------------------------------------


def _admin_tls(state_dir: Path) -> ssl.SSLContext:
    """TLS context trusting the cluster CA and presenting the admin client certificate."""
    d = state_dir / "pki"
    ctx = ssl.create_default_context(cafile=str(d / "ca.crt"))
    ctx.load_cert_chain(str(d / "admin.crt"), str(d / "admin.key"))
    return ctx


def _apiserver_ready(state: ClusterState, timeout: float = 5.0) -> bool:
    try:
        with httpx.Client(verify=_admin_tls(state.state_dir), timeout=timeout) as c:
            return c.get(f"{state.server}/readyz").status_code == 200
    except (httpx.HTTPError, OSError):
        return False


def healthy(state: ClusterState, *, wait: float = 0.0) -> bool:
    """Every recorded process runs and the apiserver answers /readyz.

    With ``wait`` > 0, a slow /readyz (a loaded machine) is retried for that long as long as
    every process is alive, so a busy but healthy cluster is never mistaken for a crashed one.
    """
    if not set(COMPONENTS) <= {p.name for p in state.processes}:
        return False
    deadline = time.monotonic() + wait
    while True:
        if not all(procs.alive(p) for p in state.processes):
            return False
        if _apiserver_ready(state, timeout=10.0):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(1.0)


def wait_http(
    proc: procs.Proc, url: str, *, timeout: float, ok: Any = None, **client_kw: Any
) -> None:
    """Poll ``url`` until it answers 200 (and ``ok(response)``), failing at once, with the log's
    tail, if ``proc`` exits meanwhile (every local process the dev cluster starts uses this)."""
    deadline = time.monotonic() + timeout
    last = ""
    with httpx.Client(timeout=5.0, **client_kw) as c:
        while time.monotonic() < deadline:
            if not procs.alive(proc):
                raise DevClusterError(
                    f"{proc.name} exited during start-up; last log lines ({proc.log}):\n"
                    + procs.tail(proc.log)
                )
            try:
                r = c.get(url)
                if r.status_code == 200 and (ok is None or ok(r)):
                    return
                last = f"HTTP {r.status_code}: {r.text[:300]}"
            except (httpx.HTTPError, OSError) as e:
                last = repr(e)
            time.sleep(0.25)
    raise DevClusterError(
        f"{proc.name} not ready at {url} after {timeout:.0f}s ({last}); log tail ({proc.log}):\n"
        + procs.tail(proc.log)
    )


# --- up / down -----------------------------------------------------------------------------


MARKER = ".torchyard-dev-cluster"


def _check_ours(state_dir: Path) -> None:
    """Refuse to delete a folder that is not a dev-cluster state folder (a mistyped
    TORCHYARD_DEV_CLUSTER_DIR must never cost anyone their files)."""
    if not state_dir.exists() or (state_dir / MARKER).exists():
        return
    if (state_dir / "state.json").exists() or (state_dir / "pki" / "ca.crt").exists():
        return  # made before the marker existed
    if state_dir.is_dir() and not any(state_dir.iterdir()):
        return
    raise DevClusterError(
        f"{state_dir} exists but is not a dev-cluster state folder (no {MARKER}); "
        "remove it yourself or point TORCHYARD_DEV_CLUSTER_DIR elsewhere"
    )


def _cleanup(state_dir: Path, state: ClusterState | None) -> None:
    """Stop recorded processes (exactly those pids) and remove the state; keep the logs."""
    _check_ours(state_dir)
    realnode.teardown(state_dir)  # first: its pods' mounts live under state_dir
    if state is not None:
        for p in reversed(state.processes):
            procs.stop(p)
    logs = state_dir / "logs"
    if logs.is_dir():
        keep = state_dir.parent / f"{state_dir.name}.last-logs"
        shutil.rmtree(keep, ignore_errors=True)
        with contextlib.suppress(OSError):
            shutil.copytree(logs, keep)
    shutil.rmtree(state_dir, ignore_errors=True)


def _write_kubeconfigs(
    state_dir: Path, server: str, pki: certs.ClusterCerts
) -> tuple[Path, Path, Path]:
    """The admin's kubeconfig and the controller-manager's, scheduler's and kwok's (returned)."""
    admin_kc = state_dir / "kubeconfig"
    kubeconfig.write(admin_kc, server, pki.ca.cert, pki.admin, "torchyard-admin")
    cm_kc = state_dir / "controller-manager.kubeconfig"
    kubeconfig.write(
        cm_kc, server, pki.ca.cert, pki.controller_manager, "system:kube-controller-manager"
    )
    sched_kc = state_dir / "scheduler.kubeconfig"
    kubeconfig.write(sched_kc, server, pki.ca.cert, pki.scheduler, "system:kube-scheduler")
    kwok_kc = state_dir / "kwok.kubeconfig"
    kubeconfig.write(kwok_kc, server, pki.ca.cert, pki.kwok, "kwok-controller")
    return cm_kc, sched_kc, kwok_kc


def _new_state(state_dir: Path, pod_network: bool) -> tuple[ClusterState, certs.ClusterCerts]:
    """A fresh state folder: marker, log folder, certificates, free ports, saved state."""
    _check_ours(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    state_dir.chmod(0o700)
    (state_dir / MARKER).write_text("state of a torchyard dev cluster; removed by `down`\n")
    logs = state_dir / "logs"
    logs.mkdir(exist_ok=True)
    pki = certs.generate(
        state_dir / "pki",
        service_ip=SERVICE_IP,
        extra_ips=apiserver.serving_ips(pod_network=pod_network),
    )
    names = ("etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler", "kwok")
    ports = dict(zip(names, procs.free_ports(len(names)), strict=True))
    state = ClusterState(
        state_dir=state_dir, ports=ports, versions=paths.versions(), pod_network=pod_network
    )
    state.save()
    return state, pki


def _start(
    state_dir: Path,
    *,
    pod_run_ms: int,
    timeout: float,
    verbosity: int,
    pod_network: bool,
) -> ClusterState:
    state, pki = _new_state(state_dir, pod_network)
    ports = state.ports
    logs = state_dir / "logs"
    server = state.server
    bins = {b: str(paths.binary(b)) for b in COMPONENTS}

    def launch(name: str, argv: list[str]) -> procs.Proc:
        p = procs.start(name, argv, logs / f"{name}.log", cwd=state_dir)
        state.processes.append(p)
        state.save()
        return p

    # etcd -------------------------------------------------------------------------------
    etcd_url = f"http://127.0.0.1:{ports['etcd']}"
    etcd = launch(
        "etcd",
        componentargs.etcd_argv(
            bins["etcd"], state_dir / "etcd", ports["etcd"], ports["etcd-peer"]
        ),
    )
    wait_http(
        etcd,
        f"{etcd_url}/health",
        timeout=timeout,
        ok=lambda r: str(r.json().get("health")) == "true",
    )

    # kube-apiserver ---------------------------------------------------------------------
    api = launch(
        "kube-apiserver",
        apiserver.argv(
            bins["kube-apiserver"],
            state_dir=state_dir,
            pki=pki,
            port=ports["apiserver"],
            etcd_url=etcd_url,
            pod_network=pod_network,
            verbosity=verbosity,
        ),
    )
    wait_http(api, f"{server}/readyz", timeout=timeout, verify=_admin_tls(state_dir))

    cm_kc, sched_kc, kwok_kc = _write_kubeconfigs(state_dir, server, pki)

    # kube-controller-manager and kube-scheduler -----------------------------------------
    cm = launch(
        "kube-controller-manager",
        componentargs.controller_manager_argv(
            bins["kube-controller-manager"], cm_kc, ports["controller-manager"], pki, verbosity
        ),
    )
    sched_conf = state_dir / "scheduler-config.yaml"
    sched_conf.write_text(yaml.safe_dump(componentargs.scheduler_config(sched_kc), sort_keys=False))
    sched = launch(
        "kube-scheduler",
        componentargs.scheduler_argv(
            bins["kube-scheduler"], sched_conf, sched_kc, ports["scheduler"], verbosity
        ),
    )

    kwok_argv = _kwok_argv(bins["kwok"], state_dir, kwok_kc, ports, pod_run_ms, verbosity)
    kwok = launch("kwok", kwok_argv)

    _wait_healthy(ports, cm, sched, kwok, timeout)
    _wait_default_service_account(state, timeout=timeout)
    return state


def _kwok_argv(
    binary: str,
    state_dir: Path,
    kubeconfig: Path,
    ports: dict[str, int],
    pod_run_ms: int,
    verbosity: int,
) -> list[str]:
    """KWOK's command line, after writing its config (stages: how long a fake pod runs)."""
    conf = state_dir / "kwok.yaml"
    conf.write_text(
        stages.kwok_config(server_address=f"127.0.0.1:{ports['kwok']}", pod_run_ms=pod_run_ms)
    )
    level = componentargs.kwok_log_level(verbosity)
    return [binary, f"--kubeconfig={kubeconfig}", f"--config={conf}", f"--v={level}"]


def _wait_healthy(
    ports: dict[str, int], cm: procs.Proc, sched: procs.Proc, kwok: procs.Proc, timeout: float
) -> None:
    """The controller-manager, scheduler and kwok answer their health checks."""
    wait_http(
        cm,
        f"https://127.0.0.1:{ports['controller-manager']}/healthz",
        timeout=timeout,
        verify=False,
    )
    wait_http(
        sched, f"https://127.0.0.1:{ports['scheduler']}/healthz", timeout=timeout, verify=False
    )
    wait_http(kwok, f"http://127.0.0.1:{ports['kwok']}/healthz", timeout=timeout)


def _wait_default_service_account(state: ClusterState, *, timeout: float) -> None:
    """The ServiceAccount controller has made ``default/default``: controllers are working."""
    url = f"{state.server}/api/v1/namespaces/default/serviceaccounts/default"
    deadline = time.monotonic() + timeout
    with httpx.Client(verify=_admin_tls(state.state_dir), timeout=5.0) as c:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if c.get(url).status_code == 200:
                    return
            time.sleep(0.25)
    cm = next(p for p in state.processes if p.name == "kube-controller-manager")
    raise DevClusterError(
        "kube-controller-manager did not create default/default ServiceAccount in time; "
        f"log tail:\n{procs.tail(cm.log)}"
    )


def up(
    *,
    nodes: int = 4,
    gpus_per_node: int = 8,
    state_dir: Path | None = None,
    build_binaries: bool = True,
    pod_run_ms: int = 1000,
    timeout: float = 180.0,
    verbosity: int = 0,
    pod_network: bool = False,
) -> DevCluster:
    """Start the dev cluster, or reuse the healthy one already running (then a no-op but for
    creating missing nodes). A crashed previous run is cleaned up first. ``nodes`` fake GPU
    nodes (``gpus_per_node`` each) exist when this returns; ``nodes=0`` creates none.
    ``pod_network``: a new cluster's API server is reachable from real nodes' pods; a reused
    one keeps what it was started with (see ``DevCluster.pod_network``)."""
    from torchyard_devcluster import nodes as nodes_mod

    sdir = state_dir or paths.state_dir()
    if build_binaries:
        build.ensure_binaries()
    with _locked(sdir):
        state = ClusterState.load(sdir)
        started = False
        if state is not None and state.versions == paths.versions() and healthy(state, wait=60.0):
            pass  # reuse; a cluster of other pinned versions is replaced
        else:
            if state is not None or sdir.exists():
                _cleanup(sdir, state)
            try:
                state = _start(
                    sdir,
                    pod_run_ms=pod_run_ms,
                    timeout=timeout,
                    verbosity=verbosity,
                    pod_network=pod_network,
                )
            except BaseException:
                _cleanup(sdir, ClusterState.load(sdir))
                raise
            started = True
        cluster = DevCluster(
            sdir, state.kubeconfig, state.server, started, pod_network=state.pod_network
        )
        if nodes > 0:
            api = cluster.api_client()
            try:
                nodes_mod.create_nodes(api, n=nodes, gpus_per_node=gpus_per_node)
            finally:
                api.close()
        return cluster


def _users_dir(state_dir: Path) -> Path:
    return state_dir.parent / f".{state_dir.name}.users"


def register_user(state_dir: Path | None = None) -> Path:
    """Record this process as a user of the cluster (test sessions sharing one cluster)."""
    d = _users_dir(state_dir or paths.state_dir())
    d.mkdir(parents=True, exist_ok=True)
    st = procs.stat(os.getpid())
    mark = d / f"{os.getpid()}-{st[1] if st else 0}"
    mark.touch()
    return mark


def unregister_user(mark: Path) -> None:
    mark.unlink(missing_ok=True)


def other_users(state_dir: Path | None = None) -> list[int]:
    """Pids of other live processes registered as users (stale marks are removed)."""
    d = _users_dir(state_dir or paths.state_dir())
    out: list[int] = []
    for mark in d.glob("*-*") if d.is_dir() else []:
        pid_s, _, ticks_s = mark.name.partition("-")
        try:
            pid, ticks = int(pid_s), int(ticks_s)
        except ValueError:
            continue
        if pid == os.getpid():
            continue
        st = procs.stat(pid)
        if st is None or st[1] != ticks or st[0] in ("Z", "X"):
            mark.unlink(missing_ok=True)
            continue
        out.append(pid)
    return out


def down(*, state_dir: Path | None = None) -> bool:
    """Stop exactly the processes ``up`` recorded and remove the state. False if none ran."""
    sdir = state_dir or paths.state_dir()
    with _locked(sdir):
        state = ClusterState.load(sdir)
        if state is None and not sdir.exists():
            return False
        _cleanup(sdir, state)
        return state is not None


def current(*, state_dir: Path | None = None) -> DevCluster | None:
    """The healthy running cluster, or None."""
    sdir = state_dir or paths.state_dir()
    state = ClusterState.load(sdir)
    if state is None or not healthy(state):
        return None
    return DevCluster(sdir, state.kubeconfig, state.server, False, state.pod_network)


def status(*, state_dir: Path | None = None) -> dict[str, Any]:
    """A JSON-able report: per process pid/alive/log, ports, apiserver readiness."""
    sdir = state_dir or paths.state_dir()
    state = ClusterState.load(sdir)
    if state is None:
        return {"running": False, "state_dir": str(sdir)}
    procs_info = {
        p.name: {"pid": p.pid, "alive": procs.alive(p), "log": p.log} for p in state.processes
    }
    ready = _apiserver_ready(state)
    return {
        "running": ready and all(i["alive"] for i in procs_info.values()),
        "state_dir": str(sdir),
        "server": state.server,
        "kubeconfig": str(state.kubeconfig),
        "apiserver_ready": ready,
        "ports": state.ports,
        "processes": procs_info,
        "versions": state.versions,
        "pod_network": state.pod_network,
        "age_s": round(time.time() - state.created, 1),
    }
