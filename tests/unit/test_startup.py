"""Workers that cannot start (torchyard/state/startup.py): a worker pod waiting on an image it
cannot pull says so in the job's status, with one Warning Event, and the job is looked at
again while its workers are not all up."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from torchyard.api.constants import ConditionType, Phase, Reason
from torchyard.state import JobInfo, JobView, Observed, PodInfo, decide, get_condition
from torchyard.state.conditions import set_condition
from torchyard.state.startup import MAX_RECHECK_SECONDS, RECHECK_SECONDS

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
IMAGE = "registry.example/torchyard/trainer:nope"


def _body(status: dict[str, Any]) -> dict[str, Any]:
    """A job whose worker Job was created (and said so: the Created write is not the news)."""
    if status and not get_condition(status, ConditionType.CREATED):
        status = dict(status)
        set_condition(status, ConditionType.CREATED, True, Reason.JOB_CREATED, "created", T0)
    return {
        "apiVersion": "torchyard.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "digits", "namespace": "ml", "generation": 1, "uid": "u1"},
        "spec": {
            "workers": 2,
            "model": {"builtin": "mlp"},
            "data": {"builtin": "digits"},
            "output": {"storage": "pvc://models/store"},
        },
        "status": status,
    }


def _job() -> JobInfo:
    return JobInfo(name="digits-workers", uid="j1", restart_count=0, active=2)


def _pod(index: int, reason: str | None, message: str | None = None) -> dict[str, Any]:
    state = {"waiting": {"reason": reason, "message": message}} if reason else {"running": {}}
    return {
        "metadata": {
            "name": f"digits-{index}",
            "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
        },
        "status": {"phase": "Pending", "containerStatuses": [{"name": "worker", "state": state}]},
    }


def _decide(status: dict[str, Any], pods: list[dict[str, Any]] | None) -> Any:
    listed = None if pods is None else tuple(PodInfo.from_dict(p) for p in pods)
    obs = Observed(now=T0, job=_job(), pods=listed)
    return decide(JobView.from_body(_body(status)), obs)


def test_pending_workers_ask_for_their_pods_and_a_recheck() -> None:
    decision = _decide({"phase": Phase.PENDING}, None)
    assert decision.needs_pods
    assert decision.recheck_after is not None
    assert decision.recheck_after > 0


def test_a_young_attempt_does_not_list_its_pods_until_it_is_a_recheck_old() -> None:
    # In a burst every change of a young Job's counts reconciles the job; listing its pods each
    # time cost ~5 namespace-wide lists per job. A stuck pod is only looked for from 10 s on.
    body = JobView.from_body(_body({"phase": Phase.PENDING}))
    young = replace(_job(), created=T0 - timedelta(seconds=3))
    decision = decide(body, Observed(now=T0, job=young))
    assert not decision.needs_pods
    assert decision.recheck_after == RECHECK_SECONDS - 3  # the look comes when it is 10 s old
    old = replace(_job(), created=T0 - timedelta(seconds=RECHECK_SECONDS))
    decision = decide(body, Observed(now=T0, job=old))
    assert decision.needs_pods
    assert decision.recheck_after == RECHECK_SECONDS


def test_workers_waiting_long_are_looked_at_less_often() -> None:
    body = JobView.from_body(_body({"phase": Phase.PENDING}))

    def recheck(age: float) -> float | None:
        job = replace(_job(), created=T0 - timedelta(seconds=age))
        return decide(body, Observed(now=T0, job=job)).recheck_after

    assert recheck(20) == RECHECK_SECONDS
    assert recheck(90) == 30
    assert recheck(3600) == MAX_RECHECK_SECONDS


def test_the_jobs_own_events_do_not_list_its_pods_again_before_the_interval() -> None:
    # A Job whose pods are created slowly changes its counts many times; each change
    # reconciles the job, and each used to list its pods. Looks are spaced by the clock.
    body = JobView.from_body(_body({"phase": Phase.PENDING}))
    job = replace(_job(), created=T0 - timedelta(seconds=30))
    listed = Observed(now=T0, job=job, pods_listed_at=T0 - timedelta(seconds=4))
    decision = decide(body, listed)
    assert not decision.needs_pods
    assert decision.recheck_after == RECHECK_SECONDS - 4  # the next look is due then
    due = Observed(now=T0, job=job, pods_listed_at=T0 - timedelta(seconds=RECHECK_SECONDS))
    assert decide(body, due).needs_pods


def test_job_info_reads_the_attempts_creation_time() -> None:
    job = JobInfo.from_dict(
        {"metadata": {"name": "j", "uid": "u", "creationTimestamp": "2026-01-01T11:59:57Z"}}
    )
    assert job.created == T0 - timedelta(seconds=3)


def test_an_image_that_cannot_be_pulled_is_named_in_the_running_condition() -> None:
    pull = f'Back-off pulling image "{IMAGE}"'
    pods = [_pod(0, None), _pod(1, "ImagePullBackOff", pull)]
    decision = _decide({"phase": Phase.PENDING}, pods)
    running = get_condition(decision.status, ConditionType.RUNNING)
    assert running is not None
    assert running["status"] == "False"
    assert running["reason"] == Reason.IMAGE_PULL_FAILED
    assert "worker 1 cannot start: ImagePullBackOff" in running["message"]
    assert IMAGE in running["message"]
    assert IMAGE in decision.status["message"]
    assert decision.status["phase"] == Phase.PENDING
    assert [e.reason for e in decision.events] == [Reason.IMAGE_PULL_FAILED]
    # The next look at the same pods: the condition stays, no second Event.
    again = _decide(decision.status, pods)
    assert not again.events
    assert get_condition(again.status, ConditionType.RUNNING) == running


def test_a_missing_secret_is_a_worker_start_failure() -> None:
    pods = [_pod(0, "CreateContainerConfigError", 'secret "creds" not found'), _pod(1, None)]
    decision = _decide({"phase": Phase.PENDING}, pods)
    running = get_condition(decision.status, ConditionType.RUNNING)
    assert running is not None
    assert running["reason"] == Reason.WORKER_START_FAILED
    assert 'secret "creds" not found' in running["message"]


def test_pods_that_are_only_starting_are_not_stuck() -> None:
    decision = _decide({"phase": Phase.PENDING}, [_pod(0, "ContainerCreating"), _pod(1, None)])
    assert get_condition(decision.status, ConditionType.RUNNING) is None
    assert not decision.events


def test_pods_are_not_listed_while_every_active_pod_is_ready() -> None:
    # In a burst most workers are not created yet (the Job controller is behind): a pod that
    # does not exist cannot be stuck, and the look cost one namespace-wide pod list per job.
    body = JobView.from_body(_body({"phase": Phase.PENDING}))
    old = T0 - timedelta(seconds=3 * RECHECK_SECONDS)
    for active, ready in ((0, 0), (1, 1)):
        job = replace(_job(), created=old, active=active, ready=ready)
        decision = decide(body, Observed(now=T0, job=job))
        assert not decision.needs_pods, (active, ready)
        assert decision.status["message"] == f"{ready}/2 workers ready"
    # One pod exists and is not ready: it may be stuck, so it is looked at.
    job = replace(_job(), created=old, active=2, ready=1)
    assert decide(body, Observed(now=T0, job=job)).needs_pods


def test_the_look_waits_for_a_pod_that_has_waited_not_for_an_old_job() -> None:
    # The Job is a minute old but its pod was created (active > ready) 3 s ago: the Job
    # controller was behind. The pod is looked at when it has waited 10 s.
    body = JobView.from_body(_body({"phase": Phase.PENDING}))
    job = replace(_job(), created=T0 - timedelta(seconds=60), active=2, ready=0)
    recent = Observed(now=T0, job=job, unready_since=T0 - timedelta(seconds=3))
    decision = decide(body, recent)
    assert not decision.needs_pods
    assert decision.recheck_after == RECHECK_SECONDS - 3
    waited = replace(recent, unready_since=T0 - timedelta(seconds=RECHECK_SECONDS))
    assert decide(body, waited).needs_pods
