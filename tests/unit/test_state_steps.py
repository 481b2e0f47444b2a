"""Steps of torchyard.state.machine.decide that tests/unit/test_status.py does not reach:
the resume of a Suspended job whose Job is gone, a Job being deleted, a suspended job whose
Job already finished, a failed Job without its pods, and decide_failure."""

from __future__ import annotations

from datetime import timedelta

from tests.unit.test_status import T0, cond, job, kinds, run, step, tj_body
from torchyard.api.constants import ConditionType, Phase, Reason
from torchyard.state import ActionKind, Decision, JobView, Observed, decide_failure, rfc3339


def test_a_decision_is_always_truthy() -> None:
    # decide() chains its steps with `or`: a Decision must never be falsy.
    assert bool(Decision(status={}))


def test_resume_without_a_job_creates_it_and_resets_start_time() -> None:
    created = run(tj_body(run_policy={"suspend": True}))
    assert created.status["phase"] == Phase.SUSPENDED
    body = step(tj_body(run_policy={"suspend": False}, generation=2), created)
    later = T0 + timedelta(minutes=5)
    r = run(body, now=later)
    assert kinds(r) == [ActionKind.CREATE]
    assert r.status["phase"] == Phase.PENDING
    assert r.status["message"] == "resumed: waiting for workers"
    assert cond(r, ConditionType.SUSPENDED)["status"] == "False"
    assert cond(r, ConditionType.SUSPENDED)["reason"] == Reason.RESUMED
    assert r.status["startTime"] == rfc3339(later)
    assert [e.reason for e in r.events] == [Reason.RESUMED]  # Created was already True


def test_a_job_being_deleted_counts_no_workers_and_waits() -> None:
    body = tj_body(status={"phase": Phase.RUNNING, "restarts": 0})
    d = run(body, job=job(active=2, ready=2, deleting=True))
    assert d.actions == []
    assert d.events == []
    assert d.status["phase"] == Phase.RUNNING
    assert d.status["workers"] == {"active": 0, "ready": 0, "succeeded": 0, "failed": 0}


def test_suspend_after_the_job_completed_lets_it_succeed() -> None:
    body = tj_body(run_policy={"suspend": True}, status={"phase": Phase.RUNNING})
    d = run(body, job=job(succeeded=2, complete=True), pods=())
    assert d.status["phase"] == Phase.SUCCEEDED
    assert ActionKind.SUSPEND_JOB not in kinds(d)


def test_a_failed_job_asks_for_its_pods_first() -> None:
    body = tj_body(status={"phase": Phase.RUNNING})
    d = run(body, job=job(failed=1, failed_reason="BackoffLimitExceeded"))
    assert d.needs_pods
    assert d.status["phase"] == Phase.RUNNING
    assert d.actions == []


def test_decide_failure_fails_at_once_and_stops_the_workers() -> None:
    view = JobView.from_body(tj_body(status={"phase": Phase.RUNNING}))
    d = decide_failure(view, Observed(now=T0, job=job(active=2)), Reason.INVALID_SPEC, "no")
    assert d.status["phase"] == Phase.FAILED
    assert cond(d, ConditionType.FAILED)["reason"] == Reason.INVALID_SPEC
    assert d.status["completionTime"] == rfc3339(T0)
    assert kinds(d) == [ActionKind.SUSPEND_JOB, ActionKind.CLEAN_PODS]
    assert [(e.type, e.reason) for e in d.events] == [("Warning", Reason.INVALID_SPEC)]
