"""The phase/condition state machine (torchyard.state): pure data in, decision out."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import EXAMPLES
from torchyard.api.constants import ConditionType, Phase, Reason
from torchyard.state import (
    ActionKind,
    Decision,
    JobInfo,
    JobView,
    Observed,
    PodInfo,
    SourceInfo,
    classify_refusal,
    decide,
    decide_blocked,
    get_condition,
    lifetime_due,
    parse_result,
    rfc3339,
    set_condition,
    status_patch,
    workload_step,
)

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def tj_body(
    *,
    workers: int = 2,
    run_policy: dict[str, Any] | None = None,
    status: dict[str, Any] | None = None,
    scheduling: dict[str, Any] | None = None,
    env: list[dict[str, str]] | None = None,
    generation: int = 1,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "workers": workers,
        "model": {"builtin": "mlp"},
        "data": {"builtin": "digits"},
        "batchSize": 64,
        "runPolicy": run_policy or {},
    }
    if scheduling:
        spec["scheduling"] = scheduling
    if env:
        spec["env"] = env
    return {
        "apiVersion": "torchyard.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {
            "name": "digits",
            "namespace": "ml",
            "generation": generation,
            "uid": "u1",
            "resourceVersion": "10",
            "creationTimestamp": rfc3339(T0),
        },
        "spec": spec,
        "status": status or {},
    }


def cj_body(status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "torchyard.io/v1alpha1",
        "kind": "CompressionJob",
        "metadata": {"name": "prune", "namespace": "ml", "generation": 1},
        "spec": {
            "source": {"trainingJobRef": "digits"},
            "data": {"builtin": "digits"},
            "steps": [{"prune": {"method": "magnitude", "sparsity": 0.9}}],
        },
        "status": status or {},
    }


def job(
    *,
    restart: int = 0,
    active: int = 0,
    ready: int = 0,
    succeeded: int = 0,
    failed: int = 0,
    complete: bool = False,
    failed_reason: str | None = None,
    suspended: bool = False,
    deleting: bool = False,
    uid: str = "job-uid",
    queue: str | None = None,
    created: datetime | None = None,
) -> JobInfo:
    return JobInfo(
        name="digits",
        uid=uid,
        restart_count=restart,
        deleting=deleting,
        suspended=suspended,
        active=active,
        ready=ready,
        succeeded=succeeded,
        failed=failed,
        complete=complete,
        failed_reason=failed_reason,
        queue=queue,
        created=created,
    )


def pod(index: int, phase: str, code: int | None = None, message: str | None = None) -> PodInfo:
    return PodInfo(name=f"digits-{index}-x", index=index, phase=phase, exit_code=code,
                   message=message)


def run(body: dict[str, Any], *, now: datetime = T0, **obs: Any) -> Decision:
    return decide(JobView.from_body(body), Observed(now=now, **obs))


def step(body: dict[str, Any], decision: Decision) -> dict[str, Any]:
    """The body after the decision's status was written."""
    return {**body, "status": decision.status}


def kinds(d: Decision) -> list[ActionKind]:
    return [a.kind for a in d.actions]


def cond(d: Decision, ctype: str) -> dict[str, Any]:
    c = get_condition(d.status, ctype)
    assert c is not None, f"no condition {ctype} in {d.status.get('conditions')}"
    return c


# ------------------------------------------------------------------------ creation


def test_new_job_creates_children_and_is_pending() -> None:
    d = run(tj_body())
    assert kinds(d) == [ActionKind.CREATE]
    assert d.before_status[0].restart_count == 0
    assert d.status["phase"] == Phase.PENDING
    assert cond(d, ConditionType.CREATED)["status"] == "True"
    assert cond(d, ConditionType.CREATED)["reason"] == Reason.JOB_CREATED
    assert d.status["observedGeneration"] == 1
    assert d.status["restarts"] == 0
    assert d.status["selector"] == "torchyard.io/job-name=digits,torchyard.io/job-kind=trainingjob"
    assert [e.reason for e in d.events] == [Reason.JOB_CREATED]


def test_recreate_is_idempotent_and_silent() -> None:
    first = run(tj_body())
    again = run(step(tj_body(), first), now=T0 + timedelta(seconds=5))
    assert kinds(again) == [ActionKind.CREATE]  # the Job is still missing from the cache
    assert again.events == []
    assert status_patch(first.status, again.status) == {}


def test_pending_until_every_worker_is_ready_then_running() -> None:
    created = run(tj_body())
    body = step(tj_body(), created)
    pending = run(body, job=job(active=2, ready=1), now=T0 + timedelta(seconds=1))
    assert pending.status["phase"] == Phase.PENDING
    assert pending.status["message"] == "1/2 workers ready"
    assert pending.status["workers"] == {"active": 2, "ready": 1, "succeeded": 0, "failed": 0}
    # startTime: when the worker Job was created (written with Created, one write)
    assert pending.status["startTime"] == rfc3339(T0)
    running = run(step(body, pending), job=job(active=2, ready=2), now=T0 + timedelta(seconds=2))
    assert running.status["phase"] == Phase.RUNNING
    assert cond(running, ConditionType.RUNNING)["reason"] == Reason.WORKERS_RUNNING
    assert [e.reason for e in running.events] == [Reason.WORKERS_RUNNING]
    assert running.actions == []
    # startTime stays the first one
    assert running.status["startTime"] == rfc3339(T0)


