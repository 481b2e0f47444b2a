"""What `torchyard run` prints: progress on stderr, the result on stdout.

Progress follows rank 0's ``progress.jsonl``. On a terminal it is a live bar; anywhere else (a
pipe, a CI log, a file) it is one plain line at a time, at most every
``PLAIN_INTERVAL_SECONDS`` while something changes and every ``HEARTBEAT_SECONDS`` while
nothing does — a live bar redrawn into a file is cut and repeated, a line per event floods it.

The result is one document (:func:`summary`): printed as a table or ``key: value`` lines for
people, or as JSON (``--output json``) for scripts. Paths are never cut: the table folds long
values onto the next line, and the plain form does not wrap at all.

No torch here: this module is part of the torch-free ``torchyard`` package.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from torchyard.api.contract import EXIT_CODE_MEANINGS, ExitCode, StorageURIError, local_path
from torchyard.state.progress import eta_seconds, percent

OutputFormat = Literal["human", "json"]
OUTPUT_FORMATS: tuple[OutputFormat, ...] = ("human", "json")
PLAIN_INTERVAL_SECONDS = 10.0
HEARTBEAT_SECONDS = 60.0
LOG_TAIL_LINES = 25


def output_format(value: str) -> OutputFormat | None:
    """``--output``'s value, or None when it is none of OUTPUT_FORMATS."""
    return "json" if value == "json" else "human" if value == "human" else None


# progress and messages; results go to stdout (see print_summary)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


# ---------------------------------------------------------------------------------------------
# progress


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def metric_text(metric: str, value: float) -> str:
    """A gate metric as people read it: shares as percentages, the rest as numbers."""
    if metric == "accuracy":
        return f"acc {value:.2%}"
    if metric in ("f1", "top1Agreement"):
        return f"{metric} {value:.2%}"
    return f"{metric} {value:.4f}"


@dataclass
class ProgressState:
    """What rank 0 has reported so far, in words that fit the kind of job."""

    name: str
    compression: bool = False
    command: list[str] | None = None
    """spec.command: a custom script, which may write no progress events at all."""
    total: int | None = None
    step: int = 0
    epoch: int | None = None
    epochs: int | None = None
    loss: float | None = None
    samples_per_second: float | None = None
    accuracy: float | None = None
    metric: str = "accuracy"
    """What ``accuracy`` holds: a CompressionJob's gate metric (cosine, perplexity…)."""
    trial: str | None = None
    passed: bool | None = None
    note: str = ""
    """A restart in progress, shown until the next event."""
    events: int = 0
    first_point: tuple[int, float] | None = None
    last_point: tuple[int, float] | None = None
    """(step, time) of the attempt's first and newest step events: the ETA's step rate (the
    same estimate the operator writes to status.progress.etaSeconds)."""

    def apply(self, ev: dict[str, Any]) -> bool:
        """Take one event in; True when it deserves a line of its own (start, end)."""
        self.events += 1
        kind = ev.get("event")
        if kind == "start":
            self.total = ev.get("totalSteps")
            self.step = int(ev.get("startStep") or 0)
            self.first_point = self.last_point = None
            self.epochs = ev.get("epochs")
            self.compression = self.compression or ev.get("kind") == "CompressionJob"
            self.note = ""
            return True
        if kind == "step":
            self.step = int(ev.get("step") or 0)
            self.last_point = (self.step, float(ev.get("time") or 0.0))
            self.first_point = self.first_point or self.last_point
            self.total = ev.get("totalSteps", self.total)
            self.epoch = ev.get("epoch")
            self.loss = ev.get("loss", self.loss)
            self.samples_per_second = ev.get("samplesPerSecond", self.samples_per_second)
            self.trial = ev.get("trial", self.trial)
            self.passed = ev.get("passed", self.passed)
        elif kind == "eval":
            self.accuracy = ev.get("accuracy", self.accuracy)
        elif kind == "end":
            if self.total is not None and ev.get("status") == "Succeeded":
                self.step = self.total
            return True
        return False

    def counter(self) -> str:
        """Where the job is: trials of a search, steps of a training, or the command running."""
        if self.command and not self.events:
            return f"running {shlex.join(self.command)}"
        if self.compression:
            if self.total is None:
                return "preparing (loading the source model, measuring the baseline)"
            return f"trial {self.step}/{self.total}"
        if self.total is None:
            return "starting"
        done = percent(self.step, self.total)
        return f"step {self.step}/{self.total}" + ("" if done is None else f" ({done:.0f}%)")

    def info(self) -> str:
        parts = [self.note] if self.note else []
        if self.compression:
            if self.trial:
                verdict = {True: "passed", False: "missed the gate", None: ""}[self.passed]
                parts.append(f"{self.trial} {verdict}".strip())
        else:
            if self.epoch is not None and self.epochs:
                parts.append(f"epoch {self.epoch + 1}/{self.epochs}")
            if self.loss is not None:
                parts.append(f"loss {self.loss:.4f}")
            if self.samples_per_second is not None:
                parts.append(f"{self.samples_per_second:.0f} samples/s")
            if self.first_point and self.last_point:
                eta = eta_seconds(self.first_point, self.last_point, self.total)
                if eta is not None:
                    parts.append(f"ETA {_clock(eta)}")
        if self.accuracy is not None:
            baseline = "baseline " if self.compression and not self.trial else ""
            parts.append(baseline + metric_text(self.metric, self.accuracy))
        return " · ".join(parts)

    def summary(self) -> dict[str, Any]:
        """Where the job got to, as `torchyard run` saw it (the JSON summary's progress)."""
        unit = "trial" if self.compression else "step"
        if self.command and not self.events:
            unit = "command"
        return {"unit": unit, "step": self.step, "totalSteps": self.total}

    def line(self, elapsed: float) -> str:
        return " · ".join(p for p in (self.counter(), self.info(), _clock(elapsed)) if p)


