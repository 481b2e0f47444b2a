"""Stall detection (torchyard.state.stall) and its step in the state machine: pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.unit.test_status import T0, cond, job, pod, step, tj_body
from torchyard.api.constants import ConditionType, Phase, Reason
from torchyard.controller.stall_watch import StallWatch
from torchyard.state import (
    ActionKind,
    Decision,
    JobView,
    Observed,
    decide,
    get_condition,
    rfc3339,
)
from torchyard.state.stall import (
    DEFAULT_WINDOW_FLOOR_SECONDS,
    DEFAULT_WINDOW_INTERVALS,
    StepClock,
    StepTiming,
    judge_stall,
    stall_window,
)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def running(run_policy: dict[str, Any] | None = None) -> dict[str, Any]:
    """A job whose two workers have run since T0."""
    body = tj_body(run_policy=run_policy)
    d = decide(JobView.from_body(body), Observed(now=T0))
    d = decide(JobView.from_body(step(body, d)), Observed(now=T0, job=job(active=2, ready=2)))
    assert d.status["phase"] == Phase.RUNNING
    return step(body, d)


def look(body: dict[str, Any], now: float, last_step: float | None, **kw: Any) -> Decision:
    timing = StepTiming(None if last_step is None else at(last_step), kw.get("step_seconds"))
    obs = Observed(now=at(now), job=job(active=2, ready=2, restart=kw.get("restart", 0)))
    return decide(JobView.from_body(body), obs, timing)


# ------------------------------------------------------------------------ the window


def test_configured_window_wins() -> None:
    assert stall_window(45, 100.0) == 45.0


def test_derived_window_is_ten_report_intervals_with_a_floor() -> None:
    slow = 120.0  # a job reporting every 2 minutes: 10 intervals
    assert stall_window(None, slow) == DEFAULT_WINDOW_INTERVALS * slow
    # fast steps (or no interval measured yet): the floor, for checkpoints and eval passes
    assert stall_window(None, 0.1) == DEFAULT_WINDOW_FLOOR_SECONDS
    assert stall_window(None, None) == DEFAULT_WINDOW_FLOOR_SECONDS


def test_nothing_is_judged_before_the_attempts_first_step() -> None:
    assert judge_stall(StepTiming(None), 10, T0, at(3600)) is None
    # a step of the previous attempt (before the workers started running again)
    assert judge_stall(StepTiming(at(-30)), 10, T0, at(3600)) is None
    # workers not running
    assert judge_stall(StepTiming(at(5)), 10, None, at(3600)) is None


@pytest.mark.parametrize(("idle", "stalled"), [(10.0, False), (10.5, True), (3.0, False)])
def test_stalled_only_past_the_window(idle: float, stalled: bool) -> None:
    verdict = judge_stall(StepTiming(at(5)), 10, T0, at(5 + idle))
    assert verdict is not None
    assert verdict.stalled is stalled
    if stalled:  # rounded so that it reads as past the window
        assert verdict.message == "no step for 11s (window 10s)"


def test_step_clock_takes_the_median_report_interval_and_starts_over() -> None:
    clock = StepClock()
    assert clock.timing() == StepTiming(None, None)
    base = T0.timestamp()
    for t in (0.0, 2.0, 2.0, 4.0, 6.0, 66.0, 68.0):  # one long pause (a checkpoint)
        clock.observe(base + t)
    timing = clock.timing()
    assert timing.last_step_time == datetime.fromtimestamp(base + 68.0, UTC)
    assert timing.step_seconds == 2.0  # the pause does not widen the window
    clock.observe(base + 1.0)  # an older time: the book started over (a new attempt)
    assert clock.timing().step_seconds is None


# ------------------------------------------------------------------------ in decide()


def test_stall_sets_the_condition_and_one_event_then_clears_on_resume() -> None:
    body = running({"stallTimeoutSeconds": 30})
    quiet = look(body, 20, 5)
    assert get_condition(quiet.status, ConditionType.STALLED) is None
    assert quiet.events == []
    stalled = look(body, 40, 5)
    c = cond(stalled, ConditionType.STALLED)
    assert (c["status"], c["reason"]) == ("True", Reason.NO_PROGRESS)
    assert c["message"] == "no step for 35s (window 30s)"
    assert [(e.type, e.reason) for e in stalled.events] == [("Warning", Reason.NO_PROGRESS)]
    assert stalled.actions == []  # stallAction None: only reported
    assert stalled.status["phase"] == Phase.RUNNING
    body = step(body, stalled)
    still = look(body, 50, 5)
    assert still.events == []  # no Event between flips
    resumed = look(body, 52, 51)
    c = cond(resumed, ConditionType.STALLED)
    assert (c["status"], c["reason"]) == ("False", Reason.PROGRESS_RESUMED)
    assert [(e.type, e.reason) for e in resumed.events] == [("Normal", Reason.PROGRESS_RESUMED)]


def test_derived_window_applies_without_a_setting() -> None:
    body = running()
    floor = DEFAULT_WINDOW_FLOOR_SECONDS
    assert get_condition(look(body, floor, 1).status, ConditionType.STALLED) is None
    assert cond(look(body, floor + 2, 1), ConditionType.STALLED)["status"] == "True"


def test_stall_action_restart_restarts_the_group_counted_in_restarts() -> None:
    body = running({"stallTimeoutSeconds": 30, "stallAction": "Restart", "backoffLimit": 2})
    d = look(body, 40, 5)
    assert d.status["restarts"] == 1
    assert d.status["phase"] == Phase.RESTARTING
    assert d.status["message"].startswith("Stalled: no step for 35s (window 30s); restarting")
    assert cond(d, ConditionType.RESTARTING)["reason"] == Reason.STALLED
    assert [a.kind for a in d.after_status] == [ActionKind.DELETE_JOB]
    assert {e.reason for e in d.events} == {Reason.NO_PROGRESS, Reason.STALLED}


def test_stall_restart_past_backoff_limit_fails() -> None:
    body = running({"stallTimeoutSeconds": 30, "stallAction": "Restart", "backoffLimit": 0})
    d = look(body, 40, 5)
    assert d.status["phase"] == Phase.FAILED
    assert cond(d, ConditionType.FAILED)["reason"] == Reason.BACKOFF_LIMIT_EXCEEDED
    assert "Stalled: no step" in d.status["message"]


def test_a_new_attempt_is_not_judged_by_the_old_attempts_last_step() -> None:
    body = running({"stallTimeoutSeconds": 30, "stallAction": "Restart", "backoffLimit": 2})
    restarted = look(body, 40, 5)
    body = step(body, restarted)
    # the new attempt's workers run from t=60; the book still holds the step at t=5
    d = decide(JobView.from_body(body), Observed(now=at(60), job=job(restart=1)))
    d = decide(
        JobView.from_body(step(body, d)),
        Observed(now=at(60), job=job(restart=1, active=2, ready=2)),
    )
    assert d.status["phase"] == Phase.RUNNING
    later = look(step(body, d), 600, 5, restart=1)
    assert later.status["restarts"] == 1
    assert later.actions == []
    # the Stalled condition stays until the new attempt steps
    assert cond(later, ConditionType.STALLED)["status"] == "True"
    stepped = look(step(body, d), 620, 610, restart=1)
    assert cond(stepped, ConditionType.STALLED)["reason"] == Reason.PROGRESS_RESUMED


def test_without_timing_nothing_changes() -> None:
    body = running({"stallTimeoutSeconds": 1})
    d = decide(JobView.from_body(body), Observed(now=at(3600), job=job(active=2, ready=2)))
    assert get_condition(d.status, ConditionType.STALLED) is None


# ------------------------------------------------------------------------ the periodic check


class Book:
    """A progress book's one method stall detection reads."""

    def __init__(self) -> None:
        self.times: dict[tuple[str, str, str], float] = {}

    def last_step_time(self, key: tuple[str, str, str]) -> float | None:
        return self.times.get(key)