def test_first_look_at_the_created_job_writes_nothing() -> None:
    created = run(tj_body())
    assert created.status["message"] == "0/2 workers ready"
    assert created.status["startTime"] == rfc3339(T0)
    seen = run(step(tj_body(), created), job=job(active=0, ready=0), now=T0 + timedelta(seconds=1))
    assert status_patch(created.status, seen.status) == {}
    assert seen.events == []
    assert seen.actions == []


def test_a_job_found_without_its_created_write_gets_it() -> None:
    """The operator stopped between creating the Job and writing the status: the next look
    finds the Job and writes Created (and its Event) with the rest, once."""
    found = run(tj_body(), job=job(active=2, ready=1), now=T0 + timedelta(seconds=3))
    assert found.actions == []
    assert cond(found, ConditionType.CREATED)["status"] == "True"
    assert cond(found, ConditionType.CREATED)["reason"] == Reason.JOB_CREATED
    assert found.status["phase"] == Phase.PENDING
    assert [e.reason for e in found.events] == [Reason.JOB_CREATED]
    again = run(step(tj_body(), found), job=job(active=2, ready=1), now=T0 + timedelta(seconds=4))
    assert again.events == []
    assert status_patch(found.status, again.status) == {}


def test_a_held_first_status_dates_its_start_from_the_jobs_creation() -> None:
    """The first status was held for the workers (controller/status_writer.py): written 40 s
    after the Job was created, it dates startTime (activeDeadlineSeconds counts from it) and
    Created from the Job's creation, not from the write."""
    created = T0 + timedelta(seconds=2)
    written = T0 + timedelta(seconds=40)
    later = run(tj_body(), job=job(active=2, ready=2, created=created), now=written)
    assert later.status["phase"] == Phase.RUNNING
    assert later.status["startTime"] == rfc3339(created)
    assert cond(later, ConditionType.CREATED)["lastTransitionTime"] == rfc3339(created)
    assert cond(later, ConditionType.RUNNING)["lastTransitionTime"] == rfc3339(written)
    assert [e.reason for e in later.events] == [Reason.JOB_CREATED, Reason.WORKERS_RUNNING]


def test_last_transition_time_moves_only_when_status_changes() -> None:
    status: dict[str, Any] = {}
    set_condition(status, "Running", True, "A", "m1", T0)
    set_condition(status, "Running", True, "B", "m2", T0 + timedelta(seconds=9))
    c = status["conditions"][0]
    assert c["lastTransitionTime"] == rfc3339(T0)
    assert (c["reason"], c["message"]) == ("B", "m2")
    set_condition(status, "Running", False, "C", "m3", T0 + timedelta(seconds=20))
    assert status["conditions"][0]["lastTransitionTime"] == rfc3339(T0 + timedelta(seconds=20))


def test_running_job_is_a_fixed_point() -> None:
    body = tj_body()
    d = run(body)
    d = run(step(body, d), job=job(active=2, ready=2))
    again = run(step(body, d), job=job(active=2, ready=2), now=T0 + timedelta(minutes=5))
    assert status_patch(d.status, again.status) == {}
    assert again.events == []
    assert again.actions == []


# ------------------------------------------------------------------------ success


def test_complete_job_needs_pods_then_succeeds_with_result() -> None:
    body = step(tj_body(), run(tj_body()))
    finished = job(succeeded=2, complete=True)
    first = run(body, job=finished)
    assert first.needs_pods
    assert first.actions == []
    result = {
        "status": "Succeeded",
        "step": 170,
        "totalSteps": 170,
        "epoch": 30,
        "metrics": {"accuracy": 0.97, "loss": 0.1},
        "model": {"name": "digits-mlp", "version": 3, "uri": "file:///m/3", "sha256": "ab",
                  "metrics": {"accuracy": 0.97}},
        "lastCheckpoint": {"step": 170, "uri": "file:///c/170", "time": "2026-01-01T12:00:00Z"},
        "ignoredField": [1, 2],
    }
    pods = (pod(0, "Succeeded", 0, json.dumps(result, indent=2)), pod(1, "Succeeded", 0))
    d = run(body, job=finished, pods=pods, now=T0 + timedelta(minutes=1))
    assert d.status["phase"] == Phase.SUCCEEDED
    assert cond(d, ConditionType.SUCCEEDED)["status"] == "True"
    assert cond(d, ConditionType.RUNNING)["status"] == "False"
    assert d.status["completionTime"] == rfc3339(T0 + timedelta(minutes=1))
    assert d.status["model"]["version"] == 3
    # the finished run's percent and ETA replace the last live report's estimates
    assert d.status["progress"] == {"epoch": 30, "step": 170, "totalSteps": 170, "loss": 0.1,
                                    "accuracy": 0.97, "percent": 100.0, "etaSeconds": 0}
    assert d.status["lastCheckpoint"]["step"] == 170
    assert "ignoredField" not in d.status
    assert [e.reason for e in d.events] == [Reason.COMPLETED]
    # cleanPodPolicy Running (default): clean what still runs
    assert kinds(d) == [ActionKind.CLEAN_PODS]
    assert d.before_status[0].pod_policy == "Running"


def test_succeeded_is_sticky() -> None:
    body = step(tj_body(), run(tj_body()))
    done = run(body, job=job(succeeded=2, complete=True), pods=())
    later = run(step(body, done), job=None, now=T0 + timedelta(hours=1))
    assert later.status["phase"] == Phase.SUCCEEDED
    assert later.actions == []
    assert later.events == []


def test_clean_pod_policy_none_keeps_pods() -> None:
    body = tj_body(run_policy={"cleanPodPolicy": "None"})
    body = step(body, run(body))
    d = run(body, job=job(succeeded=2, complete=True), pods=())
    assert d.actions == []


