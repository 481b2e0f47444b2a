"""Cluster commands of the `torchyard` CLI: operator, get, describe, logs.

``get``/``describe``/``logs`` are a readable overview for people without kubectl plugins;
they use the current kubeconfig context (or ``--kubeconfig``) like kubectl does.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from torchyard.api.constants import (
    COMPRESSION_JOB_PLURAL,
    GROUP,
    TRAINING_JOB_PLURAL,
    VERSION,
)
from torchyard.api.contract import Annotation, Label

# Piped output (scripts, tests) gets wide lines instead of columns cut to 80 characters.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 250)
err = Console(stderr=True, highlight=False, soft_wrap=True)

KIND_ALIASES = {
    "tj": TRAINING_JOB_PLURAL,
    "trainingjob": TRAINING_JOB_PLURAL,
    "trainingjobs": TRAINING_JOB_PLURAL,
    "cj": COMPRESSION_JOB_PLURAL,
    "compressionjob": COMPRESSION_JOB_PLURAL,
    "compressionjobs": COMPRESSION_JOB_PLURAL,
}
KIND_OF = {TRAINING_JOB_PLURAL: "TrainingJob", COMPRESSION_JOB_PLURAL: "CompressionJob"}

KubeconfigOpt = Annotated[
    str | None, typer.Option("--kubeconfig", help="Kubeconfig file (default: $KUBECONFIG).")
]
NamespaceOpt = Annotated[
    str | None,
    typer.Option("--namespace", "-n", help="Namespace (default: the context's namespace)."),
]


def _clients(kubeconfig: str | None) -> tuple[Any, str]:
    from kubernetes import client, config

    try:
        config.load_kube_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        _, active = config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        namespace = str((active or {}).get("context", {}).get("namespace") or "default")
    except config.ConfigException:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
        namespace = "default"
    return client.ApiClient(), namespace


def _age(ts: str | None) -> str:
    if not ts:
        return "-"
    try:
        then = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return "-"
    secs = int((datetime.now(UTC) - then).total_seconds())
    if secs < 120:
        return f"{secs}s"
    if secs < 7200:
        return f"{secs // 60}m"
    if secs < 172800:
        return f"{secs // 3600}h"
    return f"{secs // 86400}d"


def operator(
    namespace: Annotated[
        list[str] | None,
        typer.Option("--namespace", "-n", help="Serve only this namespace (repeatable)."),
    ] = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="Serve every namespace (default).")
    ] = False,
    metrics_port: Annotated[
        int, typer.Option("--metrics-port", help="Port of /metrics (0: off).")
    ] = 8080,
    health_port: Annotated[
        int, typer.Option("--health-port", help="Port of the /healthz liveness probe (0: off).")
    ] = 8081,
    default_image: Annotated[
        str | None, typer.Option("--default-image", help="Worker image when a job sets none.")
    ] = None,
    default_storage: Annotated[
        str | None,
        typer.Option("--default-storage", help="Model store URI when a job sets no output."),
    ] = None,
    peering: Annotated[
        str | None,
        typer.Option(
            "--peering",
            help="Kopf peering object for active/standby replicas (needs Kopf's peering "
            "CRDs); without it the operator runs standalone: deploy one replica.",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Run the operator (Kopf) against the current cluster."""
    if namespace and all_namespaces:
        err.print("[red]✗[/] --namespace and --all-namespaces exclude each other")
        raise typer.Exit(code=2)
    from torchyard.controller import OperatorOptions, run_operator

    run_operator(
        OperatorOptions(
            namespaces=list(namespace or []),
            all_namespaces=not namespace,
            metrics_port=metrics_port or None,
            health_port=health_port or None,
            default_image=default_image,
            default_storage=default_storage,
            peering=peering,
            verbose=verbose,
        )
    )


def _list(api: Any, plural: str, namespace: str | None) -> list[dict[str, Any]]:
    from kubernetes import client

    custom: Any = client.CustomObjectsApi(api)
    if namespace is None:
        res = custom.list_cluster_custom_object(GROUP, VERSION, plural)
    else:
        res = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)
    items: list[dict[str, Any]] = res.get("items", [])
    return items


