"""runPolicy on the real control plane: suspend/resume (pods removed, state kept, startTime
reset), activeDeadlineSeconds (Failed, workers stopped), ttlSecondsAfterFinished (the job and
its children deleted), cleanPodPolicy All."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.cluster.opkit import (
    condition,
    create,
    event_reasons,
    example,
    get,
    held,
    live_pods,
    patch_spec,
    release,
    running_operator,
    wait_phase,
    wait_running_pods,
    worker_jobs,
    worker_pods,
)

from torchyard.api.constants import ConditionType, Phase, Reason
from torchyard_devcluster.testing import Kube, poll

pytestmark = pytest.mark.cluster


def _ddp(**run_policy: Any) -> dict[str, Any]:
    m = example("digits-ddp.yaml")
    m["spec"]["runPolicy"] = run_policy
    return m


def test_suspend_and_resume(kube: Kube, namespace: str, tmp_path: Path) -> None:
    with running_operator(kube, namespace, tmp_path):
        create(kube, namespace, held(_ddp()))
        wait_running_pods(kube, namespace, "digits-ddp", 2)
        running = wait_phase(kube, namespace, "TrainingJob", "digits-ddp", Phase.RUNNING)
        started = running["status"]["startTime"]

        patch_spec(kube, namespace, "TrainingJob", "digits-ddp", {"runPolicy": {"suspend": True}})
        suspended = wait_phase(kube, namespace, "TrainingJob", "digits-ddp", Phase.SUSPENDED)
        assert condition(suspended, ConditionType.SUSPENDED)["status"] == "True"
        assert condition(suspended, ConditionType.RUNNING)["status"] == "False"
        # pods removed, the Job (state) kept
        poll(lambda: not live_pods(kube, namespace, "digits-ddp"), what="pods removed")
        (job,) = worker_jobs(kube, namespace)
        assert job.spec.suspend is True

        patch_spec(kube, namespace, "TrainingJob", "digits-ddp", {"runPolicy": {"suspend": False}})
        wait_running_pods(kube, namespace, "digits-ddp", 2)
        resumed = wait_phase(kube, namespace, "TrainingJob", "digits-ddp", Phase.RUNNING)
        assert condition(resumed, ConditionType.SUSPENDED)["status"] == "False"
        assert condition(resumed, ConditionType.SUSPENDED)["reason"] == Reason.RESUMED
        assert resumed["status"]["startTime"] > started  # reset on resume (RFC 3339 sorts)
        assert resumed["status"]["restarts"] == 0  # a suspension is not a failure
        (job,) = worker_jobs(kube, namespace)
        assert job.spec.suspend is False

        release(kube, namespace, live_pods(kube, namespace, "digits-ddp"))
        wait_phase(kube, namespace, "TrainingJob", "digits-ddp", Phase.SUCCEEDED)
        reasons = event_reasons(kube, namespace, "digits-ddp", Reason.SUSPENDED, Reason.RESUMED)
        assert Reason.SUSPENDED in reasons
        assert Reason.RESUMED in reasons


def test_created_suspended_starts_nothing_until_resumed(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    with running_operator(kube, namespace, tmp_path):
        create(kube, namespace, _ddp(suspend=True))
        tj = wait_phase(kube, namespace, "TrainingJob", "digits-ddp", Phase.SUSPENDED)
        assert "startTime" not in tj["status"]
        (job,) = poll(lambda: worker_jobs(kube, namespace), what="the suspended Job")
        assert job.spec.suspend is True
        assert not worker_pods(kube, namespace, "digits-ddp")
        patch_spec(kube, namespace, "TrainingJob", "digits-ddp", {"runPolicy": {"suspend": False}})
        wait_phase(kube, namespace, "TrainingJob", "digits-ddp", Phase.SUCCEEDED)


def test_active_deadline_fails_the_job_and_stops_workers(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    with running_operator(kube, namespace, tmp_path):
        create(kube, namespace, held(_ddp(activeDeadlineSeconds=4)))
        wait_running_pods(kube, namespace, "digits-ddp", 2)
        failed = wait_phase(kube, namespace, "TrainingJob", "digits-ddp", Phase.FAILED)
        assert condition(failed, ConditionType.FAILED)["reason"] == Reason.DEADLINE_EXCEEDED
        assert "activeDeadlineSeconds=4" in failed["status"]["message"]
        poll(lambda: not live_pods(kube, namespace, "digits-ddp"), what="workers stopped")
        # the deadline is a timer of the operator's work queue: no finalizer on the job
        assert not failed["metadata"].get("finalizers")
        kube.custom.delete_namespaced_custom_object(
            "torchyard.io", "v1alpha1", namespace, "trainingjobs", "digits-ddp"
        )
        poll(lambda: get(kube, namespace, "TrainingJob", "digits-ddp") is None, what="deletion")


def test_a_finalizer_of_the_earlier_lifetime_timers_is_removed(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    # Upgrading from a version whose Kopf timers put torchyard.io/finalizer on jobs with a
    # deadline or TTL: nothing needs it now, and a job left with it could not be deleted.
    body = _ddp(ttlSecondsAfterFinished=600)
    body["metadata"]["finalizers"] = ["torchyard.io/finalizer"]
    create(kube, namespace, body)
    with running_operator(kube, namespace, tmp_path):
        poll(
            lambda: (
                not (get(kube, namespace, "TrainingJob", "digits-ddp") or {})
                .get("metadata", {})
                .get("finalizers")
            ),
            what="the old finalizer removed",
        )


def test_ttl_deletes_the_finished_job_and_its_children(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    with running_operator(kube, namespace, tmp_path):
        create(kube, namespace, _ddp(ttlSecondsAfterFinished=2))
        poll(
            lambda: (
                (tj := get(kube, namespace, "TrainingJob", "digits-ddp")) is None
                or (tj.get("status") or {}).get("phase") == Phase.SUCCEEDED
            ),
            what="Succeeded",
        )
        poll(
            lambda: get(kube, namespace, "TrainingJob", "digits-ddp") is None,
            timeout=120,
            what="TTL deletion",
        )
        poll(
            lambda: (
                not worker_jobs(kube, namespace) and not worker_pods(kube, namespace, "digits-ddp")
            ),
            timeout=120,
            what="children garbage-collected",
        )


def test_clean_pod_policy_all_removes_finished_pods(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    with running_operator(kube, namespace, tmp_path):
        create(kube, namespace, _ddp(cleanPodPolicy="All"))
        wait_phase(kube, namespace, "TrainingJob", "digits-ddp", Phase.SUCCEEDED)
        poll(lambda: not worker_pods(kube, namespace, "digits-ddp"), what="pods cleaned")
        assert len(worker_jobs(kube, namespace)) == 1  # the Job itself stays


def test_clean_pod_policy_none_keeps_finished_pods(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    with running_operator(kube, namespace, tmp_path):
        create(kube, namespace, _ddp(cleanPodPolicy="None"))
        wait_phase(kube, namespace, "TrainingJob", "digits-ddp", Phase.SUCCEEDED)
        pods = worker_pods(kube, namespace, "digits-ddp")
        assert len(pods) == 2
        assert {p.status.phase for p in pods} == {"Succeeded"}