# ------------------------------------------------------------------------ failures


def failed_body(run_policy: dict[str, Any] | None = None, restarts: int = 0) -> dict[str, Any]:
    body = tj_body(run_policy=run_policy)
    d = run(body)
    d.status["restarts"] = restarts
    d.status["phase"] = Phase.RUNNING
    return step(body, d)


def test_retryable_failure_restarts_the_whole_group() -> None:
    body = failed_body({"backoffLimit": 2})
    failed = job(failed=1, active=0, failed_reason="BackoffLimitExceeded", uid="attempt-0")
    d = run(body, job=failed, pods=(pod(0, "Failed", 137), pod(1, "Failed", 143)))
    assert d.status["phase"] == Phase.RESTARTING
    assert d.status["restarts"] == 1
    assert cond(d, ConditionType.RESTARTING)["reason"] == Reason.RETRYABLE_FAILURE
    assert "worker 0 exited with code 137" in d.status["message"]
    assert "restart 1/2" in d.status["message"]
    # the count is written first, the Job deleted after
    assert d.before_status == []
    assert [(a.kind, a.job_uid) for a in d.after_status] == [(ActionKind.DELETE_JOB, "attempt-0")]
    assert d.events[0].type == "Warning"


def test_restart_waits_for_the_old_job_then_creates_the_next_attempt() -> None:
    body = failed_body({"backoffLimit": 2})
    d = run(body, job=job(failed_reason="BackoffLimitExceeded"), pods=(pod(1, "Failed", 137),))
    body = step(body, d)
    # old attempt still there (deleted in the foreground): delete again if not deleting, wait
    again = run(body, job=job(restart=0, failed_reason="BackoffLimitExceeded"))
    assert kinds(again) == [ActionKind.DELETE_JOB]
    waiting = run(body, job=job(restart=0, deleting=True))
    assert waiting.actions == []
    assert waiting.status["phase"] == Phase.RESTARTING
    gone = run(body, job=None)
    assert [(a.kind, a.restart_count) for a in gone.actions] == [(ActionKind.CREATE, 1)]
    assert gone.status["phase"] == Phase.RESTARTING
    body = step(body, gone)
    back = run(body, job=job(restart=1, active=2, ready=2))
    assert back.status["phase"] == Phase.RUNNING
    assert cond(back, ConditionType.RESTARTING)["status"] == "False"
    assert "after 1 restart" in back.status["message"]


def test_backoff_limit_reached_fails_with_reason() -> None:
    body = failed_body({"backoffLimit": 1}, restarts=1)
    d = run(body, job=job(restart=1, failed_reason="BackoffLimitExceeded"),
            pods=(pod(0, "Failed", 137),))
    assert d.status["phase"] == Phase.FAILED
    assert cond(d, ConditionType.FAILED)["reason"] == Reason.BACKOFF_LIMIT_EXCEEDED
    assert d.status["restarts"] == 1
    assert ActionKind.DELETE_JOB not in kinds(d)


def test_permanent_exit_code_fails_at_once() -> None:
    body = failed_body({"backoffLimit": 5})
    message = json.dumps({"status": "Failed", "exitCode": 2, "message": "bad data path"})
    d = run(body, job=job(failed_reason="PodFailurePolicy"),
            pods=(pod(0, "Running"), pod(1, "Failed", 2, message)))
    assert d.status["phase"] == Phase.FAILED
    assert cond(d, ConditionType.FAILED)["reason"] == Reason.PERMANENT_FAILURE
    assert "worker 1 exited with code 2: bad data path" in d.status["message"]
    assert d.status["restarts"] == 0


@pytest.mark.parametrize(
    ("policy", "code", "retry"),
    [
        ({"retryPolicy": "ExitCode"}, 137, True),
        ({"retryPolicy": "ExitCode"}, 1, False),
        ({"retryPolicy": "ExitCode", "retryableExitCodes": [42]}, 42, True),
        ({"retryPolicy": "OnFailure"}, 1, True),
        ({"retryPolicy": "Never"}, 137, False),
    ],
)
def test_exit_code_classification(policy: dict[str, Any], code: int, retry: bool) -> None:
    body = failed_body({"backoffLimit": 3, **policy})
    d = run(body, job=job(failed_reason="BackoffLimitExceeded"), pods=(pod(0, "Failed", code),))
    assert (d.status["phase"] == Phase.RESTARTING) is retry


def test_failed_is_sticky_and_stops_leftover_workers() -> None:
    body = failed_body()
    d = run(body, job=job(failed_reason="PodFailurePolicy"), pods=(pod(0, "Failed", 1),))
    body = step(body, d)
    later = run(body, job=job(active=1))
    assert later.status["phase"] == Phase.FAILED
    assert kinds(later) == [ActionKind.SUSPEND_JOB]


# ------------------------------------------------------------------------ suspend / resume


def test_suspend_running_job_then_resume_resets_start_time() -> None:
    body = tj_body()
    d = run(body)
    d = run(step(body, d), job=job(active=2, ready=2))
    body = step(tj_body(run_policy={"suspend": True}, generation=2), d)
    s = run(body, job=job(active=2, ready=2), now=T0 + timedelta(minutes=1))
    assert kinds(s) == [ActionKind.SUSPEND_JOB]
    assert s.status["phase"] == Phase.SUSPENDED
    assert cond(s, ConditionType.SUSPENDED)["status"] == "True"
    assert cond(s, ConditionType.RUNNING)["status"] == "False"
    assert s.status["observedGeneration"] == 2
    body = step(body, s)
    settled = run(body, job=job(suspended=True))
    assert settled.actions == []
    assert settled.events == []
    body = step(tj_body(run_policy={"suspend": False}, generation=3), settled)
    r = run(body, job=job(suspended=True), now=T0 + timedelta(minutes=10))
    assert kinds(r) == [ActionKind.RESUME_JOB]
    assert r.status["phase"] == Phase.PENDING
    assert cond(r, ConditionType.SUSPENDED)["reason"] == Reason.RESUMED
    assert r.status["startTime"] == rfc3339(T0 + timedelta(minutes=10))
    assert [e.reason for e in r.events] == [Reason.RESUMED]


