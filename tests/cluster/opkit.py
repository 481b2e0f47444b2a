"""Helpers for the operator's cluster tests: run `torchyard operator` as a real process
against the dev cluster, submit jobs, read what it made. No mocks: everything goes through
the API server; waits poll with generous timeouts."""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

import torchyard_devcluster as devcluster
from torchyard.api.constants import GROUP, VERSION
from torchyard_devcluster import HOLD_ANNOTATION
from torchyard_devcluster.crds import apply_crds
from torchyard_devcluster.testing import Kube, poll

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "examples"
PLURAL = {"TrainingJob": "trainingjobs", "CompressionJob": "compressionjobs"}
WAIT = 180.0
TEST_STORE = "file:///var/lib/torchyard-test-store"
"""The operator's --default-storage in these tests: a cluster job needs a model store or it
waits (StorageNotConfigured, docs/storage.md); KWOK pods never write it, and a file:// store
needs no claim (a pvc:// one would need a bound PersistentVolume in every test namespace)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OperatorProcess:
    """`torchyard operator --namespace NS` as a child process (killable, restartable)."""

    default_storage: str | None = TEST_STORE
    """Its --default-storage (None: none, as tests/cluster/test_operator_storage.py wants)."""

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        log_dir: Path,
        extra_args: list[str] | None = None,
        name: str = "operator",
        env: dict[str, str] | None = None,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.log_dir = log_dir
        self.extra_args = list(extra_args or [])
        self.name = name  # log file prefix: several operators may share one log_dir
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = 0
        self.health_port = 0
        self.starts = 0

    def start(self) -> None:
        self.metrics_port = free_port()
        self.health_port = health = free_port()
        env = {**os.environ, "KUBECONFIG": str(self.kube.cluster.kubeconfig), **self.env}
        self.starts += 1
        log = open(self.log_dir / f"{self.name}-{self.starts}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torchyard.cli",
                "operator",
                "--namespace",
                self.namespace,
                "--metrics-port",
                str(self.metrics_port),
                "--health-port",
                str(health),
                "--default-image",
                "registry.invalid/torchyard/trainer:test",
                *(["--default-storage", self.default_storage] if self.default_storage else []),
                *self.extra_args,
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
        )
        log.close()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def metrics(self) -> str:
        def fetch() -> str | None:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
                ) as r:
                    return str(r.read().decode())
            except OSError:
                return None

        return poll(fetch, timeout=60, what="operator /metrics")

    def log_text(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(self.log_dir.glob(f"{self.name}-*.log"))
        )


@contextmanager
def running_operator(
    kube: Kube, namespace: str, tmp_path: Path, default_storage: str | None = TEST_STORE
) -> Iterator[OperatorProcess]:
    op = OperatorProcess(kube, namespace, tmp_path)
    op.default_storage = default_storage
    op.start()
    try:
        yield op
    finally:
        op.kill(signal.SIGTERM)
        if os.environ.get("TORCHYARD_SHOW_OPERATOR_LOG"):
            print(op.log_text())


# ---------------------------------------------------------------------- jobs


def example(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    return doc


def with_pod_annotations(manifest: dict[str, Any], annotations: dict[str, str]) -> dict[str, Any]:
    m = copy.deepcopy(manifest)
    pm = m["spec"].setdefault("podMetadata", {})
    pm.setdefault("annotations", {}).update(annotations)
    return m


def held(manifest: dict[str, Any]) -> dict[str, Any]:
    """Worker pods stay Running until the test releases them."""
    return with_pod_annotations(manifest, {HOLD_ANNOTATION: "true"})


def create(kube: Kube, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
    body = copy.deepcopy(manifest)
    body["metadata"].pop("namespace", None)
    out: dict[str, Any] = kube.custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL[body["kind"]], body
    )
    return out


def get(kube: Kube, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
    try:
        out: dict[str, Any] = kube.custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL[kind], name
        )
        return out
    except client.ApiException as e:
        if e.status == 404:
            return None
        raise


def patch_spec(kube: Kube, namespace: str, kind: str, name: str, spec: dict[str, Any]) -> None:
    kube.custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL[kind], name, {"spec": spec}
    )


def wait_phase(
    kube: Kube,
    namespace: str,
    kind: str,
    name: str,
    phase: str,
    timeout: float = WAIT,
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = get(kube, namespace, kind, name)
        if obj is not None and (obj.get("status") or {}).get("phase") == phase:
            return obj
        return None

    try:
        return poll(check, timeout=timeout, interval=0.25, what=f"{kind} {name} phase {phase}")
    except AssertionError as e:
        obj = get(kube, namespace, kind, name)
        raise AssertionError(f"{e}; status now: {(obj or {}).get('status')}") from None


def condition(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == ctype:
            return dict(c)
    raise AssertionError(f"no condition {ctype}: {(obj.get('status') or {}).get('conditions')}")


def worker_pods(kube: Kube, namespace: str, name: str, kind: str = "trainingjob") -> list[Any]:
    sel = f"torchyard.io/job-name={name},torchyard.io/job-kind={kind}"
    return list(kube.core.list_namespaced_pod(namespace, label_selector=sel).items)


def live_pods(kube: Kube, namespace: str, name: str, kind: str = "trainingjob") -> list[Any]:
    return [
        p
        for p in worker_pods(kube, namespace, name, kind)
        if p.metadata.deletion_timestamp is None and p.status.phase in ("Pending", "Running")
    ]


def wait_running_pods(
    kube: Kube, namespace: str, name: str, n: int, kind: str = "trainingjob"
) -> list[Any]:
    def check() -> list[Any] | None:
        pods = [p for p in live_pods(kube, namespace, name, kind) if p.status.phase == "Running"]
        return pods if len(pods) == n else None

    return poll(check, timeout=WAIT, interval=0.25, what=f"{n} running pods of {name}")


def release(kube: Kube, namespace: str, pods: list[Any]) -> None:
    for p in pods:
        try:
            kube.core.patch_namespaced_pod(
                p.metadata.name,
                namespace,
                {"metadata": {"annotations": {HOLD_ANNOTATION: None}}},
            )
        except client.ApiException as e:
            if e.status != 404:
                raise


def events(kube: Kube, namespace: str, name: str) -> list[Any]:
    items = kube.core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name}"
    ).items
    return [e for e in items if (e.source and e.source.component) == "torchyard-operator"]


def the_event(kube: Kube, namespace: str, name: str, reason: str) -> Any:
    """The one operator Event of ``reason`` for ``name``, once it is there (one, not a flood)."""
    (event,) = poll(
        lambda: [e for e in events(kube, namespace, name) if e.reason == reason],
        what=f"a {reason} event",
    )
    return event


def event_reasons(kube: Kube, namespace: str, name: str, *awaited: str) -> list[str]:
    """The reasons of the operator's Events for ``name``, once each of ``awaited`` is among them:
    Kopf posts Events from a background queue after the status patch the test saw."""
    if not awaited:
        return [e.reason for e in events(kube, namespace, name)]
    return poll(
        lambda: (
            (r := [e.reason for e in events(kube, namespace, name)])
            and all(a in r for a in awaited)
            and r
        ),
        timeout=60,
        interval=0.25,
        what=f"events {awaited} on {name}",
    )


def worker_jobs(kube: Kube, namespace: str) -> list[Any]:
    return list(
        kube.batch.list_namespaced_job(
            namespace, label_selector="app.kubernetes.io/managed-by=torchyard"
        ).items
    )


def env_of(container: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for e in container.env or []:
        if e.value_from is not None and e.value_from.field_ref is not None:
            out[e.name] = ("fieldRef", e.value_from.field_ref.field_path)
        else:
            out[e.name] = e.value
    return out


def settle(seconds: float) -> None:
    """Let the operator observe a state in which nothing is expected to change (used only to
    check that something does NOT happen; never to wait for something that should)."""
    time.sleep(seconds)


@contextmanager
def own_cluster(state_env: str, name: str, nodes: int = 2) -> Iterator[Kube]:
    """A dev cluster of the caller's own, CRDs applied, stopped after: for tests that kill
    control-plane components, which must not take the shared cluster down with them. Its state
    is in ``$state_env``, else ``~/.cache/torchyard/<name>``."""
    sdir = Path(os.environ.get(state_env) or Path.home() / ".cache" / "torchyard" / name)
    cluster = devcluster.up(nodes=nodes, state_dir=sdir)
    kube = Kube.connect(cluster)
    try:
        apply_crds(kube.api_client, REPO_ROOT / "crds")
        yield kube
    finally:
        kube.close()
        devcluster.down(state_dir=sdir)