def test_the_periodic_check_enqueues_only_flips() -> None:
    key = ("TrainingJob", "ml", "digits")
    objects = {key: running({"stallTimeoutSeconds": 30})}
    queued: list[tuple[str, str, str]] = []
    book = Book()
    watch = StallWatch(objects, lambda k, delay: queued.append(k), book)
    assert watch.check(at(3600)) == []  # no step reported: nothing judged
    book.times[key] = at(5).timestamp()
    assert watch.check(at(20)) == []
    assert watch.check(at(40)) == [key]  # stalled, the condition is not True yet
    objects[key] = step(objects[key], look(objects[key], 40, 5))
    assert watch.check(at(50)) == []  # the condition says so already
    book.times[key] = at(55).timestamp()
    assert watch.check(at(56)) == [key]  # resumed: to clear
    assert queued == [key, key]
    assert watch.timing(key).last_step_time == at(55)


def test_a_job_that_stepped_stays_judged_when_its_step_time_is_no_longer_known() -> None:
    """The check skips jobs that never reported a step; one that did keeps its clock's last
    step time when the book and the status stop telling it (a book entry forgotten)."""
    key = ("TrainingJob", "ml", "digits")
    objects = {key: running({"stallTimeoutSeconds": 30})}
    book = Book()
    watch = StallWatch(objects, lambda k, delay: None, book)
    book.times[key] = at(5).timestamp()
    assert watch.check(at(20)) == []
    del book.times[key]
    assert watch.check(at(40)) == [key]


