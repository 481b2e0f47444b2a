"""Stall detection — pure: has rank 0 of a running job stopped reporting steps?

The operator knows when rank 0 last reported a step that advanced (the progress endpoint's
:class:`torchyard.state.progress.ProgressBook`); :class:`StepClock` turns the successive
values of that time into :class:`StepTiming` (the last step time and the median interval
between step reports), and :func:`judge_stall` says whether the job is stalled now.

The rule (docs/operator.md, "Stalled jobs"):

- the window is ``runPolicy.stallTimeoutSeconds`` when set, else
  ``max(10 x median interval between step reports, 300 s)``. The interval between *reports*
  (not the step time) is what the operator sees: a trainer that reports every 50 steps is
  quiet for 50 step times by design. Ten intervals cover the pauses a healthy job makes
  between reports (a checkpoint save, an evaluation pass, the first steps after a resume),
  and the 300 s floor covers them where steps are fast (0.1 s steps would give a 1 s
  window). The median of the last :data:`INTERVALS_KEPT` intervals ignores one long pause,
  so a past stall does not widen the window for good;
- the clock starts at the first step reported by the current attempt: nothing is judged
  before it (image pull, rendezvous, data download and ``torch.compile`` happen before the
  first step and have their own timeouts), and a step of an earlier attempt never counts;
- a stall turns the ``Stalled`` condition True (reason ``NoProgress``, message
  "no step for Xs (window Ys)") and posts a Warning Event; the next step turns it False
  (``ProgressResumed``) with a Normal Event. One Event per flip, none in between.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime

from torchyard.api.constants import ConditionType, Reason
from torchyard.state.conditions import condition_true, get_condition
from torchyard.state.draft import StatusDraft
from torchyard.state.observed import Status, parse_time

DEFAULT_WINDOW_FLOOR_SECONDS = 300.0
"""Least derived window: checkpoints and evaluation passes of fast-stepping jobs."""
DEFAULT_WINDOW_INTERVALS = 10
"""Derived window in median intervals between step reports."""
INTERVALS_KEPT = 9
"""Intervals the median is taken over (odd: the median is one of them)."""


@dataclass(frozen=True)
class StepTiming:
    """What stall detection reads of one job's progress reports."""

    last_step_time: datetime | None
    """When rank 0's newest report that advanced the step arrived; None before the first."""
    step_seconds: float | None = None
    """Median seconds between two reports that advanced the step; None before two."""


@dataclass(frozen=True)
class StallVerdict:
    stalled: bool
    idle_seconds: float
    """Seconds since the last step report."""
    window_seconds: float

    @property
    def message(self) -> str:
        # Idle rounded up, window down: a stall never reads "no step for 8s (window 8s)".
        idle, window = math.ceil(self.idle_seconds), math.floor(self.window_seconds)
        if self.stalled:
            return f"no step for {idle}s (window {window}s)"
        return f"last step {idle}s ago (window {window}s)"


class StepClock:
    """Turns the successive last-step times of one job into a :class:`StepTiming`.

    Fed with whatever the last-step time is at each look (the same value again, a newer one,
    or an older one when the progress book started over for a new attempt). When several
    reports arrive between two looks only their sum is seen as one interval: the window can
    come out larger than it should, never smaller (no false stall from it)."""

    def __init__(self) -> None:
        self._last: float | None = None
        self._intervals: deque[float] = deque(maxlen=INTERVALS_KEPT)

    def observe(self, last_step_time: float | None) -> None:
        """``last_step_time``: seconds since the epoch, or None (no step reported yet)."""
        if last_step_time is None:
            return
        if self._last is not None and last_step_time > self._last:
            self._intervals.append(last_step_time - self._last)
        elif self._last is not None and last_step_time < self._last:
            self._intervals.clear()  # a new record (a new attempt): measured afresh
        self._last = last_step_time

    @property
    def stepped(self) -> bool:
        """Whether a step time was ever observed (else :meth:`timing` has nothing to judge)."""
        return self._last is not None

    def timing(self) -> StepTiming:
        last = None if self._last is None else datetime.fromtimestamp(self._last, UTC)
        median = statistics.median(self._intervals) if self._intervals else None
        return StepTiming(last_step_time=last, step_seconds=median)


def stall_window(configured: int | None, step_seconds: float | None) -> float:
    """The stall window in seconds (see the module docstring for why)."""
    if configured is not None:
        return float(configured)
    derived = DEFAULT_WINDOW_INTERVALS * (step_seconds or 0.0)
    return max(derived, DEFAULT_WINDOW_FLOOR_SECONDS)


def attempt_started(status: Status) -> datetime | None:
    """When the current attempt's workers last started running (the Running condition's
    transition to True); None when they do not run."""
    running = get_condition(status, ConditionType.RUNNING)
    if running is None or running.get("status") != "True":
        return None
    return parse_time(running.get("lastTransitionTime"))


def judge_stall(
    timing: StepTiming | None,
    configured: int | None,
    started: datetime | None,
    now: datetime,
) -> StallVerdict | None:
    """Stalled or not at ``now``; None when nothing can be judged (no step of this attempt
    yet, or the workers do not run)."""
    if timing is None or timing.last_step_time is None or started is None:
        return None
    # Conditions keep whole seconds: a step in the same second as the start counts.
    if timing.last_step_time.replace(microsecond=0) < started:
        return None
    window = stall_window(configured, timing.step_seconds)
    idle = max(0.0, (now - timing.last_step_time).total_seconds())
    return StallVerdict(stalled=idle > window, idle_seconds=idle, window_seconds=window)


def stall_flip_due(status: Status, verdict: StallVerdict | None) -> bool:
    """Whether the Stalled condition must change (what a periodic check asks before it
    spends a reconcile)."""
    if verdict is None:
        return False
    return verdict.stalled != condition_true(status, ConditionType.STALLED)


def note_stall(draft: StatusDraft, verdict: StallVerdict | None) -> None:
    """Set the Stalled condition from ``verdict`` (an Event on each flip). A condition that
    never was True is not written as False: absent means it never happened."""
    if verdict is None:
        return
    if verdict.stalled:
        if draft.cond(ConditionType.STALLED, True, Reason.NO_PROGRESS, verdict.message):
            draft.event(Reason.NO_PROGRESS, verdict.message, warning=True)
        return
    if condition_true(draft.status, ConditionType.STALLED):
        message = f"steps resumed: {verdict.message}"
        draft.cond(ConditionType.STALLED, False, Reason.PROGRESS_RESUMED, message)
        draft.event(Reason.PROGRESS_RESUMED, message)


__all__ = [
    "DEFAULT_WINDOW_FLOOR_SECONDS",
    "DEFAULT_WINDOW_INTERVALS",
    "StallVerdict",
    "StepClock",
    "StepTiming",
    "attempt_started",
    "judge_stall",
    "note_stall",
    "stall_flip_due",
    "stall_window",
]