def test_created_suspended() -> None:
    d = run(tj_body(run_policy={"suspend": True}))
    assert kinds(d) == [ActionKind.CREATE]
    assert d.status["phase"] == Phase.SUSPENDED
    assert "startTime" not in d.status


def test_deadline_does_not_count_while_suspended() -> None:
    body = tj_body(run_policy={"suspend": True, "activeDeadlineSeconds": 10},
                   status={"phase": Phase.SUSPENDED, "startTime": rfc3339(T0)})
    d = run(body, job=job(suspended=True), now=T0 + timedelta(hours=1))
    assert d.status["phase"] == Phase.SUSPENDED


def test_kueue_suspended_job_waits_for_admission() -> None:
    body = tj_body(scheduling={"gang": "kueue", "queue": "team"})
    body = step(body, run(body))
    d = run(body, job=job(suspended=True))
    assert d.actions == []  # Kueue un-suspends it, not us
    assert d.status["phase"] == Phase.PENDING
    assert "admission" in d.status["message"]
    assert "startTime" not in d.status
    held = cond(d, ConditionType.SUSPENDED)
    assert (held["status"], held["reason"]) == ("True", Reason.QUEUED_BY_KUEUE)
    assert "team" in held["message"]
    assert [e.reason for e in d.events] == [Reason.QUEUED_BY_KUEUE]
    again = run(step(body, d), job=job(suspended=True))
    assert again.events == []  # said once


def test_kueue_admission_starts_the_clock_and_clears_the_hold() -> None:
    body = tj_body(scheduling={"gang": "kueue", "queue": "team"})
    body = step(body, run(body))
    body = step(body, run(body, job=job(suspended=True)))
    later = T0 + timedelta(minutes=7)
    d = run(body, job=job(active=2), now=later)
    held = cond(d, ConditionType.SUSPENDED)
    assert (held["status"], held["reason"]) == ("False", Reason.ADMITTED_BY_KUEUE)
    assert d.status["startTime"] == rfc3339(later)
    assert [e.reason for e in d.events] == [Reason.ADMITTED_BY_KUEUE]
    running = run(step(body, d), job=job(active=2, ready=2), now=later)
    assert running.status["phase"] == Phase.RUNNING
    assert Reason.ADMITTED_BY_KUEUE not in [e.reason for e in running.events]


def test_kueue_preemption_is_queued_again_not_resumed() -> None:
    body = tj_body(scheduling={"gang": "kueue", "queue": "team"})
    body = step(body, run(body))
    body = step(body, run(body, job=job(active=2, ready=2)))
    assert body["status"]["phase"] == Phase.RUNNING
    d = run(body, job=job(suspended=True, queue="team"))
    assert d.actions == []
    assert d.status["phase"] == Phase.PENDING
    assert cond(d, ConditionType.RUNNING)["status"] == "False"
    assert cond(d, ConditionType.SUSPENDED)["reason"] == Reason.QUEUED_BY_KUEUE


def test_auto_gang_job_with_kueue_label_is_left_to_kueue() -> None:
    body = step(tj_body(), run(tj_body()))  # gang: auto, resolved to kueue by the operator
    d = run(body, job=job(suspended=True, queue="team"))
    assert d.actions == []
    assert cond(d, ConditionType.SUSPENDED)["reason"] == Reason.QUEUED_BY_KUEUE


def test_job_info_reads_the_kueue_queue_label() -> None:
    info = JobInfo.from_dict(
        {"metadata": {"name": "j", "labels": {"kueue.x-k8s.io/queue-name": "team"}}}
    )
    assert info.queue == "team"
    assert JobInfo.from_dict({"metadata": {"name": "j"}}).queue is None


def _kueue_running() -> dict[str, Any]:
    body = tj_body(scheduling={"gang": "kueue", "queue": "team"})
    body = step(body, run(body))
    body = step(body, run(body, job=job(suspended=True, queue="team")))
    body = step(body, run(body, job=job(active=2, ready=2, queue="team")))
    assert body["status"]["phase"] == Phase.RUNNING
    return body


def _with_policy(body: dict[str, Any], run_policy: dict[str, Any], gen: int) -> dict[str, Any]:
    return step(
        tj_body(scheduling={"gang": "kueue", "queue": "team"}, run_policy=run_policy,
                generation=gen),
        Decision(status=body["status"]),
    )


