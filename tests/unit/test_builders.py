"""Builders: the objects a job becomes, as plain data."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import EXAMPLES
from torchyard.api import TrainingJob, load_manifest
from torchyard.builders import build_children


def digits() -> TrainingJob:
    job = load_manifest(EXAMPLES / "digits-ddp.yaml")
    assert isinstance(job, TrainingJob)
    return job


def env_of(job: dict[str, Any]) -> dict[str, Any]:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_indexed_job_matches_the_worker_contract() -> None:
    children = build_children(digits(), namespace="ml")
    job = children.job
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 2
    assert job["spec"]["template"]["spec"]["subdomain"] == children.service["metadata"]["name"]
    env = env_of(job)
    assert env["PET_NNODES"] == "2"
    assert env["PET_NPROC_PER_NODE"] == "1"
    assert env["PET_MASTER_ADDR"] == "digits-ddp-0.digits-ddp.ml.svc"
    assert env["PET_NODE_RANK"]["fieldRef"]["fieldPath"].endswith("job-completion-index']")
    assert env["TORCHYARD_SPEC"] == "/etc/torchyard/spec.yaml"
    assert env["WORLD_SIZE"] == "2"


def test_service_is_headless_and_publishes_not_ready_addresses() -> None:
    svc = build_children(digits()).service
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True


def test_gpu_requests_equal_limits_and_rank_env_left_to_torchrun() -> None:
    job = digits()
    job.spec.resources.gpu = 8
    job.spec.procs_per_worker = 8
    built = build_children(job).job
    (container,) = built["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "8"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert "RANK" not in env_of(built)


def test_exit_code_policy_fails_user_errors_at_once() -> None:
    job = digits()
    job.spec.run_policy.retryable_exit_codes = [42]
    rules = build_children(job).job["spec"]["podFailurePolicy"]["rules"]
    fail = next(r for r in rules if r["action"] == "FailJob")
    assert 1 in fail["onExitCodes"]["values"]
    assert 42 not in fail["onExitCodes"]["values"]
    assert 137 not in fail["onExitCodes"]["values"]
    assert any(r["action"] == "Ignore" for r in rules)


@pytest.mark.parametrize("gang", ["volcano", "coscheduling", "kueue", "none"])
def test_gang_modes(gang: str) -> None:
    job = digits()
    job.spec.scheduling.queue = "team-a"
    children = build_children(job, gang=gang)  # type: ignore[arg-type]
    pod = children.job["spec"]["template"]
    if gang == "volcano":
        assert children.podgroup is not None
        assert children.podgroup["spec"]["minMember"] == 2
        assert pod["spec"]["schedulerName"] == "volcano"
    elif gang == "coscheduling":
        assert children.podgroup is not None
        assert pod["metadata"]["labels"]["scheduling.x-k8s.io/pod-group"] == "digits-ddp"
    elif gang == "kueue":
        assert children.job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
        assert children.job["spec"]["suspend"] is True
    else:
        assert children.podgroup is None
        assert children.job["spec"]["suspend"] is False


def test_spec_configmap_holds_the_resolved_manifest() -> None:
    import yaml

    cm = build_children(digits()).configmap
    resolved = yaml.safe_load(cm["data"]["spec.yaml"])
    assert resolved["spec"]["optimizer"]["name"] == "adamw"
    assert resolved["spec"]["checkpoint"]["keep"] == 2
    assert TrainingJob.model_validate(resolved).metadata.name == "digits-ddp"


def test_user_env_is_appended_after_the_contract() -> None:
    from torchyard.api.common import EnvVar

    job = digits()
    job.spec.env = [EnvVar(name="NCCL_DEBUG", value="INFO")]
    (container,) = build_children(job).job["spec"]["template"]["spec"]["containers"]
    assert container["env"][-1] == {"name": "NCCL_DEBUG", "value": "INFO"}
    assert container["env"][0]["name"] == "PET_NNODES"