def get(
    kind: Annotated[
        str, typer.Argument(help="tj | cj | all (TrainingJobs, CompressionJobs or both).")
    ] = "all",
    namespace: NamespaceOpt = None,
    all_namespaces: Annotated[bool, typer.Option("--all-namespaces", "-A")] = False,
    kubeconfig: KubeconfigOpt = None,
) -> None:
    """List jobs: phase, workers, restarts, progress, model, age."""
    plurals = (
        [TRAINING_JOB_PLURAL, COMPRESSION_JOB_PLURAL]
        if kind == "all"
        else [KIND_ALIASES.get(kind.lower(), "")]
    )
    if "" in plurals:
        err.print(f"[red]✗[/] unknown kind {kind!r}: use tj, cj or all")
        raise typer.Exit(code=2)
    api, ctx_ns = _clients(kubeconfig)
    ns = None if all_namespaces else (namespace or ctx_ns)
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("KIND", "NAMESPACE", "NAME", "PHASE", "WORKERS", "RESTARTS", "PROGRESS", "MODEL"):
        table.add_column(col)
    table.add_column("AGE")
    for plural in plurals:
        for obj in _list(api, plural, ns):
            meta, spec, status = obj["metadata"], obj.get("spec", {}), obj.get("status", {})
            w = status.get("workers") or {}
            prog = status.get("progress") or {}
            progress = "-"
            if prog.get("step") is not None:
                progress = f"{prog.get('step')}/{prog.get('totalSteps', '?')}"
                if prog.get("accuracy") is not None:
                    progress += f" acc={prog['accuracy']:.3f}"
            model = status.get("model") or {}
            table.add_row(
                "tj" if plural == TRAINING_JOB_PLURAL else "cj",
                meta.get("namespace", ""),
                meta["name"],
                status.get("phase") or "-",
                f"{w.get('ready', 0)}/{spec.get('workers', 1)}",
                str(status.get("restarts", 0)),
                progress,
                f"{model['name']}:v{model['version']}" if model else "-",
                _age(meta.get("creationTimestamp")),
            )
    out.print(table)


def _find(api: Any, name: str, namespace: str, kind: str | None) -> tuple[str, dict[str, Any]]:
    from kubernetes import client

    custom: Any = client.CustomObjectsApi(api)
    plurals = (
        [KIND_ALIASES[kind.lower()]] if kind else [TRAINING_JOB_PLURAL, COMPRESSION_JOB_PLURAL]
    )
    for plural in plurals:
        try:
            obj: dict[str, Any] = custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name
            )
            return plural, obj
        except client.ApiException as exc:
            if exc.status != 404:
                raise
    err.print(f"[red]✗[/] no TrainingJob or CompressionJob {name!r} in namespace {namespace}")
    raise typer.Exit(code=1)


