"""The periodic stall check of running jobs (the rule: :mod:`torchyard.state.stall`).

A stall is the absence of an event, so something must look at the clock: one asyncio task
every :data:`CHECK_INTERVAL` seconds reads, for each running job in the reconciler's cache,
its last step time from the progress book, and enqueues a reconcile only when the
``Stalled`` condition must flip (a stall began, or steps resumed). Looking costs no API call;
the reconcile that follows decides with the same rule (``decide(..., timing)``), writes the
condition and the Event and, with ``stallAction: Restart``, restarts the group. One task for
all jobs rather than a Kopf timer per job: a timer needs a finalizer on every job and runs a
handler per job per interval.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from torchyard.api.constants import Phase
from torchyard.controller.kube import Key
from torchyard.controller.reconciler import Reconciler
from torchyard.state.observed import parse_time
from torchyard.state.stall import (
    StepClock,
    StepTiming,
    attempt_started,
    judge_stall,
    stall_flip_due,
)

log = logging.getLogger("torchyard.operator")

CHECK_INTERVAL = 1.0
"""Seconds between two looks; a stall is seen at most this late after its window."""


class StepSource(Protocol):
    """Where rank 0's last step time is kept (:class:`torchyard.state.progress.ProgressBook`)."""

    def last_step_time(self, key: Key) -> float | None: ...


class StallWatch:
    """Step clocks of the jobs, fed from the progress book; thread-safe (the check runs on the
    event loop, reconciles in worker threads ask :meth:`timing`)."""

    def __init__(
        self,
        objects: Mapping[Key, dict[str, Any]],
        enqueue: Callable[[Key, float], None],
        source: StepSource,
    ) -> None:
        self.objects = objects
        """The jobs as the watches last saw them (the reconciler's cache)."""
        self.enqueue = enqueue
        self.source = source
        self._clocks: dict[Key, StepClock] = {}
        self._lock = threading.Lock()

    def timing(self, key: Key) -> StepTiming:
        """The job's step timing now (what ``decide`` judges a stall by)."""
        return self._timing(key, self._last_step(key, self.objects.get(key)))

    def _last_step(self, key: Key, body: dict[str, Any] | None) -> float | None:
        last = self.source.last_step_time(key)
        if last is None:
            # The book is in memory: after an operator restart, a job that hung before it
            # would never be judged. The status keeps the last progress write (at most one
            # write interval after the step: the window only gets that much longer).
            last = _last_progress_write(body)
        return last

    def _timing(self, key: Key, last: float | None) -> StepTiming:
        with self._lock:
            clock = self._clocks.setdefault(key, StepClock())
            clock.observe(last)
            return clock.timing()

    def _never_stepped(self, key: Key, last: float | None) -> bool:
        """No step time now nor before: ``judge_stall`` has nothing to judge. Most running
        jobs of a burst are such (their workers still start), and the check skips them
        without a clock of their own."""
        if last is not None:
            return False
        clock = self._clocks.get(key)
        return clock is None or not clock.stepped

    def check(self, now: datetime) -> list[Key]:
        """Enqueue a reconcile of each running job whose Stalled condition must flip; returns
        their keys."""
        due: list[Key] = []
        objects = dict(self.objects)
        with self._lock:
            for gone in set(self._clocks) - set(objects):
                del self._clocks[gone]
        for key, body in objects.items():
            status = body.get("status") or {}
            if status.get("phase") != Phase.RUNNING:
                continue
            last = self._last_step(key, body)
            if self._never_stepped(key, last):
                continue
            if _flip_due(body, self._timing(key, last), now):
                due.append(key)
                self.enqueue(key, 0.0)
        return due

    async def run(self) -> None:
        while True:
            try:
                for key in self.check(datetime.now(UTC)):
                    log.debug("%s %s/%s: stall condition to flip", *key)
            except Exception:  # the next look tries again; never kill the task
                log.exception("stall check failed")
            await asyncio.sleep(CHECK_INTERVAL)


def _last_progress_write(body: dict[str, Any] | None) -> float | None:
    progress = ((body or {}).get("status") or {}).get("progress") or {}
    written = parse_time(progress.get("lastUpdateTime"))
    return None if written is None else written.timestamp()


def _flip_due(body: dict[str, Any], timing: StepTiming, now: datetime) -> bool:
    status = body.get("status") or {}
    policy = (body.get("spec") or {}).get("runPolicy") or {}
    configured = policy.get("stallTimeoutSeconds")
    verdict = judge_stall(timing, configured, attempt_started(status), now)
    return stall_flip_due(status, verdict)


def start_stall_watch(reconciler: Reconciler, source: StepSource) -> asyncio.Task[None]:
    """Wire the watch into the reconciler's decisions and start the periodic check."""
    watch = StallWatch(reconciler.cache.objects, reconciler.enqueue, source)
    reconciler.step_timing = watch.timing
    return asyncio.get_running_loop().create_task(watch.run(), name="stall-watch")


__all__ = ["CHECK_INTERVAL", "StallWatch", "StepSource", "start_stall_watch"]
