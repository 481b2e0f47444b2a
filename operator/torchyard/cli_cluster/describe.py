"""`torchyard describe`: one job's story — summary, progress, attempt history (from the job's
log archive where it is reachable), timeline, conditions, pods and events."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from torchyard import logarchive
from torchyard.api.constants import GROUP, VERSION
from torchyard.api.contract import DEFAULT_PVC_ROOT, Annotation, Label
from torchyard.cli_cluster.get import KIND_ALIASES, KIND_OF, Table, age
from torchyard.cli_cluster.kube import (
    ContextOpt,
    Kube,
    KubeconfigOpt,
    NamespaceOpt,
    connect,
    err_usage,
    fail,
)

KindOpt = Annotated[
    str | None, typer.Option("--kind", help="tj or compj (default: either).", show_default=False)
]


def find(kube: Kube, name: str, kind: str | None) -> tuple[str, dict[str, Any]]:
    """The job `name` in the command's namespace: (plural, object)."""
    from kubernetes import client

    if kind is not None and kind.lower() not in KIND_ALIASES:
        err_usage(f"unknown kind {kind!r}: use tj or compj")
    plurals = [KIND_ALIASES[kind.lower()]] if kind else list(KIND_OF)
    for plural in plurals:
        try:
            obj: dict[str, Any] = kube.custom.get_namespaced_custom_object(
                GROUP, VERSION, kube.namespace, plural, name
            )
            return plural, obj
        except client.ApiException as exc:
            if exc.status != 404:
                raise
    what = " or ".join(KIND_OF[p] for p in plurals)
    fail(f"no {what} {name!r} in namespace {kube.namespace}")


def _print(lines: list[str]) -> None:
    sys.stdout.write("".join(f"{line}\n" for line in lines))


def _section(title: str, header: list[str], rows: list[list[str]]) -> None:
    _print([f"{title}:", *(f"  {line}" for line in Table(header).lines(rows))] if rows else [])
    if not rows:
        _print([f"{title}: <none>"])


def _summary(plural: str, obj: dict[str, Any]) -> None:
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    policy = spec.get("runPolicy") or {}
    lines = [
        f"{KIND_OF[plural]} {meta.get('namespace')}/{meta['name']}   phase: "
        f"{status.get('phase', '-')}"
    ]
    if status.get("message"):
        lines.append(f"  {status['message']}")
    lines.append(
        f"  workers: {spec.get('workers', 1)}   restarts: {status.get('restarts', 0)}/"
        f"{policy.get('backoffLimit', 3)}   started: {status.get('startTime', '-')}   "
        f"finished: {status.get('completionTime', '-')}"
    )
    pods = status.get("workers") or {}
    if pods:
        lines.append(
            f"  pods: active {pods.get('active', 0)}  ready {pods.get('ready', 0)}  "
            f"succeeded {pods.get('succeeded', 0)}  failed {pods.get('failed', 0)}"
        )
    if status.get("model"):
        m = status["model"]
        lines.append(f"  model: {m.get('name')} v{m.get('version')} at {m.get('uri')}")
    _print(lines)


def _progress(obj: dict[str, Any]) -> None:
    progress = (obj.get("status") or {}).get("progress") or {}
    if progress:
        _print(["Progress: " + "  ".join(f"{k} {_short(v)}" for k, v in progress.items())])


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _exit_codes(codes: dict[int, int | None]) -> str:
    return " ".join(f"{r}:{'-' if c is None else c}" for r, c in sorted(codes.items())) or "-"


def _attempts(obj: dict[str, Any], pvc_root: Path) -> list[logarchive.AttemptRecord]:
    """The Attempts section, from the log archive: every attempt's start, end, the exit code
    of each rank's pod, the reason, its log size. Where the archive is not reachable from here,
    what the status knows (the number of attempts) and where the archive is."""
    status = obj.get("status") or {}
    uri, root = logarchive.archive_of(obj, pvc_root)
    history = logarchive.history(root) if root is not None else []
    if not history:
        where = f"archive {uri} not reachable here (--pvc-root)" if uri else "no log archive"
        started = status.get("restarts", 0) + 1 if status.get("startTime") else 0
        _print([f"Attempts: {started} started, restarts {status.get('restarts', 0)}; {where}"])
        return []
    _section(
        f"Attempts (log archive {uri})",
        ["ATTEMPT", "START", "END", "EXIT (RANK:CODE)", "REASON", "LOG BYTES"],
        [
            [
                str(a.attempt),
                a.start or "-",
                a.end or "-",
                _exit_codes(a.exit_codes),
                a.reason or "-",
                str(a.log_bytes),
            ]
            for a in history
        ],
    )
    return history