def describe(
    name: Annotated[str, typer.Argument(help="Job name.")],
    kind: Annotated[str | None, typer.Option("--kind", help="tj or cj (default: either).")] = None,
    namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None,
) -> None:
    """Tell a job's story: spec summary, status, conditions, children and events."""
    from kubernetes import client

    api, ctx_ns = _clients(kubeconfig)
    ns = namespace or ctx_ns
    plural, obj = _find(api, name, ns, kind)
    meta, spec, status = obj["metadata"], obj.get("spec", {}), obj.get("status", {})
    out.print(
        f"[bold]{KIND_OF[plural]}[/] {ns}/{name}   phase: [bold]{status.get('phase', '-')}[/]"
    )
    if status.get("message"):
        out.print(f"  {status['message']}")
    rp = spec.get("runPolicy") or {}
    out.print(
        f"  workers: {spec.get('workers', 1)}   restarts: {status.get('restarts', 0)}/"
        f"{rp.get('backoffLimit', 3)}   started: {status.get('startTime', '-')}   "
        f"finished: {status.get('completionTime', '-')}"
    )
    w = status.get("workers") or {}
    if w:
        out.print(
            f"  pods: active {w.get('active', 0)}  ready {w.get('ready', 0)}  "
            f"succeeded {w.get('succeeded', 0)}  failed {w.get('failed', 0)}"
        )
    if status.get("model"):
        m = status["model"]
        out.print(f"  model: {m.get('name')} v{m.get('version')} at {m.get('uri')}")
    conds = Table(title="Conditions", box=None, header_style="bold", title_justify="left")
    for col in ("TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"):
        conds.add_column(col)
    for c in status.get("conditions") or []:
        conds.add_row(
            c["type"],
            c["status"],
            c.get("reason", ""),
            _age(c.get("lastTransitionTime")),
            c.get("message", ""),
        )
    out.print(conds)
    core: Any = client.CoreV1Api(api)
    selector = f"{Label.JOB_NAME}={name},{Label.JOB_KIND}={KIND_OF[plural].lower()}"
    pods = core.list_namespaced_pod(ns, label_selector=selector).items
    if pods:
        pt = Table(title="Pods", box=None, header_style="bold", title_justify="left")
        for col in ("NAME", "RANK", "PHASE", "NODE", "EXIT"):
            pt.add_column(col)
        for p in sorted(pods, key=lambda p: p.metadata.name):
            ann = p.metadata.annotations or {}
            code = "-"
            for cs in p.status.container_statuses or []:
                if cs.state and cs.state.terminated:
                    code = str(cs.state.terminated.exit_code)
            pt.add_row(
                p.metadata.name,
                ann.get(Annotation.COMPLETION_INDEX, "-"),
                p.status.phase or "-",
                p.spec.node_name or "-",
                code,
            )
        out.print(pt)
    events = core.list_namespaced_event(
        ns, field_selector=f"involvedObject.name={name},involvedObject.uid={meta['uid']}"
    ).items
    et = Table(title="Events", box=None, header_style="bold", title_justify="left")
    for col in ("AGE", "TYPE", "REASON", "MESSAGE"):
        et.add_column(col)

    def when(e: Any) -> str:
        t = e.last_timestamp or e.event_time or e.metadata.creation_timestamp
        return t.isoformat() if t else ""

    for e in sorted(events, key=when):
        et.add_row(_age(when(e).replace("+00:00", "Z")), e.type or "", e.reason or "", e.message)
    out.print(et)


def logs(
    name: Annotated[str, typer.Argument(help="Job name.")],
    rank: Annotated[int, typer.Option("--rank", "-r", help="Worker rank (completion index).")] = 0,
    kind: Annotated[str | None, typer.Option("--kind", help="tj or cj (default: either).")] = None,
    namespace: NamespaceOpt = None,
    tail: Annotated[int | None, typer.Option("--tail", help="Last N lines only.")] = None,
    kubeconfig: KubeconfigOpt = None,
) -> None:
    """Print the log of one worker (rank 0 by default) of the newest attempt."""
    from kubernetes import client

    api, ctx_ns = _clients(kubeconfig)
    ns = namespace or ctx_ns
    plural, _ = _find(api, name, ns, kind)
    core: Any = client.CoreV1Api(api)
    selector = (
        f"{Label.JOB_NAME}={name},{Label.JOB_KIND}={KIND_OF[plural].lower()},"
        f"{Annotation.COMPLETION_INDEX}={rank}"
    )
    pods = core.list_namespaced_pod(ns, label_selector=selector).items
    if not pods:
        err.print(f"[red]✗[/] no pod of rank {rank} for {name} (not started, or cleaned up)")
        raise typer.Exit(code=1)
    pod = max(pods, key=lambda p: p.metadata.creation_timestamp)
    try:
        text = core.read_namespaced_pod_log(
            pod.metadata.name, ns, container="worker", tail_lines=tail
        )
    except client.ApiException as exc:
        # e.g. the container has not started, or the node's kubelet cannot be reached
        attempt = (pod.metadata.annotations or {}).get(Annotation.RESTART_COUNT, "?")
        err.print(
            f"✗ no log of pod {pod.metadata.name} (rank {rank}, attempt {attempt}, "
            f"{pod.status.phase}): {_api_message(exc)}",
            markup=False,
            style="red",
        )
        raise typer.Exit(code=1) from None
    typer.echo(text, nl=False)


def _api_message(exc: Any) -> str:
    import json

    try:
        return str(json.loads(str(exc.body)).get("message"))
    except (TypeError, ValueError, AttributeError):
        return f"{exc.status} {exc.reason}"


def register(app: typer.Typer) -> None:
    """Add the cluster commands to the `torchyard` CLI."""
    app.command()(operator)
    app.command()(get)
    app.command()(describe)
    app.command()(logs)


__all__ = ["describe", "get", "logs", "operator", "register"]