def test_kueue_suspend_deactivates_the_workload_not_the_job() -> None:
    body = _with_policy(_kueue_running(), {"suspend": True}, 2)
    s = run(body, job=job(active=2, ready=2, queue="team"), now=T0 + timedelta(minutes=1))
    # Kueue owns Job.spec.suspend (it would un-suspend an admitted Job): never patched here.
    assert [(a.kind, a.active, a.job_uid) for a in s.actions] == [
        (ActionKind.SET_WORKLOAD_ACTIVE, False, "job-uid")
    ]
    assert s.status["phase"] == Phase.SUSPENDED
    held = cond(s, ConditionType.SUSPENDED)
    assert (held["status"], held["reason"]) == ("True", Reason.WORKLOAD_DEACTIVATED)
    assert held["reason"] != Reason.QUEUED_BY_KUEUE
    assert "team" in held["message"]
    assert cond(s, ConditionType.RUNNING)["status"] == "False"
    assert [e.reason for e in s.events] == [Reason.WORKLOAD_DEACTIVATED]
    body = step(body, s)
    # Kueue evicted and suspended the Job: the status stays, no new event; the Workload stays
    # deactivated (level-based: the reconciler patches only a Workload still active).
    settled = run(body, job=job(suspended=True, queue="team"), now=T0 + timedelta(minutes=2))
    assert [(a.kind, a.active) for a in settled.actions] == [
        (ActionKind.SET_WORKLOAD_ACTIVE, False)
    ]
    assert settled.events == []
    assert settled.status == {**s.status, "workers": settled.status["workers"]}
    assert cond(settled, ConditionType.SUSPENDED)["reason"] == Reason.WORKLOAD_DEACTIVATED


def test_kueue_resume_activates_the_workload_then_waits_for_admission() -> None:
    body = _with_policy(_kueue_running(), {"suspend": True}, 2)
    body = step(body, run(body, job=job(active=2, ready=2, queue="team")))
    body = _with_policy(body, {"suspend": False}, 3)
    resumed_at = T0 + timedelta(minutes=10)
    r = run(body, job=job(suspended=True, queue="team"), now=resumed_at)
    assert [(a.kind, a.active) for a in r.actions] == [(ActionKind.SET_WORKLOAD_ACTIVE, True)]
    assert r.status["phase"] == Phase.PENDING
    assert cond(r, ConditionType.SUSPENDED)["reason"] == Reason.RESUMED
    body = step(body, r)
    # Kueue queues it again (the Job stays suspended until admission), then admits it.
    q = run(body, job=job(suspended=True, queue="team"), now=resumed_at)
    assert q.actions == []  # no RESUME_JOB: Kueue un-suspends it
    assert cond(q, ConditionType.SUSPENDED)["reason"] == Reason.QUEUED_BY_KUEUE
    body = step(body, q)
    admitted_at = resumed_at + timedelta(minutes=1)
    a = run(body, job=job(active=2, ready=2, queue="team"), now=admitted_at)
    assert a.actions == []
    assert a.status["phase"] == Phase.RUNNING
    assert cond(a, ConditionType.SUSPENDED)["reason"] == Reason.ADMITTED_BY_KUEUE
    assert a.status["startTime"] == rfc3339(admitted_at)


def test_kueue_job_created_suspended_gets_its_workload_deactivated() -> None:
    body = tj_body(scheduling={"gang": "kueue", "queue": "team"}, run_policy={"suspend": True})
    body = step(body, run(body))
    assert cond(Decision(status=body["status"]), ConditionType.SUSPENDED)["reason"] == (
        Reason.SUSPENDED
    )
    # Kueue holds (or already admitted) the Job created suspended: deactivate its Workload.
    d = run(body, job=job(suspended=True, queue="team"))
    assert [(a.kind, a.active) for a in d.actions] == [(ActionKind.SET_WORKLOAD_ACTIVE, False)]
    assert d.status["phase"] == Phase.SUSPENDED
    assert cond(d, ConditionType.SUSPENDED)["reason"] == Reason.WORKLOAD_DEACTIVATED


def test_kueue_deadline_stops_workers_through_the_workload() -> None:
    body = tj_body(scheduling={"gang": "kueue", "queue": "team"},
                   run_policy={"activeDeadlineSeconds": 30})
    body = step(body, run(body))
    body = step(body, run(body, job=job(active=2, ready=2, queue="team")))
    d = run(body, job=job(active=2, ready=2, queue="team"), now=T0 + timedelta(minutes=5))
    assert d.status["phase"] == Phase.FAILED
    assert ActionKind.SUSPEND_JOB not in kinds(d)
    stop = d.actions[0]
    assert (stop.kind, stop.active) == (ActionKind.SET_WORKLOAD_ACTIVE, False)
    assert ActionKind.CLEAN_PODS in kinds(d)


def test_plain_job_suspend_still_patches_the_job() -> None:
    body = step(tj_body(), run(tj_body()))
    body = step(body, run(body, job=job(active=2, ready=2)))
    body = step(tj_body(run_policy={"suspend": True}, generation=2), Decision(body["status"]))
    s = run(body, job=job(active=2, ready=2))
    assert kinds(s) == [ActionKind.SUSPEND_JOB]
    assert cond(s, ConditionType.SUSPENDED)["reason"] == Reason.SUSPENDED


def _wl(name: str, owner_uid: str, *, active: bool | None = None, finished: bool = False,
        uid: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"queueName": "team"}
    if active is not None:
        spec["active"] = active
    conds = [{"type": "Finished", "status": "True"}] if finished else []
    return {
        "metadata": {
            "name": name,
            "uid": uid or f"uid-{name}",
            "ownerReferences": [
                {"apiVersion": "batch/v1", "kind": "Job", "name": "digits", "uid": owner_uid,
                 "controller": True}
            ],
        },
        "spec": spec,
        "status": {"conditions": conds},
    }


