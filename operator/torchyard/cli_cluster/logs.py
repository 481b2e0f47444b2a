"""`torchyard logs`: one worker's log, live from its pod while the pod exists, else from the
job's log archive (``<output store>/.logs/<ns>/<job>/attempt-<n>/rank-<r>.log``, written by
the worker itself as it runs: :mod:`torchyard.api.logarchive`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from torchyard import logarchive
from torchyard.api.contract import DEFAULT_PVC_ROOT, WORKER_CONTAINER, Annotation
from torchyard.cli_cluster.describe import KindOpt, find, worker_pods
from torchyard.cli_cluster.kube import (
    ContextOpt,
    Kube,
    KubeconfigOpt,
    NamespaceOpt,
    api_error_message,
    connect,
    err_usage,
    fail,
)

PvcRootOpt = Annotated[
    Path,
    typer.Option(
        "--pvc-root",
        help="Where pvc:// claims are mounted on this machine (pvc://<claim>/x is "
        "<root>/<claim>/x), to read a pvc:// log archive; the workers' own mount point by "
        "default (a pod or notebook that mounts the claims there).",
    ),
]


def _write(data: bytes, tail: int | None) -> None:
    if tail is not None:
        data = b"".join(data.splitlines(keepends=True)[-tail:]) if tail > 0 else b""
    sys.stdout.buffer.write(data)
    sys.stdout.flush()


def _attempt_of(pod: Any) -> int | None:
    raw = (pod.metadata.annotations or {}).get(Annotation.RESTART_COUNT)
    return int(raw) if raw is not None and raw.isdigit() else None


def _from_archive(
    where: tuple[str | None, Path | None], name: str, rank: int, attempt: int | None
) -> bytes:
    uri, root = where
    gone = f"no pod of rank {rank} for {name} (not started, or cleaned up)"
    if uri is None or root is None:
        fail(
            f"{gone}, and the job has no log archive (its output store is an object store, "
            "or it sets no output)"
        )
    if not root.is_dir():
        fail(
            f"{gone}; its log archive {uri} is not reachable here ({root}): mount the store "
            "and pass --pvc-root, or run this where the claims are mounted"
        )
    if attempt is None:
        done = logarchive.attempts(root)
        attempt = done[-1] if done else 0
    data = logarchive.read_log(root, attempt, rank)
    if data is None:
        fail(
            f"no archived log of rank {rank}, attempt {attempt} in {uri} (archived attempts: "
            f"{logarchive.attempts(root) or 'none'})"
        )
    return data


def _live_pod(kube: Kube, name: str, plural: str, rank: int, attempt: int | None) -> Any | None:
    pods = worker_pods(kube, name, plural, rank)
    if attempt is not None:
        pods = [p for p in pods if _attempt_of(p) == attempt]
    return max(pods, key=lambda p: p.metadata.creation_timestamp) if pods else None


def _pick_previous(pods: list[Any]) -> tuple[Any, bool]:
    """(pod, ask for the container's previous instance) for --previous: the attempt before
    the newest while its pod is still there, else the newest pod's previous container."""
    pods = sorted(pods, key=lambda p: p.metadata.creation_timestamp)
    return (pods[-2], False) if len(pods) > 1 else (pods[-1], True)


def _stream(
    kube: Kube, pod: Any, rank: int, follow: bool, previous: bool, tail: int | None
) -> None:
    from kubernetes import client

    try:
        resp = kube.core.read_namespaced_pod_log(
            pod.metadata.name,
            kube.namespace,
            container=WORKER_CONTAINER,
            tail_lines=tail,
            follow=follow,
            previous=previous,
            _preload_content=False,
        )
    except client.ApiException as exc:
        # e.g. the container has not started, or the node's kubelet cannot be reached
        fail(
            f"no log of pod {pod.metadata.name} (rank {rank}, attempt "
            f"{_attempt_of(pod) if _attempt_of(pod) is not None else '?'}, "
            f"{pod.status.phase}): {api_error_message(exc)}"
        )
    try:
        # Chunks as they come: with -f the log streams until the container ends.
        for chunk in resp.stream(64 * 1024, decode_content=True):
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
    finally:
        resp.release_conn()


def _local(name: str, rank: int, attempt: int | None, tail: int | None) -> None:
    """A `torchyard run` job of this folder: its archive, else its own per-pod log.txt."""
    base = Path.cwd()
    root = logarchive.local_archive_root(base, name)
    data = None
    if root is not None:
        picked = attempt
        if picked is None:
            done = logarchive.attempts(root)
            picked = done[-1] if done else 0
        data = logarchive.read_log(root, picked, rank)
    if data is None:
        data = logarchive.local_pod_log(base, name, rank, attempt)
    if data is None:
        what = "" if attempt is None else f", attempt {attempt}"
        fail(f"no log of {name} rank {rank}{what} under {base / logarchive.LOCAL_RUNS_DIR}")
    _write(data, tail)


def logs(
    name: Annotated[str, typer.Argument(help="Job name.")],
    rank: Annotated[int, typer.Option("--rank", "-r", help="Worker rank (completion index).")] = 0,
    attempt: Annotated[
        int | None,
        typer.Option(
            "--attempt",
            "-a",
            help="Attempt (0 = the first run; each group restart adds one): live from its "
            "pod while it exists, else from the job's log archive. Default: the newest.",
            show_default=False,
            min=0,
        ),
    ] = None,
    kind: KindOpt = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Stream the log until the worker ends.")
    ] = False,
    previous: Annotated[
        bool,
        typer.Option(
            "--previous",
            "-p",
            help="The attempt before the newest (its pod, while it is kept; else the "
            "worker container's previous instance, as kubectl logs --previous).",
        ),
    ] = False,
    tail: Annotated[
        int | None, typer.Option("--tail", help="Last N lines only.", show_default=False)
    ] = None,
    local: Annotated[
        bool,
        typer.Option(
            "--local", help="A `torchyard run` job of this folder (./torchyard-runs): no cluster."
        ),
    ] = False,
    pvc_root: PvcRootOpt = Path(DEFAULT_PVC_ROOT),
    namespace: NamespaceOpt = None,
    context: ContextOpt = None,
    kubeconfig: KubeconfigOpt = None,
) -> None:
    """Print the log of one worker (rank 0 by default) of the newest attempt, or of
    --attempt N; from the job's log archive once the pod is gone."""
    if previous and attempt is not None:
        err_usage("--previous and --attempt exclude each other (--attempt N names one)")
    if local:
        _local(name, rank, attempt, tail)
        return
    kube = connect(kubeconfig, context, namespace)
    plural, obj = find(kube, name, kind)
    if previous:
        pods = worker_pods(kube, name, plural, rank)
        if not pods:
            fail(f"no pod of rank {rank} for {name} (not started, or cleaned up)")
        pod, previous_container = _pick_previous(pods)
        _stream(kube, pod, rank, follow, previous_container, tail)
        return
    pod = _live_pod(kube, name, plural, rank, attempt)
    if pod is not None:
        _stream(kube, pod, rank, follow, False, tail)
        return
    _write(_from_archive(logarchive.archive_of(obj, pvc_root), name, rank, attempt), tail)


__all__ = ["PvcRootOpt", "logs"]
