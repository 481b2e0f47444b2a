"""Live progress of a running job — PURE: what a worker reports, how the operator throttles
its status writes and how it estimates the ETA (docs/architecture.md, "Live progress").

Rank 0 of a job POSTs :class:`ProgressReport` snapshots to the operator's progress endpoint
(:mod:`torchyard.controller.progress_server`); the operator keeps the latest one per job in a
:class:`ProgressBook` and writes ``status.progress`` at most once per ``interval`` seconds
(:func:`write_delay`), the newest snapshot winning.

Where the last report time lives (stall detection reads it):

- in memory, exact: ``ProgressBook.last_step_time(key)`` — wall-clock seconds (``time.time()``
  of the operator) of the newest report whose step advanced, ``None`` before the first one.
  The operator's single book is created in :func:`torchyard.controller.run_operator` and is
  reachable as :data:`torchyard.controller.progress_server.BOOK` (one per operator process);
  ``key`` is the reconciler's ``(kind, namespace, name)`` tuple;
- durable, up to ``interval`` seconds late: ``status.progress.lastUpdateTime`` (RFC 3339),
  survives an operator restart.

The final result of rank 0's termination message still replaces ``status.progress`` when the
job ends (:func:`torchyard.state.result_status`).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from torchyard.state.observed import Status, rfc3339

Key = tuple[str, str, str]
DEFAULT_WRITE_INTERVAL = 5.0
MAX_METRICS = 16
"""Metrics kept per report (the job's chosen ones; the rest are dropped, status stays small)."""


@dataclass(frozen=True)
class ProgressReport:
    """One snapshot of rank 0's progress (the wire format's camelCase keys: :meth:`parse`)."""

    step: int
    total_steps: int | None = None
    epoch: int | None = None
    loss: float | None = None
    accuracy: float | None = None
    samples_per_second: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    time: float = 0.0
    """When the worker made it (its wall clock, seconds); 0: unknown."""

    @classmethod
    def parse(cls, doc: Any) -> ProgressReport:
        """From a POSTed JSON body; raises ``ValueError`` on anything malformed."""
        if not isinstance(doc, dict):
            raise ValueError("a progress report is a JSON object")
        step = doc.get("step")
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError("step must be a non-negative integer")
        metrics = doc.get("metrics") or {}
        if not isinstance(metrics, dict):
            raise ValueError("metrics must be an object of numbers")
        return cls(
            step=step,
            total_steps=_opt_int(doc.get("totalSteps")),
            epoch=_opt_int(doc.get("epoch")),
            loss=_opt_float(doc.get("loss")),
            accuracy=_opt_float(doc.get("accuracy")),
            samples_per_second=_opt_float(doc.get("samplesPerSecond")),
            metrics={
                str(k)[:63]: f
                for k, v in list(metrics.items())[:MAX_METRICS]
                if (f := _opt_float(v)) is not None
            },
            time=_opt_float(doc.get("time")) or 0.0,
        )


def _opt_int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def _opt_float(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def percent(step: int, total_steps: int | None) -> float | None:
    """Share of the run done, 0-100 (one decimal); None without a total."""
    if not total_steps or total_steps <= 0:
        return None
    return round(min(100.0, 100.0 * step / total_steps), 1)


def eta_seconds(
    first: tuple[int, float], last: tuple[int, float], total_steps: int | None
) -> float | None:
    """Seconds left at the average step rate between two ``(step, time)`` reports of the same
    attempt; None until the step has advanced (or without a total)."""
    if not total_steps:
        return None
    steps = last[0] - first[0]
    elapsed = last[1] - first[1]
    if steps <= 0 or elapsed <= 0:
        return None
    return max(0.0, (total_steps - last[0]) * elapsed / steps)


def write_delay(last_write: float | None, now: float, interval: float) -> float:
    """Seconds to wait before the next status write of a job (0: write now): at most one
    write per ``interval`` seconds."""
    if last_write is None:
        return 0.0
    return max(0.0, interval - (now - last_write))


def progress_status(report: ProgressReport, eta: float | None, now: datetime) -> Status:
    """``status.progress`` for a report (camelCase, Nones left out)."""
    out: Status = {
        "step": report.step,
        "epoch": report.epoch,
        "totalSteps": report.total_steps,
        "percent": percent(report.step, report.total_steps),
        "loss": report.loss,
        "accuracy": report.accuracy,
        "samplesPerSecond": report.samples_per_second,
        "metrics": dict(report.metrics) or None,
        "lastUpdateTime": rfc3339(now),
    }
    if eta is not None:
        out["etaSeconds"] = round(eta)
        out["estimatedCompletionTime"] = rfc3339(now + timedelta(seconds=eta))
    return {k: v for k, v in out.items() if v is not None}


@dataclass
class _Entry:
    latest: ProgressReport
    first: tuple[int, float]
    last: tuple[int, float]
    last_step_time: float
    dirty: bool = True
    last_write: float | None = None


class ProgressBook:
    """The newest report per job, and when each job's status was last written (thread-safe:
    the HTTP handlers record, the flusher takes, stall detection reads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[Key, _Entry] = {}

    def record(self, key: Key, report: ProgressReport, now: float) -> None:
        """Keep ``report`` as the job's latest (``now``: the operator's ``time.time()``)."""
        with self._lock:
            e = self._jobs.get(key)
            point = (report.step, now)
            if e is None or report.step < e.last[0]:
                # First report, or a new attempt restarted from an older checkpoint: the rate
                # is measured afresh.
                self._jobs[key] = _Entry(
                    report, point, point, now, True, e.last_write if e else None
                )
                return
            if report.step > e.last[0]:
                # The rate is measured between reports whose step advanced.
                e.last_step_time, e.last = now, point
            e.latest, e.dirty = report, True

    def take(self, key: Key, now: float, interval: float) -> tuple[Status, float] | None:
        """``(status.progress, 0)`` when the job's latest report is due for a write now
        (marked written), ``({}, delay)`` when it must wait ``delay`` s, None when there is
        nothing new."""
        with self._lock:
            e = self._jobs.get(key)
            if e is None or not e.dirty:
                return None
            delay = write_delay(e.last_write, now, interval)
            if delay > 0:
                return {}, delay
            e.dirty, e.last_write = False, now
            eta = eta_seconds(e.first, e.last, e.latest.total_steps)
            return progress_status(e.latest, eta, datetime.fromtimestamp(now, UTC)), 0.0

    def last_step_time(self, key: Key) -> float | None:
        with self._lock:
            e = self._jobs.get(key)
            return e.last_step_time if e is not None else None

    def latest(self, key: Key) -> ProgressReport | None:
        with self._lock:
            e = self._jobs.get(key)
            return replace(e.latest) if e is not None else None

    def forget(self, key: Key) -> None:
        with self._lock:
            self._jobs.pop(key, None)


__all__ = [
    "DEFAULT_WRITE_INTERVAL",
    "ProgressBook",
    "ProgressReport",
    "eta_seconds",
    "percent",
    "progress_status",
    "write_delay",
]