def _timeline(obj: dict[str, Any], history: list[logarchive.AttemptRecord]) -> None:
    """Conditions, attempt starts/ends and the last checkpoint and progress update, in time
    order: how the job got where it is."""
    status = obj.get("status") or {}
    rows = [
        (str(c["lastTransitionTime"]), f"{c['type']}={c['status']} {c.get('reason', '')}")
        for c in status.get("conditions") or []
        if c.get("lastTransitionTime")
    ]
    for a in history:
        rows += [(a.start, f"attempt {a.attempt} started")] if a.start else []
        rows += (
            [(a.end, f"attempt {a.attempt} ended: {_exit_codes(a.exit_codes)}")] if a.end else []
        )
    ckpt = status.get("lastCheckpoint") or {}
    if ckpt.get("time"):
        rows.append((str(ckpt["time"]), f"checkpoint at step {ckpt.get('step')}"))
    progress = status.get("progress") or {}
    updated = progress.get("lastUpdateTime") or progress.get("lastUpdatedTime")
    if updated:
        rows.append((str(updated), f"progress: step {progress.get('step')}"))
    for key, what in (("startTime", "workers started"), ("completionTime", "finished")):
        if status.get(key):
            rows.append((str(status[key]), what))
    _section(
        "Timeline",
        ["TIME", "WHAT"],
        [[t, w.strip()] for t, w in sorted(rows, key=lambda row: row[0])],
    )


def worker_pods(kube: Kube, name: str, plural: str, rank: int | None = None) -> list[Any]:
    selector = f"{Label.JOB_NAME}={name},{Label.JOB_KIND}={KIND_OF[plural].lower()}"
    if rank is not None:
        selector += f",{Annotation.COMPLETION_INDEX}={rank}"
    pods: list[Any] = kube.core.list_namespaced_pod(kube.namespace, label_selector=selector).items
    return pods


def _pod_row(pod: Any) -> list[str]:
    code = "-"
    for cs in pod.status.container_statuses or []:
        if cs.state and cs.state.terminated:
            code = str(cs.state.terminated.exit_code)
    return [
        pod.metadata.name,
        (pod.metadata.annotations or {}).get(Annotation.COMPLETION_INDEX, "-"),
        pod.status.phase or "-",
        pod.spec.node_name or "-",
        code,
    ]


def _event_time(event: Any) -> str:
    t = event.last_timestamp or event.event_time or event.metadata.creation_timestamp
    return t.isoformat() if t else ""


def describe(
    name: Annotated[str, typer.Argument(help="Job name.")],
    kind: KindOpt = None,
    pvc_root: Annotated[
        Path,
        typer.Option(
            "--pvc-root", help="Where pvc:// claims are mounted here (for the log archive)."
        ),
    ] = Path(DEFAULT_PVC_ROOT),
    namespace: NamespaceOpt = None,
    context: ContextOpt = None,
    kubeconfig: KubeconfigOpt = None,
) -> None:
    """Tell a job's story: spec summary, progress, attempts, timeline, conditions, pods and
    events."""
    kube = connect(kubeconfig, context, namespace)
    plural, obj = find(kube, name, kind)
    _summary(plural, obj)
    _progress(obj)
    history = _attempts(obj, pvc_root)
    _timeline(obj, history)
    conditions = (obj.get("status") or {}).get("conditions") or []
    _section(
        "Conditions",
        ["TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"],
        [
            [
                c["type"],
                c["status"],
                c.get("reason", ""),
                age(c.get("lastTransitionTime")),
                c.get("message", ""),
            ]
            for c in conditions
        ],
    )
    pods = sorted(worker_pods(kube, name, plural), key=lambda p: p.metadata.name)
    _section("Pods", ["NAME", "RANK", "PHASE", "NODE", "EXIT"], [_pod_row(p) for p in pods])
    uid = obj["metadata"]["uid"]
    events = kube.core.list_namespaced_event(
        kube.namespace, field_selector=f"involvedObject.name={name},involvedObject.uid={uid}"
    ).items
    _section(
        "Events",
        ["AGE", "TYPE", "REASON", "MESSAGE"],
        [
            [
                age(_event_time(e).replace("+00:00", "Z")),
                e.type or "",
                e.reason or "",
                " ".join(str(e.message or "").split()),
            ]
            for e in sorted(events, key=_event_time)
        ],
    )


__all__ = ["KindOpt", "describe", "find", "worker_pods"]
