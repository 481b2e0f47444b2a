"""Failure handling on the real control plane: a retryable worker exit restarts the whole
group (counted against backoffLimit) and the job still succeeds; failing past backoffLimit
fails the job with that reason; a non-retryable exit code fails it at once."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes import client
from tests.cluster.opkit import (
    condition,
    create,
    event_reasons,
    example,
    get,
    held,
    release,
    running_operator,
    settle,
    the_event,
    wait_phase,
    wait_running_pods,
    with_pod_annotations,
    worker_jobs,
)

from torchyard.api.constants import ConditionType, Phase, Reason
from torchyard.api.contract import Annotation
from torchyard_devcluster import EXIT_CODE_ANNOTATION, set_pod_exit
from torchyard_devcluster.testing import Kube, poll

pytestmark = pytest.mark.cluster



def _ddp(backoff_limit: int) -> dict:  # type: ignore[type-arg]
    m = example("digits-ddp.yaml")
    m["spec"]["runPolicy"] = {"backoffLimit": backoff_limit}
    return m


def _attempt(pod: object) -> str:
    return str(pod.metadata.annotations[Annotation.RESTART_COUNT])  # type: ignore[attr-defined]


def test_retryable_failure_restarts_the_group_then_succeeds(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    with running_operator(kube, namespace, tmp_path):
        create(kube, namespace, held(_ddp(backoff_limit=2)))
        first = wait_running_pods(kube, namespace, "digits-ddp", 2)
        wait_phase(kube, namespace, "TrainingJob", "digits-ddp", Phase.RUNNING)
        assert {_attempt(p) for p in first} == {"0"}
        # Rank 1 is OOM-killed (137: retryable); rank 0 keeps running.
        rank1 = next(
            p
            for p in first
            if p.metadata.annotations["batch.kubernetes.io/job-completion-index"] == "1"
        )
        set_pod_exit(kube.api_client, rank1.metadata.name, namespace, 137, reason="OOMKilled")

        # The whole group is replaced by attempt 1 (both ranks new pods).
        def second_attempt() -> list | None:  # type: ignore[type-arg]
            pods = wait_running_pods(kube, namespace, "digits-ddp", 2)
            return pods if {_attempt(p) for p in pods} == {"1"} else None

        second = poll(second_attempt, timeout=180, what="the restarted group")
        assert not {p.metadata.uid for p in second} & {p.metadata.uid for p in first}
        running = wait_phase(kube, namespace, "TrainingJob", "digits-ddp", Phase.RUNNING)
        assert running["status"]["restarts"] == 1
        restarting = condition(running, ConditionType.RESTARTING)
        assert restarting["status"] == "False"
        env = {e.name: e.value for e in second[0].spec.containers[0].env}
        assert env["TORCHYARD_RESTART_COUNT"] == "1"

        release(kube, namespace, second)
        done = wait_phase(kube, namespace, "TrainingJob", "digits-ddp", Phase.SUCCEEDED)
        assert done["status"]["restarts"] == 1
        reasons = poll(
            lambda: (
                (r := event_reasons(kube, namespace, "digits-ddp")) and Reason.COMPLETED in r and r
            ),
            what="events",
        )
        assert reasons.count(Reason.RETRYABLE_FAILURE) == 1
        assert len(worker_jobs(kube, namespace)) == 1


def test_failing_past_backoff_limit_fails_with_reason(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    manifest = with_pod_annotations(
        _ddp(backoff_limit=1), {EXIT_CODE_ANNOTATION: "137", "kwok.torchyard.io/delay": "200ms"}
    )
    with running_operator(kube, namespace, tmp_path):
        create(kube, namespace, manifest)
        failed = wait_phase(kube, namespace, "TrainingJob", "digits-ddp", Phase.FAILED)
        st = failed["status"]
        cond = condition(failed, ConditionType.FAILED)
        assert cond["reason"] == Reason.BACKOFF_LIMIT_EXCEEDED
        assert "exited with code 137" in cond["message"]
        assert st["restarts"] == 1
        assert st["completionTime"]
        # The last attempt's Job stays for inspection; it is attempt 1.
        (job,) = worker_jobs(kube, namespace)
        assert job.metadata.annotations[Annotation.RESTART_COUNT] == "1"
        reasons = poll(
            lambda: (
                (r := event_reasons(kube, namespace, "digits-ddp"))
                and Reason.BACKOFF_LIMIT_EXCEEDED in r
                and r
            ),
            what="events",
        )
        assert reasons.count(Reason.RETRYABLE_FAILURE) == 1


def test_non_retryable_exit_code_fails_at_once(kube: Kube, namespace: str, tmp_path: Path) -> None:
    manifest = with_pod_annotations(
        _ddp(backoff_limit=5), {EXIT_CODE_ANNOTATION: "2", "kwok.torchyard.io/delay": "200ms"}
    )
    with running_operator(kube, namespace, tmp_path):
        create(kube, namespace, manifest)
        failed = wait_phase(kube, namespace, "TrainingJob", "digits-ddp", Phase.FAILED)
        cond = condition(failed, ConditionType.FAILED)
        assert cond["reason"] == Reason.PERMANENT_FAILURE
        assert "exited with code 2" in cond["message"]
        assert failed["status"]["restarts"] == 0
        (job,) = worker_jobs(kube, namespace)
        assert job.metadata.annotations[Annotation.RESTART_COUNT] == "0"
        assert any(
            c.type == "Failed" and c.reason == "PodFailurePolicy"
            for c in job.status.conditions or []
        )
        # and it stays that way: no restart is attempted later
        settle(3)
        (job,) = worker_jobs(kube, namespace)
        assert job.metadata.annotations[Annotation.RESTART_COUNT] == "0"


# ---------------------------------------------------------------------- refused children


def _quota(kube: Kube, namespace: str, jobs: str) -> None:
    body = {"metadata": {"name": "jobs"}, "spec": {"hard": {"count/jobs.batch": jobs}}}
    try:
        kube.core.create_namespaced_resource_quota(namespace, body)
    except client.ApiException as e:
        if e.status != 409:
            raise
        kube.core.patch_namespaced_resource_quota("jobs", namespace, body)
    # the quota controller has counted it: admission now judges by it
    poll(
        lambda: (
            (q := kube.core.read_namespaced_resource_quota("jobs", namespace)).status
            and (q.status.hard or {}).get("count/jobs.batch") == jobs
        ),
        what=f"quota count/jobs.batch={jobs} in force",
    )


def test_exhausted_quota_keeps_the_job_pending_until_it_is_raised(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    _quota(kube, namespace, "0")
    with running_operator(kube, namespace, tmp_path) as op:
        create(kube, namespace, example("digits-ddp.yaml"))

        def blocked() -> dict | None:  # type: ignore[type-arg]
            tj = get(kube, namespace, "TrainingJob", "digits-ddp") or {}
            conds = (tj.get("status") or {}).get("conditions") or []
            return tj if any(c["reason"] == Reason.QUOTA_EXCEEDED for c in conds) else None

        tj = poll(blocked, what="Created=False QuotaExceeded")
        assert tj["status"]["phase"] == Phase.PENDING
        created = condition(tj, ConditionType.CREATED)
        assert created["status"] == "False"
        # the API server's own words
        assert "exceeded quota: jobs" in created["message"]
        assert "count/jobs.batch" in created["message"]
        assert tj["status"]["message"] == created["message"]
        assert "startTime" not in tj["status"]
        event = the_event(kube, namespace, "digits-ddp", Reason.QUOTA_EXCEEDED)
        assert event.type == "Warning"
        assert "exceeded quota: jobs" in event.message
        # retried with backoff, still held, said once
        settle(4)
        tj = get(kube, namespace, "TrainingJob", "digits-ddp")
        assert tj is not None
        assert tj["status"]["phase"] == Phase.PENDING
        assert worker_jobs(kube, namespace) == []
        assert event_reasons(kube, namespace, "digits-ddp").count(Reason.QUOTA_EXCEEDED) == 1
        metrics = op.metrics()
        assert 'torchyard_api_errors_total{code="403",resource="jobs",verb="create"}' in metrics
        assert 'torchyard_reconcile_errors_total{kind="TrainingJob"}' in metrics

        # The quota is raised: the next retry (backoff capped at 30 s) creates the Job.
        _quota(kube, namespace, "1")
        done = wait_phase(kube, namespace, "TrainingJob", "digits-ddp", Phase.SUCCEEDED)
        created = condition(done, ConditionType.CREATED)
        assert (created["status"], created["reason"]) == ("True", Reason.JOB_CREATED)
        reasons = poll(
            lambda: (
                (r := event_reasons(kube, namespace, "digits-ddp")) and Reason.COMPLETED in r and r
            ),
            what="events",
        )
        assert reasons.count(Reason.QUOTA_EXCEEDED) == 1
        assert reasons.count(Reason.JOB_CREATED) == 1


def test_a_child_the_api_server_finds_invalid_fails_the_job_at_once(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    # A pod label value longer than 63 characters: the CRD does not check label values, the
    # API server refuses the worker Job (422). That is the job as written: Failed at once.
    manifest = with_pod_annotations(example("digits-ddp.yaml"), {})
    manifest["spec"]["podMetadata"]["labels"] = {"team": "x" * 64}
    with running_operator(kube, namespace, tmp_path):
        create(kube, namespace, manifest)
        failed = wait_phase(kube, namespace, "TrainingJob", "digits-ddp", Phase.FAILED)
        cond = condition(failed, ConditionType.FAILED)
        assert cond["reason"] == Reason.INVALID_SPEC
        assert cond["message"].startswith("the API server refused the worker Job: ")
        assert 'is invalid: spec.template.labels: Invalid value: "xxx' in cond["message"]
        assert "must be no more than 63" in cond["message"]
        assert worker_jobs(kube, namespace) == []
