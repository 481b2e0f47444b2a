"""Preemption and node loss, pure parts: the disrupted pod read from its DisruptionTarget
condition, the group restart that does not count against backoffLimit, the pod fields built
from runPolicy.gracePeriodSeconds / nodeLossTolerationSeconds, and the launcher's shutdown
timeout taken from the env contract."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from tests.unit.test_status import T0, cond, failed_body, job, pod, run, step
from torchyard.api import TrainingJob
from torchyard.api.constants import ConditionType, Phase, Reason
from torchyard.api.contract import (
    Env,
    ExitCode,
    checkpoint_budget_seconds,
    is_retryable,
    shutdown_timeout_seconds,
)
from torchyard.builders import build_children
from torchyard.state import ActionKind, JobInfo, PodInfo
from torchyard.state.disruption import counted_restarts, disrupted_pod
from torchyard_trainer.launch import torchrun_has_shutdown_timeout, with_shutdown_timeout

PREEMPTED_CONDITION = {
    "type": "DisruptionTarget",
    "status": "True",
    "reason": "PreemptionByScheduler",
    "message": "Preempted in order to admit critical pod",
}


def _pod_dict(index: int, conditions: list[dict[str, Any]], code: int = 143) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"w-{index}",
            "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
        },
        "status": {
            "phase": "Failed",
            "conditions": conditions,
            "containerStatuses": [{"name": "worker", "state": {"terminated": {"exitCode": code}}}],
        },
    }


def test_pod_info_reads_the_disruption_target_condition() -> None:
    hit = PodInfo.from_dict(_pod_dict(1, [PREEMPTED_CONDITION]))
    assert hit.disruption is not None
    assert hit.disruption.startswith("PreemptionByScheduler: Preempted")
    off = {**PREEMPTED_CONDITION, "status": "False"}
    assert PodInfo.from_dict(_pod_dict(1, [off])).disruption is None
    assert PodInfo.from_dict(_pod_dict(0, [])).disruption is None


def _disrupted(index: int, code: int = 143) -> PodInfo:
    base = pod(index, "Failed", code)
    return PodInfo(
        base.name, base.index, base.phase, base.exit_code, disruption="PreemptionByScheduler: x"
    )


def test_disruption_restarts_the_group_without_counting_against_backoff() -> None:
    # backoffLimit 1 and one restart already spent on a real failure: a failure now would
    # fail the job, a disruption restarts it
    body = failed_body({"backoffLimit": 1}, restarts=1)
    attempt = job(restart=1, failed_reason="PodFailurePolicy", uid="attempt-1")
    d = run(body, job=attempt, pods=(pod(0, "Failed", 143), _disrupted(1)))
    assert d.status["phase"] == Phase.RESTARTING
    assert cond(d, ConditionType.RESTARTING)["reason"] == Reason.PREEMPTED
    assert d.status["restarts"] == 2
    assert d.status["preemptions"] == 1
    assert counted_restarts(d.status) == 1
    assert "worker 1 was disrupted (PreemptionByScheduler" in d.status["message"]
    assert "not counted against backoffLimit" in d.status["message"]
    assert [(a.kind, a.job_uid) for a in d.after_status] == [(ActionKind.DELETE_JOB, "attempt-1")]
    # the next real failure still fails the job: backoff saw 1 restart, not 2
    later = step(body, d)
    later["status"]["phase"] = Phase.RUNNING
    again = run(
        later,
        now=T0,
        job=job(restart=2, failed_reason="BackoffLimitExceeded"),
        pods=(pod(0, "Failed", 137),),
    )
    assert again.status["phase"] == Phase.FAILED
    assert cond(again, ConditionType.FAILED)["reason"] == Reason.BACKOFF_LIMIT_EXCEEDED
    assert "after 1 restart(s)" in again.status["message"]


def test_disrupted_pod_wins_over_a_permanent_exit_code() -> None:
    # a script that exits 1 on SIGTERM: the FailJob rule on DisruptionTarget matched first
    body = failed_body({"backoffLimit": 0})
    d = run(body, job=job(failed_reason="PodFailurePolicy"), pods=(_disrupted(0, code=1),))
    assert d.status["phase"] == Phase.RESTARTING
    assert disrupted_pod((pod(0, "Failed", 1),)) is None


def test_grace_period_sets_pod_grace_env_and_node_loss_tolerations() -> None:
    doc = {
        "apiVersion": "torchyard.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "g", "namespace": "ml"},
        "spec": {
            "model": {"builtin": "mlp"},
            "data": {"builtin": "digits"},
            "runPolicy": {"gracePeriodSeconds": 120, "nodeLossTolerationSeconds": 15},
            "scheduling": {
                "tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists"}]
            },
        },
    }
    spec = build_children(TrainingJob.model_validate(doc)).job["spec"]
    pod_spec = spec["template"]["spec"]
    assert pod_spec["terminationGracePeriodSeconds"] == 120
    env = {e["name"]: e.get("value") for e in pod_spec["containers"][0]["env"]}
    assert int(env[Env.SHUTDOWN_TIMEOUT_SECONDS]) == shutdown_timeout_seconds(120)
    ours = [t for t in pod_spec["tolerations"] if t.get("tolerationSeconds") == 15]
    # the user's unreachable toleration wins; not-ready gets ours
    assert [t["key"] for t in ours] == ["node.kubernetes.io/not-ready"]
    assert spec["podFailurePolicy"]["rules"][0]["onPodConditions"] == [{"type": "DisruptionTarget"}]


@pytest.mark.parametrize("grace", [5, 30, 120, 3600])
def test_grace_exceeds_shutdown_timeout_exceeds_checkpoint_budget(grace: int) -> None:
    shutdown = shutdown_timeout_seconds(grace)
    assert grace > shutdown > checkpoint_budget_seconds(shutdown) > 0


def test_grace_period_below_the_floor_is_rejected() -> None:
    with pytest.raises(ValidationError, match=r"gracePeriodSeconds|grace_period_seconds"):
        TrainingJob.model_validate(
            {
                "metadata": {"name": "g"},
                "spec": {
                    "model": {"builtin": "mlp"},
                    "data": {"builtin": "digits"},
                    "runPolicy": {"gracePeriodSeconds": 1},
                },
            }
        )


def test_launcher_takes_the_shutdown_timeout_from_the_env_unless_given() -> None:
    argv, value = with_shutdown_timeout(["-m", "x"], {Env.SHUTDOWN_TIMEOUT_SECONDS: "24"})
    assert (argv, value) == (["--shutdown-timeout", "24", "-m", "x"], "24")
    given = ["--shutdown-timeout=7", "-m", "x"]
    assert with_shutdown_timeout(given, {Env.SHUTDOWN_TIMEOUT_SECONDS: "24"}) == (given, "7")
    assert with_shutdown_timeout(["-m", "x"], {})[1] == "30"  # torchrun's own default


def test_launcher_on_a_torchrun_without_the_flag_keeps_argv_and_caps_at_its_30_s() -> None:
    # torch <= 2.11's torchrun refuses --shutdown-timeout (seen on the H200's torch 2.11):
    # adding it there broke every launch; the agent's fixed 30 s is what the ranks get.
    # The ranks bound their checkpoint by the smaller of the job's timeout and the agent's 30 s.
    env = {Env.SHUTDOWN_TIMEOUT_SECONDS: "24"}
    assert with_shutdown_timeout(["-m", "x"], env, supported=False) == (["-m", "x"], "24")
    env = {Env.SHUTDOWN_TIMEOUT_SECONDS: "45"}
    assert with_shutdown_timeout(["-m", "x"], env, supported=False) == (["-m", "x"], "30")
    assert with_shutdown_timeout(["-m", "x"], {}, supported=False) == (["-m", "x"], "30")


def test_shutdown_timeout_detection_matches_what_this_torchrun_parses() -> None:
    from torch.distributed.run import parse_args

    argv = ["--shutdown-timeout", "5", "-m", "x"]
    if torchrun_has_shutdown_timeout():
        assert parse_args(argv).shutdown_timeout == 5  # type: ignore[no-untyped-call]
    else:
        with pytest.raises(SystemExit):
            parse_args(argv)  # type: ignore[no-untyped-call]


def test_preempted_exit_code_is_retryable() -> None:
    policy = TrainingJob.model_validate(
        {
            "metadata": {"name": "g"},
            "spec": {"model": {"builtin": "mlp"}, "data": {"builtin": "digits"}},
        }
    ).spec.run_policy
    assert is_retryable(ExitCode.PREEMPTED, policy)


def test_disruption_named_by_the_job_when_the_pod_is_gone() -> None:
    # pod GC marks a lost node's pod Failed and deletes it: only the Job's condition is left
    body = failed_body({"backoffLimit": 0})
    failed = JobInfo(
        name="digits",
        uid="attempt-0",
        restart_count=0,
        failed_reason="PodFailurePolicy",
        failed_message="Pod ml/digits-ddp-0-rnpwn has condition DisruptionTarget matching "
        "FailJob rule at index 0",
    )
    d = run(body, job=failed, pods=())
    assert d.status["phase"] == Phase.RESTARTING
    assert d.status["preemptions"] == 1
    assert "pod digits-ddp-0-rnpwn was disrupted" in d.status["message"]
    # a FailJob rule on an exit code is the workload's verdict: not a disruption
    code_rule = JobInfo(
        name="digits",
        uid="attempt-0",
        restart_count=0,
        failed_reason="PodFailurePolicy",
        failed_message="Container worker for pod ml/x failed with exit code 2 matching FailJob "
        "rule at index 1",
    )
    assert run(body, job=code_rule, pods=()).status["phase"] == Phase.FAILED