def test_after_an_operator_restart_the_status_stands_in_for_the_empty_book() -> None:
    key = ("TrainingJob", "ml", "digits")
    body = running({"stallTimeoutSeconds": 30})
    body["status"]["progress"] = {"step": 7, "lastUpdateTime": rfc3339(at(5))}
    queued: list[tuple[str, str, str]] = []
    watch = StallWatch({key: body}, lambda k, delay: queued.append(k), Book())
    assert watch.check(at(20)) == []
    assert watch.check(at(40)) == [key]
    assert watch.timing(key).last_step_time == at(5)


# ------------------------------------------------------------------ a finished job


def stalled_body() -> dict[str, Any]:
    body = running({"stallTimeoutSeconds": 30, "backoffLimit": 0})
    body = step(body, look(body, 40, 5))
    assert cond_of(body)["status"] == "True"
    return body


def cond_of(body: dict[str, Any]) -> dict[str, Any]:
    found = get_condition(body["status"], ConditionType.STALLED)
    assert found is not None
    return found


def test_a_stalled_job_that_succeeds_is_no_longer_stalled() -> None:
    body = stalled_body()
    done = job(succeeded=2, complete=True)
    pods = (pod(0, "Succeeded", 0), pod(1, "Succeeded", 0))
    d = decide(JobView.from_body(body), Observed(now=at(45), job=done, pods=pods))
    assert d.status["phase"] == Phase.SUCCEEDED
    c = cond(d, ConditionType.STALLED)
    assert (c["status"], c["reason"]) == ("False", Reason.COMPLETED)
    assert c["lastTransitionTime"] == rfc3339(at(45))
    assert [e.reason for e in d.events] == [Reason.COMPLETED]  # no Event for the stall


def test_a_stalled_job_that_fails_is_no_longer_stalled() -> None:
    body = stalled_body()
    gone = job(failed=1, failed_reason="BackoffLimitExceeded")
    pods = (pod(0, "Failed", 137), pod(1, "Running"))
    d = decide(JobView.from_body(body), Observed(now=at(45), job=gone, pods=pods))
    assert d.status["phase"] == Phase.FAILED
    c = cond(d, ConditionType.STALLED)
    assert c["status"] == "False"
    assert c["reason"] == cond(d, ConditionType.FAILED)["reason"]


def test_a_job_finished_while_stalled_earlier_is_cleared_on_its_next_look() -> None:
    body = stalled_body()
    body["status"]["phase"] = Phase.SUCCEEDED
    body["status"]["conditions"].append(
        {"type": ConditionType.SUCCEEDED, "status": "True", "reason": Reason.COMPLETED}
    )
    d = decide(JobView.from_body(body), Observed(now=at(60), job=job(succeeded=2, complete=True)))
    c = cond(d, ConditionType.STALLED)
    assert (c["status"], c["reason"]) == ("False", Reason.COMPLETED)
    again = decide(JobView.from_body(step(body, d)), Observed(now=at(90)))
    assert cond(again, ConditionType.STALLED) == c  # nothing moves once cleared


def test_a_job_that_never_stalled_gets_no_stalled_condition_when_it_finishes() -> None:
    body = running({"stallTimeoutSeconds": 30})
    done = job(succeeded=2, complete=True)
    pods = (pod(0, "Succeeded", 0), pod(1, "Succeeded", 0))
    d = decide(JobView.from_body(body), Observed(now=at(10), job=done, pods=pods))
    assert d.status["phase"] == Phase.SUCCEEDED
    assert get_condition(d.status, ConditionType.STALLED) is None
