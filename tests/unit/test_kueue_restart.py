"""A whole-group restart of a job Kueue manages (issue 15): the failed Job's Workload finished
with it, so the next attempt's Job is queued and admitted anew. What the job says meanwhile:
phase Restarting (not Pending) while the new Job waits for admission, the queue named."""

from __future__ import annotations

from typing import Any

from tests.unit.test_status import cond, job, kinds, pod, run, step, tj_body
from torchyard.api.constants import ConditionType, Phase, Reason
from torchyard.api.contract import Label
from torchyard.state import ActionKind, Decision


def _running(labels: dict[str, str]) -> dict[str, Any]:
    body = tj_body(run_policy={"backoffLimit": 2})
    body["metadata"]["labels"] = labels
    body = step(body, run(body))
    body = step(body, run(body, job=job(suspended=True, queue="team")))
    body = step(body, run(body, job=job(active=2, ready=2, queue="team")))
    assert body["status"]["phase"] == Phase.RUNNING
    return body


def _failed(body: dict[str, Any]) -> Decision:
    failed = job(failed_reason="BackoffLimitExceeded", queue="team", uid="attempt-0")
    return run(body, job=failed, pods=(pod(1, "Failed", 137),))


def test_a_restart_under_kueue_says_the_new_job_queues_again() -> None:
    d = _failed(_running({Label.KUEUE_QUEUE_NAME: "team"}))
    assert d.status["phase"] == Phase.RESTARTING
    assert "the new worker Job queues again in LocalQueue team" in d.status["message"]
    assert [a.kind for a in d.after_status] == [ActionKind.DELETE_JOB]


def test_a_restart_without_kueue_says_nothing_of_a_queue() -> None:
    body = tj_body(run_policy={"backoffLimit": 2})
    body = step(body, run(body))
    body = step(body, run(body, job=job(active=2, ready=2)))
    d = run(body, job=job(failed_reason="BackoffLimitExceeded"), pods=(pod(1, "Failed", 137),))
    assert d.status["phase"] == Phase.RESTARTING
    assert "queue" not in d.status["message"]


def test_the_restarted_attempt_waits_for_admission_as_restarting() -> None:
    running = _running({Label.KUEUE_QUEUE_NAME: "team"})
    body = step(running, _failed(running))
    body = step(body, run(body))  # the old Job is gone: the next attempt is created
    assert body["status"]["restarts"] == 1
    # The new Job (attempt 1) is held by Kueue: the job stays Restarting, queued.
    d = run(body, job=job(restart=1, suspended=True, queue="team", uid="attempt-1"))
    assert d.actions == []
    assert d.status["phase"] == Phase.RESTARTING
    assert d.status["message"].startswith("restarting: queued by Kueue in LocalQueue team")
    held = cond(d, ConditionType.SUSPENDED)
    assert (held["status"], held["reason"]) == ("True", Reason.QUEUED_BY_KUEUE)
    assert cond(d, ConditionType.RESTARTING)["status"] == "True"
    # Admitted: the workers run and the restart is over.
    body = step(body, d)
    up = run(body, job=job(restart=1, active=2, ready=2, queue="team", uid="attempt-1"))
    assert kinds(up) == []
    assert up.status["phase"] == Phase.RUNNING
    assert cond(up, ConditionType.SUSPENDED)["reason"] == Reason.ADMITTED_BY_KUEUE
    assert cond(up, ConditionType.RESTARTING)["status"] == "False"
