"""Failure handling on the real control plane: a retryable worker exit restarts the whole
group (counted against backoffLimit) and the job still succeeds; failing past backoffLimit
fails the job with that reason; a non-retryable exit code fails it at once."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.cluster.opkit import (
    condition,
    create,
    event_reasons,
    example,
    held,
    release,
    running_operator,
    settle,
    wait_phase,
    wait_running_pods,
    with_pod_annotations,
    worker_jobs,
)

from torchyard.api.constants import ConditionType, Phase, Reason
from torchyard.devcluster import EXIT_CODE_ANNOTATION, set_pod_exit
from torchyard.devcluster.testing import Kube, poll

pytestmark = pytest.mark.cluster

RESTART_ANNOTATION = "torchyard.io/restart-count"


def _ddp(backoff_limit: int) -> dict:  # type: ignore[type-arg]
    m = example("digits-ddp.yaml")
    m["spec"]["runPolicy"] = {"backoffLimit": backoff_limit}
    return m


def _attempt(pod: object) -> str:
    return str(pod.metadata.annotations[RESTART_ANNOTATION])  # type: ignore[attr-defined]


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
        assert job.metadata.annotations[RESTART_ANNOTATION] == "1"
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
        assert job.metadata.annotations[RESTART_ANNOTATION] == "0"
        assert any(
            c.type == "Failed" and c.reason == "PodFailurePolicy"
            for c in job.status.conditions or []
        )
        # and it stays that way: no restart is attempted later
        settle(3)
        (job,) = worker_jobs(kube, namespace)
        assert job.metadata.annotations[RESTART_ANNOTATION] == "0"
