"""`torchyard get`: jobs as a table (or wide, yaml, json), and their changes with ``-w``."""

from __future__ import annotations

import json
import queue
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
import yaml

from torchyard.api.constants import (
    COMPRESSION_JOB_KIND,
    COMPRESSION_JOB_PLURAL,
    GROUP,
    TRAINING_JOB_KIND,
    TRAINING_JOB_PLURAL,
    VERSION,
)
from torchyard.cli_cluster.kube import (
    ContextOpt,
    Kube,
    KubeconfigOpt,
    NamespaceOpt,
    connect,
    err_usage,
    fail,
)
from torchyard.crd import SHORT_NAMES

KIND_OF = {TRAINING_JOB_PLURAL: TRAINING_JOB_KIND, COMPRESSION_JOB_PLURAL: COMPRESSION_JOB_KIND}
SHORT_OF = {plural: SHORT_NAMES[kind][0] for plural, kind in KIND_OF.items()}
KIND_ALIASES = {
    alias: plural
    for plural, kind in KIND_OF.items()
    for alias in (
        *SHORT_NAMES[kind],
        kind.lower(),
        plural,
        f"{plural}.{GROUP}",
        f"{kind.lower()}.{GROUP}",
    )
}
# `cj`, the CompressionJob short name before it gave way to CronJob's (kubectl's built-in
# short names win there); within torchyard it names nothing else, so it keeps working here.
KIND_ALIASES["cj"] = COMPRESSION_JOB_PLURAL

OUTPUTS = ("wide", "yaml", "json")
COLUMNS = ("KIND", "NAMESPACE", "NAME", "PHASE", "WORKERS", "RESTARTS", "PROGRESS", "MODEL", "AGE")
WIDE_COLUMNS = ("STRATEGY", "QUEUE", "LOSS", "ACCURACY", "MESSAGE")
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


def plurals_of(kind: str) -> list[str]:
    """The plurals `kind` names: tj, compj (or cj), their long names, or all."""
    if kind == "all":
        return [TRAINING_JOB_PLURAL, COMPRESSION_JOB_PLURAL]
    plural = KIND_ALIASES.get(kind.lower())
    if plural is None:
        err_usage(f"unknown kind {kind!r}: use tj, compj or all")
    return [plural]


def age(ts: str | None) -> str:
    """kubectl's age: 59s, 5m, 3h, 2d."""
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


def _number(value: Any, fmt: str = "{:.4g}") -> str:
    return fmt.format(value) if isinstance(value, int | float) else "-"


def row(plural: str, obj: dict[str, Any], wide: bool) -> list[str]:
    """One table row of a job (the columns of COLUMNS, and of WIDE_COLUMNS when wide)."""
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    status = obj.get("status") or {}
    workers = status.get("workers") or {}
    prog = status.get("progress") or {}
    progress = "-"
    if prog.get("step") is not None:
        progress = f"{prog.get('step')}/{prog.get('totalSteps', '?')}"
        if isinstance(prog.get("accuracy"), int | float):
            progress += f" acc={prog['accuracy']:.3f}"
    model = status.get("model") or {}
    cells = [
        SHORT_OF[plural],
        str(meta.get("namespace", "")),
        str(meta.get("name", "")),
        str(status.get("phase") or "-"),
        f"{workers.get('ready', 0)}/{spec.get('workers', 1)}",
        str(status.get("restarts", 0)),
        progress,
        f"{model.get('name')}:v{model.get('version')}" if model else "-",
        age(meta.get("creationTimestamp")),
    ]
    if wide:
        if plural == TRAINING_JOB_PLURAL:
            how = str(spec.get("strategy") or "ddp")
        else:
            how = ">".join(next(iter(step), "?") for step in spec.get("steps") or [])
        queue_name = (spec.get("scheduling") or {}).get("queue") or (meta.get("labels") or {}).get(
            QUEUE_LABEL
        )
        cells += [
            how or "-",
            str(queue_name or "-"),
            _number(prog.get("loss")),
            _number(prog.get("accuracy"), "{:.3f}"),
            " ".join(str(status.get("message") or "-").split()),
        ]
    return cells


class Table:
    """kubectl's plain columns (three spaces apart), the header above the first rows; rows
    printed later (``-w``) keep the widths the first rows set, growing only where a cell is
    longer."""

    def __init__(self, header: list[str]) -> None:
        self.header = header
        self.widths = [len(h) for h in header]
        self.header_shown = False

    def lines(self, rows: list[list[str]]) -> list[str]:
        shown = rows if self.header_shown else [self.header, *rows]
        self.header_shown = True
        for cells in shown:
            self.widths = [max(w, len(c)) for w, c in zip(self.widths, cells, strict=True)]
        return [
            "   ".join(c.ljust(w) for c, w in zip(cells, self.widths, strict=True)).rstrip()
            for cells in shown
        ]


def _list(kube: Kube, plural: str, namespace: str | None) -> dict[str, Any]:
    if namespace is None:
        res: dict[str, Any] = kube.custom.list_cluster_custom_object(GROUP, VERSION, plural)
    else:
        res = kube.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)
    return res


