"""Builders: the objects a job becomes, as plain data."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.conftest import EXAMPLES
from torchyard.api import CompressionJob, TrainingJob, load_manifest
from torchyard.api.compression import CompressionJobSpec
from torchyard.api.constants import DNS_1035_LABEL, MAX_JOB_NAME_LENGTH
from torchyard.api.training import TrainingJobSpec
from torchyard.builders import (
    METRICS_PORT_NAME_PREFIX,
    METRICS_PORT_NAME_REGEX,
    Children,
    build_children,
)


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
    assert children.service is not None
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
    assert svc is not None
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
    fail = next(r for r in rules if r["action"] == "FailJob" and "onExitCodes" in r)
    assert 1 in fail["onExitCodes"]["values"]
    assert 42 not in fail["onExitCodes"]["values"]
    assert 137 not in fail["onExitCodes"]["values"]
    # a disrupted pod fails the Job whatever its exit code (first rule); the operator then
    # restarts the group without counting it (tests/unit/test_disruption.py)
    assert rules[0] == {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget"}]}


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


# ------------------------------------------------------------------------ child names


def quantize(name: str) -> CompressionJob:
    job = load_manifest(EXAMPLES / "compress-quantize.yaml")
    assert isinstance(job, CompressionJob)
    job.metadata.name = name
    return job


def names(children: Children) -> dict[str, str]:
    return {o["kind"]: o["metadata"]["name"] for o in children.all()}


def test_training_job_children_keep_the_job_name() -> None:
    # The names a torchrun script written for Kubeflow sees: <job>-<rank>.<job>.
    children = build_children(digits(), namespace="ml", gang="volcano")
    assert names(children) == {
        "ConfigMap": "digits-ddp-spec",
        "Service": "digits-ddp",
        "PodGroup": "digits-ddp",
        "Job": "digits-ddp",
    }


def test_training_and_compression_job_of_the_same_name_get_their_own_children() -> None:
    tj = build_children(digits(), namespace="ml", gang="volcano")
    compress = quantize("digits-ddp")
    compress.spec.workers = 2  # a Service only for more than one worker
    cj = build_children(compress, namespace="ml", gang="volcano")
    assert names(cj) == {
        "ConfigMap": "digits-ddp-cj-spec",
        "Service": "digits-ddp-cj",
        "PodGroup": "digits-ddp-cj",
        "Job": "digits-ddp-cj",
    }
    assert not set(names(tj).items()) & set(names(cj).items())
    # The CompressionJob's pods use its own Service, ConfigMap and PodGroup...
    pod = cj.job["spec"]["template"]
    assert pod["spec"]["subdomain"] == "digits-ddp-cj"
    assert pod["spec"]["volumes"][0]["configMap"]["name"] == "digits-ddp-cj-spec"
    assert pod["metadata"]["annotations"]["scheduling.k8s.io/group-name"] == "digits-ddp-cj"
    env = env_of(cj.job)
    assert env["PET_MASTER_ADDR"] == env["MASTER_ADDR"] == "digits-ddp-cj-0.digits-ddp-cj.ml.svc"
    # ...while the job's own name stays what users and metrics see.
    assert env["TORCHYARD_JOB_NAME"] == "digits-ddp"
    assert pod["metadata"]["labels"]["torchyard.io/job-name"] == "digits-ddp"
    assert pod["metadata"]["labels"]["torchyard.io/job-kind"] == "compressionjob"
    assert cj.service is not None
    assert tj.service is not None
    assert cj.service["spec"]["selector"]["torchyard.io/job-kind"] == "compressionjob"
    assert tj.service["spec"]["selector"]["torchyard.io/job-kind"] == "trainingjob"


@pytest.mark.parametrize("procs", [1, 4])
def test_a_one_worker_job_rendezvous_on_loopback_without_a_service(procs: int) -> None:
    """One pod holds every process: rank 0 is the pod's loopback address, as under
    ``torchyard run``, and no Service (nor subdomain naming one) is made for it."""
    job = digits()
    job.spec.workers = 1
    job.spec.procs_per_worker = procs
    children = build_children(job, namespace="ml")
    assert children.service is None
    assert set(names(children)) == {"ConfigMap", "Job"}
    pod = children.job["spec"]["template"]["spec"]
    assert "subdomain" not in pod
    env = env_of(children.job)
    assert env["PET_MASTER_ADDR"] == env["MASTER_ADDR"] == "127.0.0.1"
    assert env["PET_NNODES"] == "1"
    # A CompressionJob of one worker (the examples' usual shape) likewise.
    assert build_children(quantize("q"), namespace="ml").service is None


def _max_workers(spec: type) -> int:
    (le,) = [m.le for m in spec.model_fields["workers"].metadata if hasattr(m, "le")]
    return int(le)


@pytest.mark.parametrize("kind", ["TrainingJob", "CompressionJob"])
def test_child_names_fit_dns_labels_at_the_longest_job_name_and_most_workers(kind: str) -> None:
    import re

    name = "a" * MAX_JOB_NAME_LENGTH
    job: TrainingJob | CompressionJob
    if kind == "TrainingJob":
        job = digits()
        job.metadata.name = name
        job.spec.workers = _max_workers(TrainingJobSpec)
        job.spec.batch_size = job.spec.workers
    else:
        job = quantize(name)
        job.spec.workers = _max_workers(CompressionJobSpec)
    children = build_children(job, namespace="ml", gang="volcano")
    labels = [children.service, children.job, children.podgroup]
    for obj in labels:
        assert obj is not None
        assert len(obj["metadata"]["name"]) <= 63
        assert re.fullmatch(DNS_1035_LABEL, obj["metadata"]["name"])
    assert len(children.configmap["metadata"]["name"]) <= 253
    # The last worker's pod hostname (<Job name>-<index>) is a DNS label too.
    last = f"{children.job['metadata']['name']}-{job.spec.workers - 1}"
    assert len(last) <= 63, last
    master = env_of(children.job)["PET_MASTER_ADDR"]
    assert all(len(part) <= 63 for part in master.split("."))


IANA_SVC_NAME = re.compile(r"^(?=.{1,15}$)(?=.*[a-z])[a-z0-9]+(-[a-z0-9]+)*$")
# the schema's upper bound of procsPerWorker: the longest metrics port names
MAX_PROCS = next(
    m.le for m in TrainingJobSpec.model_fields["procs_per_worker"].metadata if hasattr(m, "le")
)


@pytest.mark.parametrize("procs", [1, 4, MAX_PROCS])
def test_every_local_rank_declares_its_metrics_port(procs: int) -> None:
    """Local rank r serves TORCHYARD_METRICS_PORT + r (the worker's rule): the pod declares one
    named port per process, all matching the PodMonitor's name regex, and the Service lists the
    same ports."""
    job = digits()
    job.spec.procs_per_worker = procs
    children = build_children(job)
    (container,) = children.job["spec"]["template"]["spec"]["containers"]
    base = int(env_of(children.job)["TORCHYARD_METRICS_PORT"])
    declared = {p["name"]: p["containerPort"] for p in container["ports"]}
    metrics = {n: p for n, p in declared.items() if re.fullmatch(METRICS_PORT_NAME_REGEX, n)}
    assert sorted(metrics.values()) == [base + r for r in range(procs)]
    assert metrics == {f"{METRICS_PORT_NAME_PREFIX}{r}": base + r for r in range(procs)}
    # the other ports (rendezvous) are not scraped
    assert all(not re.fullmatch(METRICS_PORT_NAME_REGEX, n) for n in declared.keys() - metrics)
    assert len(container["ports"]) == len(declared)  # names are unique
    assert len({p["containerPort"] for p in container["ports"]}) == len(declared)
    for name in declared:
        assert IANA_SVC_NAME.fullmatch(name), name
    assert children.service is not None
    service = {p["name"]: p["targetPort"] for p in children.service["spec"]["ports"]}
    assert service == declared