def test_workload_step_patches_the_workload_owned_by_the_job() -> None:
    others = [_wl("other", "other-job"), _wl("old", "job-uid", finished=True)]
    mine = _wl("job-digits-abc", "job-uid")  # spec.active absent: Kueue's default, true
    st = workload_step([*others, mine], "job-uid", False)
    assert st.retry is None
    assert st.name == "job-digits-abc"
    assert st.patch == {"metadata": {"uid": "uid-job-digits-abc"}, "spec": {"active": False}}
    back = workload_step([_wl("w", "job-uid", active=False)], "job-uid", True)
    assert (back.name, back.patch) == ("w", {"metadata": {"uid": "uid-w"},
                                             "spec": {"active": True}})


@pytest.mark.parametrize(
    ("workloads", "active"),
    [
        ([_wl("w", "job-uid", active=False)], False),
        ([_wl("w", "job-uid")], True),
        ([_wl("w", "job-uid", active=True)], True),
        ([], True),  # none yet: Kueue makes it active
        ([_wl("w", "job-uid", active=True, finished=True)], False),  # past changing
    ],
)
def test_workload_step_nothing_to_do(workloads: list[dict[str, Any]], active: bool) -> None:
    st = workload_step(workloads, "job-uid", active)
    assert (st.name, st.patch, st.retry) == (None, None, None)


@pytest.mark.parametrize("workloads", [[], [_wl("other", "other-job")]])
def test_workload_step_missing_workload_is_retried(workloads: list[dict[str, Any]]) -> None:
    st = workload_step(workloads, "job-uid", False)
    assert st.name is None
    assert st.retry is not None
    assert "job-uid" in st.retry


def test_plain_job_left_suspended_is_resumed() -> None:
    body = step(tj_body(), run(tj_body()))
    d = run(body, job=job(suspended=True))
    assert kinds(d) == [ActionKind.RESUME_JOB]


# ------------------------------------------------------------------------ deadline / TTL


def test_active_deadline_fails_and_stops_workers() -> None:
    body = tj_body(run_policy={"activeDeadlineSeconds": 30})
    d = run(body)
    d = run(step(body, d), job=job(active=2, ready=2))
    body = step(body, d)
    assert lifetime_due(body, T0 + timedelta(seconds=29)) is None
    assert lifetime_due(body, T0 + timedelta(seconds=31)) == "deadline"
    late = run(body, job=job(active=2, ready=2), now=T0 + timedelta(seconds=31))
    assert late.status["phase"] == Phase.FAILED
    assert cond(late, ConditionType.FAILED)["reason"] == Reason.DEADLINE_EXCEEDED
    assert kinds(late) == [ActionKind.SUSPEND_JOB, ActionKind.CLEAN_PODS]


def test_ttl_due_after_completion() -> None:
    status = {"phase": Phase.SUCCEEDED, "completionTime": rfc3339(T0)}
    body = tj_body(run_policy={"ttlSecondsAfterFinished": 60}, status=status)
    assert lifetime_due(body, T0 + timedelta(seconds=59)) is None
    assert lifetime_due(body, T0 + timedelta(seconds=60)) == "ttl"
    running = tj_body(run_policy={"ttlSecondsAfterFinished": 0}, status={"phase": "Running"})
    assert lifetime_due(running, T0 + timedelta(days=1)) is None


# ------------------------------------------------------------------------ invalid / stale


def test_reserved_env_that_slipped_through_fails_with_a_clear_condition() -> None:
    body = tj_body(env=[{"name": "MASTER_ADDR", "value": "x"}])
    d = run(body)
    assert d.actions == []
    assert d.status["phase"] == Phase.FAILED
    c = cond(d, ConditionType.FAILED)
    assert c["reason"] == Reason.INVALID_SPEC
    assert "spec.env" in c["message"]
    assert "reserved" in c["message"]


def test_lost_count_write_trusts_the_newer_job() -> None:
    body = step(tj_body(), run(tj_body()))
    d = run(body, job=job(restart=2, active=2, ready=2))
    assert d.status["restarts"] == 2
    assert d.status["phase"] == Phase.RUNNING


# ------------------------------------------------------------------------ blocked children

QUOTA = (
    'jobs.batch "digits" is forbidden: exceeded quota: no-jobs, requested: count/jobs.batch=1, '
    "used: count/jobs.batch=0, limited: count/jobs.batch=0"
)
RBAC = (
    'jobs.batch is forbidden: User "system:serviceaccount:ops:torchyard" cannot create '
    'resource "jobs" in API group "batch" in the namespace "ml"'
)


def blocked(body: dict[str, Any], reason: str, message: str, now: datetime = T0) -> Decision:
    return decide_blocked(JobView.from_body(body), Observed(now=now), reason, message)


def held_then_created(d: Decision, reason: str, message: str) -> Decision:
    """``d`` held the job: retried while the cause holds, it writes and says nothing new; once
    the cause is gone, the next reconcile creates the children. Returns that decision."""
    body = step(tj_body(), d)
    again = blocked(body, reason, message, now=T0 + timedelta(seconds=30))
    assert again.events == []
    assert status_patch(d.status, again.status) == {}
    go = run(body, now=T0 + timedelta(seconds=60))
    assert kinds(go) == [ActionKind.CREATE]
    return go