def _get_named(kube: Kube, plural: str, namespace: str, names: list[str]) -> list[dict[str, Any]]:
    from kubernetes import client

    found = []
    for name in names:
        try:
            found.append(
                kube.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
            )
        except client.ApiException as exc:
            if exc.status == 404:
                fail(f'{plural}.{GROUP} "{name}" not found in namespace {namespace}')
            raise
    return found


def render(objs: list[dict[str, Any]], output: str, single: bool) -> str:
    """yaml/json of the objects: the object itself for one named object, else a v1 List."""
    doc: dict[str, Any] = (
        objs[0]
        if single
        else {
            "apiVersion": "v1",
            "kind": "List",
            "items": objs,
            "metadata": {"resourceVersion": ""},
        }
    )
    if output == "json":
        return json.dumps(doc, indent=4) + "\n"
    return str(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False))


def _events(
    kube: Kube, plurals: list[str], namespace: str | None, versions: dict[str, str]
) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(plural, event type, object) for every change of the jobs, all kinds merged in the order
    they come; a watch thread's failure is raised here, in the command's thread."""
    events: queue.Queue[tuple[str, str, dict[str, Any]] | BaseException] = queue.Queue()

    def watch(plural: str) -> None:
        from kubernetes import watch as kwatch

        args = (
            [GROUP, VERSION, plural] if namespace is None else [GROUP, VERSION, namespace, plural]
        )
        func = (
            kube.custom.list_cluster_custom_object
            if namespace is None
            else kube.custom.list_namespaced_custom_object
        )
        try:
            watcher = kwatch.Watch()  # type: ignore[no-untyped-call]
            stream = watcher.stream(func, *args, resource_version=versions[plural])  # type: ignore[no-untyped-call]
            for event in stream:
                events.put((plural, str(event["type"]), event["object"]))
        except BaseException as exc:  # handed to the command's thread, which prints it
            events.put(exc)

    for plural in plurals:
        threading.Thread(target=watch, args=(plural,), daemon=True).start()
    while True:
        item = events.get()
        if isinstance(item, BaseException):
            raise item
        yield item


def get(
    kind: Annotated[
        str, typer.Argument(help="tj | compj | all (TrainingJobs, CompressionJobs or both).")
    ] = "all",
    names: Annotated[
        list[str] | None, typer.Argument(help="Job names (default: every job).", show_default=False)
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output", "-o", help="wide (more columns), yaml or json.", show_default=False
        ),
    ] = None,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="After listing, print each change as it comes.")
    ] = False,
    namespace: NamespaceOpt = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="List the jobs of every namespace.")
    ] = False,
    context: ContextOpt = None,
    kubeconfig: KubeconfigOpt = None,
) -> None:
    """List jobs: phase, workers, restarts, progress, model, age."""
    plurals = plurals_of(kind)
    if output is not None and output not in OUTPUTS:
        err_usage(f"--output {output!r}: use one of {', '.join(OUTPUTS)}")
    if names and kind == "all":
        err_usage("name a kind (tj or compj) to get jobs by name")
    kube = connect(kubeconfig, context, namespace)
    ns = None if all_namespaces and not names else kube.namespace
    objs: list[tuple[str, dict[str, Any]]] = []
    versions: dict[str, str] = {}
    for plural in plurals:
        if names:
            objs += [(plural, o) for o in _get_named(kube, plural, kube.namespace, names)]
        if watch or not names:
            # The list's resourceVersion: -w watches from the state listed, nothing missed.
            res = _list(kube, plural, ns)
            versions[plural] = str((res.get("metadata") or {}).get("resourceVersion") or "")
            if not names:
                objs += [(plural, o) for o in res.get("items") or []]
    single = bool(names) and len(names or []) == 1
    table = Table(list(COLUMNS + WIDE_COLUMNS if output == "wide" else COLUMNS))
    _print_listing(table, objs, output, single, ns, watch)
    if watch:
        for plural, _type, obj in _events(kube, plurals, ns, versions):
            if not names or (obj.get("metadata") or {}).get("name") in names:
                _print_change(table, plural, obj, output)


def _print_listing(
    table: Table,
    objs: list[tuple[str, dict[str, Any]]],
    output: str | None,
    single: bool,
    namespace: str | None,
    watch: bool,
) -> None:
    if output in ("yaml", "json"):
        if objs or not watch:
            sys.stdout.write(render([o for _, o in objs], output, single))
    elif objs:
        lines = table.lines([row(p, o, output == "wide") for p, o in objs])
        sys.stdout.write("".join(f"{line}\n" for line in lines))
    else:
        where = f"in {namespace} namespace" if namespace else "in any namespace"
        sys.stderr.write(f"No resources found {where}.\n")
    sys.stdout.flush()


def _print_change(table: Table, plural: str, obj: dict[str, Any], output: str | None) -> None:
    """One change as kubectl -w prints it: one row, or one document."""
    if output == "json":
        sys.stdout.write(json.dumps(obj, indent=4) + "\n")
    elif output == "yaml":
        sys.stdout.write("---\n" + str(yaml.safe_dump(obj, sort_keys=False)))
    else:
        lines = table.lines([row(plural, obj, output == "wide")])
        sys.stdout.write("".join(f"{line}\n" for line in lines))
    sys.stdout.flush()


__all__ = ["KIND_ALIASES", "KIND_OF", "SHORT_OF", "age", "get", "plurals_of", "render", "row"]