class ProgressView(Protocol):
    state: ProgressState

    def update(self, force: bool = False) -> None: ...
    def message(self, text: str, style: str | None = None) -> None: ...
    def close(self) -> None: ...


class PlainProgress:
    """One line at a time, for a stderr that is not a terminal."""

    def __init__(self, state: ProgressState, console: Console = stderr) -> None:
        self.state, self.console = state, console
        self.started = time.monotonic()
        self.printed_at: float | None = None
        self.printed = ""

    def update(self, force: bool = False) -> None:
        now = time.monotonic()
        text = self.state.line(0)  # the state without the clock: has anything changed?
        since = None if self.printed_at is None else now - self.printed_at
        # force (start, end, a restart) skips the wait, not the check for something new
        due = (
            since is None
            or (text != self.printed and (force or since >= PLAIN_INTERVAL_SECONDS))
            or since >= HEARTBEAT_SECONDS
        )
        if due:
            self.console.print(
                f"{self.state.name}: {self.state.line(now - self.started)}", markup=False
            )
            self.printed_at, self.printed = now, text

    def message(self, text: str, style: str | None = None) -> None:
        self.console.print(text, markup=False, style=style)

    def close(self) -> None:
        if self.state.line(0) != self.printed:
            self.update(force=True)


class LiveProgress:
    """A live bar, for a terminal."""

    def __init__(self, state: ProgressState, console: Console = stderr) -> None:
        self.state = state
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[counter]}"),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task(state.name, total=None, counter="", info="")
        self.progress.start()
        self.update()

    def update(self, force: bool = False) -> None:
        s = self.state
        self.progress.update(
            self.task, total=s.total, completed=s.step, counter=s.counter(), info=s.info()
        )

    def message(self, text: str, style: str | None = None) -> None:
        self.progress.console.print(text, markup=False, style=style)

    def close(self) -> None:
        self.update()
        self.progress.stop()