@pytest.mark.parametrize(
    ("kind", "api_version", "code", "message", "reason", "temporary"),
    [
        ("Job", "batch/v1", 403, QUOTA, Reason.QUOTA_EXCEEDED, True),
        (
            "ConfigMap",
            "v1",
            403,
            'configmaps "x" is forbidden: exceeded quota: q, requested: count/configmaps=1',
            Reason.QUOTA_EXCEEDED,
            True,
        ),
        (
            "Job",
            "batch/v1",
            403,
            "status unknown for quota: no-jobs, resources: count/jobs.batch",
            Reason.QUOTA_EXCEEDED,
            True,
        ),
        ("Job", "batch/v1", 403, RBAC, Reason.CREATE_FORBIDDEN, True),
        (
            "Service",
            "v1",
            403,
            'services "x" is forbidden: unable to create new content in namespace ml because '
            "it is being terminated",
            Reason.CREATE_FORBIDDEN,
            True,
        ),
        (
            "Job",
            "batch/v1",
            403,
            'admission webhook "validate.kyverno.svc" denied the request: no GPUs here',
            Reason.INVALID_SPEC,
            False,
        ),
        (
            "Job",
            "batch/v1",
            422,
            'Job.batch "x" is invalid: spec.x: Invalid value',
            Reason.INVALID_SPEC,
            False,
        ),
        ("Service", "v1", 400, "bad request", Reason.INVALID_SPEC, False),
        (
            "PodGroup",
            "scheduling.volcano.sh/v1beta1",
            404,
            "404 Not Found",
            Reason.GANG_SCHEDULER_MISSING,
            True,
        ),
        ("Job", "batch/v1", 404, 'namespaces "ml" not found', None, None),
        ("Job", "batch/v1", 500, "etcdserver: request timed out", None, None),
        ("Job", "batch/v1", 429, "too many requests", None, None),
    ],
)
def test_classify_refusal(
    kind: str, api_version: str, code: int, message: str, reason: str | None, temporary: bool | None
) -> None:
    r = classify_refusal(kind, api_version, code, message, "volcano")
    if reason is None:
        assert r is None  # an ordinary error: retried a bounded number of times
        return
    assert r is not None
    assert (r.reason, r.temporary) == (reason, temporary)
    if reason != Reason.GANG_SCHEDULER_MISSING:
        assert message in r.message  # the API server's own words


def test_quota_keeps_the_job_pending_says_why_once_then_proceeds() -> None:
    r = classify_refusal("Job", "batch/v1", 403, QUOTA)
    assert r is not None
    d = blocked(tj_body(), r.reason, r.message)
    assert d.actions == []
    assert d.status["phase"] == Phase.PENDING
    assert d.status["message"] == r.message
    c = cond(d, ConditionType.CREATED)
    assert (c["status"], c["reason"]) == ("False", Reason.QUOTA_EXCEEDED)
    assert "exceeded quota: no-jobs" in c["message"]
    assert [(e.type, e.reason) for e in d.events] == [("Warning", Reason.QUOTA_EXCEEDED)]
    assert QUOTA in d.events[0].message
    assert "startTime" not in d.status  # activeDeadlineSeconds does not run down meanwhile
    # retried while the quota holds; the quota is raised: the children are created as usual
    go = held_then_created(d, r.reason, r.message)
    c = cond(go, ConditionType.CREATED)
    assert (c["status"], c["reason"]) == ("True", Reason.JOB_CREATED)
    assert go.status["phase"] == Phase.PENDING
    assert go.status["message"] == "0/2 workers ready"
    assert [e.reason for e in go.events] == [Reason.JOB_CREATED]


def test_blocked_restart_keeps_its_phase_and_count() -> None:
    body = failed_body({"backoffLimit": 2})
    d = run(body, job=job(failed_reason="BackoffLimitExceeded"), pods=(pod(1, "Failed", 137),))
    body = step(body, d)
    assert [(a.kind, a.restart_count) for a in run(body).actions] == [(ActionKind.CREATE, 1)]
    b = blocked(body, Reason.QUOTA_EXCEEDED, "quota")
    assert b.status["phase"] == Phase.RESTARTING
    assert b.status["restarts"] == 1
    assert cond(b, ConditionType.CREATED)["reason"] == Reason.QUOTA_EXCEEDED
    assert cond(b, ConditionType.RESTARTING)["status"] == "True"


def test_forbidden_podgroup_says_how_the_chart_grants_it() -> None:
    denied = (
        'podgroups.scheduling.volcano.sh is forbidden: User "system:serviceaccount:ops:ty" '
        'cannot create resource "podgroups" in API group "scheduling.volcano.sh"'
    )
    r = classify_refusal("PodGroup", "scheduling.volcano.sh/v1beta1", 403, denied, "volcano")
    assert r is not None
    assert (r.reason, r.temporary) == (Reason.CREATE_FORBIDDEN, True)
    assert denied in r.message
    assert "rbac.podGroups.volcano=true" in r.message


def test_missing_gang_scheduler_names_the_field_and_what_to_install() -> None:
    volcano = classify_refusal(
        "PodGroup", "scheduling.volcano.sh/v1beta1", 404, "404 Not Found", "volcano"
    )
    assert volcano is not None
    assert volcano.temporary
    for part in ("spec.scheduling.gang is volcano", "scheduling.volcano.sh/v1beta1", "Volcano"):
        assert part in volcano.message
    assert "install" in volcano.message
    cosched = classify_refusal(
        "PodGroup", "scheduling.x-k8s.io/v1alpha1", 404, "", "auto (resolved to coscheduling)"
    )
    assert cosched is not None
    assert "spec.scheduling.gang is auto (resolved to coscheduling)" in cosched.message
    assert "scheduling.x-k8s.io/v1alpha1" in cosched.message
    assert "coscheduling plugin" in cosched.message
    d = blocked(tj_body(scheduling={"gang": "volcano"}), volcano.reason, volcano.message)
    assert d.status["phase"] == Phase.PENDING
    assert cond(d, ConditionType.CREATED)["reason"] == Reason.GANG_SCHEDULER_MISSING
    assert [(e.type, e.reason) for e in d.events] == [("Warning", Reason.GANG_SCHEDULER_MISSING)]
    # a different reason later is news: one more event
    other = blocked(step(tj_body(), d), Reason.QUOTA_EXCEEDED, "quota")
    assert [e.reason for e in other.events] == [Reason.QUOTA_EXCEEDED]


