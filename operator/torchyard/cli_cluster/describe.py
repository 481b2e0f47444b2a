"""`torchyard describe` and `torchyard logs`: one job's story, one worker's log."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from torchyard.api.constants import GROUP, VERSION
from torchyard.api.contract import Annotation, Label
from torchyard.cli_cluster.get import KIND_ALIASES, KIND_OF, Table, age
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


def _worker_pods(kube: Kube, name: str, plural: str, rank: int | None = None) -> list[Any]:
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
    namespace: NamespaceOpt = None,
    context: ContextOpt = None,
    kubeconfig: KubeconfigOpt = None,
) -> None:
    """Tell a job's story: spec summary, status, conditions, pods and events."""
    kube = connect(kubeconfig, context, namespace)
    plural, obj = find(kube, name, kind)
    _summary(plural, obj)
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
    pods = sorted(_worker_pods(kube, name, plural), key=lambda p: p.metadata.name)
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


def _pick_pod(pods: list[Any], previous: bool) -> tuple[Any, bool]:
    """(pod, ask for the container's previous instance): the newest attempt's pod; with
    --previous the attempt before it while its pod is still there, else the newest pod's
    previous container (kubectl's --previous)."""
    pods = sorted(pods, key=lambda p: p.metadata.creation_timestamp)
    if not previous:
        return pods[-1], False
    if len(pods) > 1:
        return pods[-2], False
    return pods[-1], True


def logs(
    name: Annotated[str, typer.Argument(help="Job name.")],
    rank: Annotated[int, typer.Option("--rank", "-r", help="Worker rank (completion index).")] = 0,
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
    namespace: NamespaceOpt = None,
    context: ContextOpt = None,
    kubeconfig: KubeconfigOpt = None,
) -> None:
    """Print the log of one worker (rank 0 by default) of the newest attempt."""
    from kubernetes import client

    kube = connect(kubeconfig, context, namespace)
    plural, _ = find(kube, name, kind)
    pods = _worker_pods(kube, name, plural, rank)
    if not pods:
        fail(f"no pod of rank {rank} for {name} (not started, or cleaned up)")
    pod, previous_container = _pick_pod(pods, previous)
    try:
        resp = kube.core.read_namespaced_pod_log(
            pod.metadata.name,
            kube.namespace,
            container="worker",
            tail_lines=tail,
            follow=follow,
            previous=previous_container,
            _preload_content=False,
        )
    except client.ApiException as exc:
        # e.g. the container has not started, or the node's kubelet cannot be reached
        attempt = (pod.metadata.annotations or {}).get(Annotation.RESTART_COUNT, "?")
        fail(
            f"no log of pod {pod.metadata.name} (rank {rank}, attempt {attempt}, "
            f"{pod.status.phase}): {api_error_message(exc)}"
        )
    try:
        # Chunks as they come: with -f the log streams until the container ends.
        for chunk in resp.stream(64 * 1024, decode_content=True):
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
    finally:
        resp.release_conn()


__all__ = ["describe", "find", "logs"]