@contextlib.contextmanager
def progress_view(state: ProgressState, console: Console = stderr) -> Iterator[ProgressView]:
    view: ProgressView = (
        LiveProgress(state, console) if console.is_terminal else PlainProgress(state, console)
    )
    try:
        yield view
    finally:
        view.close()


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a worker's log as a terminal shows them (a line rewritten with ``\\r``
    keeps its last version), framed, ending in a newline: it never runs into what follows."""
    try:
        # bytes: read_text's universal newlines would turn every \r into a line of its own
        text = path.read_bytes().decode(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})\n"
    # split on \n only: str.splitlines would also split at \r and keep what was overwritten
    shown = [line.rsplit("\r", 1)[-1].rstrip() for line in text.rstrip("\n").split("\n")]
    body = "\n".join(shown[-lines:])
    return f"----- last {lines} lines of {path} -----\n{body}\n----- end of {path} -----\n"


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            events.append(json.loads(line))
    return events


def plot(events: list[dict[str, Any]], path: Path) -> Path | None:
    """Loss and accuracy curves as a PNG (needs matplotlib, from the trainer extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    loss = {e["step"]: e["loss"] for e in events if e.get("event") == "step" and "loss" in e}
    acc = {e["step"]: e["accuracy"] for e in events if e.get("event") == "eval" and "accuracy" in e}
    if not loss and not acc:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    if loss:
        steps = sorted(loss)
        ax.plot(steps, [loss[s] for s in steps], color="tab:blue", label="training loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    if acc:
        ax2 = ax.twinx()
        steps = sorted(acc)
        ax2.plot(steps, [acc[s] for s in steps], "o-", color="tab:green", label="accuracy")
        ax2.set_ylabel("accuracy")
        ax2.set_ylim(0, 1)
    fig.legend(loc="upper center", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# the result


@dataclass
class RunOutcome:
    """How the run ended, as `torchyard run` saw it (the workers' own account is result.json)."""

    code: int
    restarts: int = 0
    wall_seconds: float = 0.0
    pod_exit_codes: list[int | None] | None = None
    """The last attempt's pods, by index (None: still running when the run was stopped)."""
    message: str | None = None
    """`torchyard run`'s own reason, when it stopped the job before or instead of a worker."""
    progress: dict[str, Any] | None = None
    """ProgressState.summary() at the end."""


def phase_of(code: int) -> str:
    if code == ExitCode.OK:
        return "Succeeded"
    return "Interrupted" if code == ExitCode.INTERRUPTED else "Failed"


def _read_json(path: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        return dict(json.loads(path.read_text()))
    return {}


def _model(result: dict[str, Any], pvc_root: Path) -> dict[str, Any] | None:
    model = result.get("model")
    if not model:
        return None
    doc = {k: model.get(k) for k in ("name", "version", "uri", "sha256")}
    with contextlib.suppress(StorageURIError, TypeError):
        doc["path"] = str(local_path(str(model.get("uri")), pvc_root))
    return doc


def summary(
    kind: str, name: str, run_dir: Path | None, pvc_root: Path, outcome: RunOutcome
) -> dict[str, Any]:
    """The job's final status: the document ``--output json`` prints and the table shows."""
    result = _read_json(run_dir / "pod-0" / "result.json") if run_dir else {}
    report = result.get("report") or None
    doc: dict[str, Any] = {
        "kind": kind,
        "name": name,
        "phase": phase_of(outcome.code),
        "exitCode": outcome.code,
        "exitCodeMeaning": EXIT_CODE_MEANINGS.get(outcome.code),
        "message": outcome.message or result.get("message"),
        "restarts": outcome.restarts,
        "wallSeconds": round(outcome.wall_seconds, 3),
        "runDir": str(run_dir) if run_dir else None,
        "model": _model(result, pvc_root),
        "metrics": result.get("metrics") or {},
        "progress": {
            **(outcome.progress or {}),
            **{k: result[k] for k in ("step", "totalSteps", "epoch") if k in result},
        },
        "report": report,
        "ratios": (report or {}).get("ratios"),
        "accuracyDelta": (report or {}).get("accuracyDelta"),
        "reportFile": result.get("reportFile"),
        "lastCheckpoint": result.get("lastCheckpoint"),
        "pods": [],
    }
    if run_dir is not None:
        for index, code in enumerate(outcome.pod_exit_codes or []):
            pod = run_dir / f"pod-{index}"
            doc["pods"].append({"index": index, "exitCode": code, "log": str(pod / "log.txt")})
        for extra, file in (("curves", "curves.png"), ("metricsTargets", "metrics-targets.json")):
            doc[extra] = str(run_dir / file) if (run_dir / file).exists() else None
    return doc


def _ratio_rows(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """A CompressionJob's report in three lines: size, speed, accuracy (baseline → compressed)."""
    report = doc.get("report") or {}
    ratios = doc.get("ratios") or {}
    base, comp = report.get("baseline") or {}, report.get("compressed") or {}
    rows = []
    if ratios.get("size") is not None:
        rows.append(
            ("size", f"{ratios['size']:.2f}× smaller ({base.get('bytes')} → {comp.get('bytes')} B)")
        )
    if ratios.get("speedup") is not None:
        rows.append(
            (
                "speedup",
                f"{ratios['speedup']:.2f}× ({_fmt(base.get('latencyMs'), '.3f')} → "
                f"{_fmt(comp.get('latencyMs'), '.3f')} ms per batch)",
            )
        )
    if doc.get("accuracyDelta") is not None:
        rows.append(
            (
                "accuracy delta",
                f"{doc['accuracyDelta']:+.4f} ({_fmt(base.get('accuracy'), '.4f')} → "
                f"{_fmt(comp.get('accuracy'), '.4f')}), gate "
                + ("passed" if report.get("passed") else "not met"),
            )
        )
    if report.get("summary"):  # for a cosine gate: the mean and the worst-percentile cosine
        rows.append(("summary", str(report["summary"])))
    return rows


def summary_rows(doc: dict[str, Any]) -> list[tuple[str, str]]:
    status = doc["phase"]
    if doc["exitCode"]:
        meaning = doc.get("exitCodeMeaning")
        status += f" (exit {doc['exitCode']}" + (f": {meaning})" if meaning else ")")
    rows = [("status", status)]
    if doc.get("message"):
        rows.append(("error", str(doc["message"])))
    rows += [("restarts", str(doc["restarts"])), ("wall time", f"{doc['wallSeconds']:.1f} s")]
    for k, v in doc["metrics"].items():
        rows.append((k, f"{v:.4f}" if isinstance(v, float) else str(v)))
    rows += _ratio_rows(doc)
    model = doc.get("model")
    if model:
        rows.append(("model version", f"{model['name']} v{model['version']}"))
        rows.append(("model uri", str(model["uri"])))
    last = doc.get("lastCheckpoint")
    if last:
        rows.append(("last checkpoint", f"step {last.get('step')}: {last.get('uri')}"))
    for key, label in (("reportFile", "report"), ("curves", "curves"), ("runDir", "run folder")):
        if doc.get(key):
            rows.append((label, str(doc[key])))
    if doc.get("metricsTargets"):
        rows.append(("metrics targets", str(doc["metricsTargets"])))
    if doc.get("pods"):
        rows.append(("logs", str(Path(doc["runDir"]) / "pod-*" / "log.txt")))
    return rows


def summary_table(doc: dict[str, Any]) -> Table:
    table = Table(title=f"{doc['kind']} {doc['name']}", show_header=False)
    table.add_column("key", no_wrap=True)
    # fold: a long path continues on the next line instead of being cut with "…"
    table.add_column("value", overflow="fold")
    for key, value in summary_rows(doc):
        table.add_row(key, value)
    return table


def print_summary(
    doc: dict[str, Any], output: OutputFormat, console: Console | None = None
) -> None:
    """The result on stdout: JSON for scripts; a table on a terminal; else plain lines that no
    width cuts or wraps (they stay greppable and copyable)."""
    out = console or Console(highlight=False, soft_wrap=True)
    if output == "json":
        out.file.write(json.dumps(doc, indent=2) + "\n")
        out.file.flush()
    elif out.is_terminal:
        out.print(summary_table(doc))
    else:
        rows = summary_rows(doc)
        width = max(len(k) for k, _ in rows)
        out.print(f"{doc['kind']} {doc['name']}", markup=False, soft_wrap=True)
        for key, value in rows:
            out.print(f"  {key.ljust(width)}  {value}", markup=False, soft_wrap=True)


__all__ = [
    "OUTPUT_FORMATS",
    "OutputFormat",
    "ProgressState",
    "ProgressView",
    "RunOutcome",
    "log_tail",
    "output_format",
    "plot",
    "print_summary",
    "progress_view",
    "read_events",
    "stderr",
    "summary",
]