def test_blocked_compression_job_leaves_waiting_for_pending() -> None:
    d = run(cj_body(), source=SourceInfo(found=True, phase=Phase.RUNNING))
    assert d.status["phase"] == Phase.WAITING
    b = blocked(step(cj_body(), d), Reason.QUOTA_EXCEEDED, "quota")
    assert b.status["phase"] == Phase.PENDING
    assert b.status["message"] == "quota"


# ------------------------------------------------------------------------ CompressionJob


def test_compression_job_waits_for_its_training_job() -> None:
    first = run(cj_body())
    assert first.needs_source
    assert first.actions == []
    d = run(cj_body(), source=SourceInfo(found=False))
    assert d.status["phase"] == Phase.WAITING
    assert cond(d, ConditionType.WAITING)["reason"] == Reason.WAITING_FOR_SOURCE
    assert "not found" in d.status["message"]
    assert d.actions == []
    body = step(cj_body(), d)
    still = run(body, source=SourceInfo(found=True, phase=Phase.RUNNING))
    assert still.status["phase"] == Phase.WAITING
    assert still.actions == []
    assert still.events == []  # no new event: the condition did not change
    model = {"name": "digits-mlp", "version": 1, "uri": "file:///m/1"}
    go = run(body, source=SourceInfo(found=True, phase=Phase.SUCCEEDED, model=model))
    assert kinds(go) == [ActionKind.CREATE]
    assert cond(go, ConditionType.WAITING)["status"] == "False"
    assert cond(go, ConditionType.WAITING)["reason"] == Reason.SOURCE_READY
    assert go.status["phase"] == Phase.PENDING
    assert [e.reason for e in go.events] == [Reason.SOURCE_READY, Reason.JOB_CREATED]
    # once created, the source is not consulted again
    after = run(step(body, go), job=job(active=1, ready=1))
    assert not after.needs_source


def test_compression_job_fails_when_its_source_failed() -> None:
    d = run(cj_body(), source=SourceInfo(found=True, phase=Phase.FAILED))
    assert d.status["phase"] == Phase.FAILED
    assert cond(d, ConditionType.FAILED)["reason"] == Reason.SOURCE_FAILED


def test_compression_result_fills_report_and_model() -> None:
    model = {"name": "digits-mlp", "version": 1, "uri": "file:///m/1"}
    body = cj_body()
    body = step(body, run(body, source=SourceInfo(found=True, model=model)))
    result = {
        "status": "Succeeded",
        "model": {"name": "digits-mlp-pruned", "version": 1, "uri": "file:///p/1"},
        "report": {"baseline": {"accuracy": 0.97, "params": 100}, "compressed": {"params": 10},
                   "ratios": {"size": 4.0}, "accuracyDelta": -0.004, "passed": True},
        "trials": [{"name": "sparsity=0.9", "passed": True}, {"bogus": 1}],
    }
    d = run(body, job=job(succeeded=1, complete=True),
            pods=(pod(0, "Succeeded", 0, json.dumps(result)),))
    assert d.status["phase"] == Phase.SUCCEEDED
    assert d.status["report"]["ratios"]["size"] == 4.0
    assert d.status["report"]["passed"] is True
    assert d.status["model"]["name"] == "digits-mlp-pruned"
    assert d.status["trials"] == [{"name": "sparsity=0.9", "params": {}, "passed": True}]
    assert "selector" not in d.status


# ------------------------------------------------------------------------ helpers


def test_parse_result_tolerates_noise() -> None:
    assert parse_result(None) is None
    assert parse_result("Traceback ...") is None
    assert parse_result('log line\n{"a": 1}') == {"a": 1}
    assert parse_result("[1, 2]") is None


def test_pod_info_reads_exit_code_index_and_message() -> None:
    p = PodInfo.from_dict({
        "metadata": {"name": "x-1", "annotations": {
            "batch.kubernetes.io/job-completion-index": "1"}},
        "status": {"phase": "Failed", "containerStatuses": [{
            "name": "worker",
            "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled", "message": "m"}},
        }]},
    })
    assert (p.index, p.exit_code, p.reason, p.message) == (1, 137, "OOMKilled", "m")


def test_job_info_reads_conditions_and_attempt() -> None:
    j = JobInfo.from_dict({
        "metadata": {"name": "d", "uid": "u", "annotations": {"torchyard.io/restart-count": "2"}},
        "spec": {"suspend": False},
        "status": {"active": 1, "ready": 1, "conditions": [
            {"type": "FailureTarget", "status": "True", "reason": "PodFailurePolicy"},
            {"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "message": "m"},
        ]},
    })
    assert j.restart_count == 2
    assert j.failed_reason == "PodFailurePolicy"
    assert j.finished
    target_only = JobInfo.from_dict({"metadata": {}, "status": {"conditions": [
        {"type": "FailureTarget", "status": "True", "reason": "PodFailurePolicy"}]}})
    assert not target_only.finished  # pods may still be terminating


def test_examples_parse_as_views() -> None:
    import yaml

    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            view = JobView.from_body(doc)
            assert view.parsed is not None, (path, view.invalid)


def test_status_patch_sets_and_clears_keys() -> None:
    assert status_patch({"a": 1, "b": 2}, {"a": 1, "c": 3}) == {"c": 3, "b": None}
