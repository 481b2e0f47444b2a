"""The operator on the real control plane: each example becomes a Service, a ConfigMap and an
Indexed Job whose KWOK pods carry the worker contract; the job goes Pending -> Running ->
Succeeded with the right conditions, events and metrics; deletion leaves no orphans."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.cluster.opkit import (
    condition,
    create,
    env_of,
    event_reasons,
    example,
    get,
    held,
    release,
    running_operator,
    wait_phase,
    wait_running_pods,
    worker_jobs,
)

from torchyard.api.constants import ConditionType, Phase, Reason
from torchyard_devcluster.testing import Kube, poll

pytestmark = pytest.mark.cluster

TRAINING_EXAMPLES = [
    "digits-ddp.yaml",
    "digits-pipeline.yaml",
    "digits-distillation.yaml",
    "transformer-gpu.yaml",
]


def _owned_by(obj: Any, tj: dict[str, Any]) -> bool:
    refs = obj.metadata.owner_references or []
    return any(r.uid == tj["metadata"]["uid"] and r.controller for r in refs)


@pytest.mark.parametrize("name", TRAINING_EXAMPLES)
def test_example_runs_to_succeeded(kube: Kube, namespace: str, tmp_path: Path, name: str) -> None:
    manifest = example(name)
    spec = manifest["spec"]
    job_name = manifest["metadata"]["name"]
    workers = spec.get("workers", 1)
    with running_operator(kube, namespace, tmp_path) as op:
        tj = create(kube, namespace, held(manifest))

        # Children: ConfigMap, Indexed Job and (more than one worker) a headless Service —
        # owned by the TrainingJob.
        cm_name = f"{job_name}-spec"
        cm = poll(lambda: _read(kube.core.read_namespaced_config_map, cm_name, namespace))
        job = poll(lambda: _read(kube.batch.read_namespaced_job, job_name, namespace))
        for obj in (cm, job):
            assert _owned_by(obj, tj), obj.metadata
        svc = _read(kube.core.read_namespaced_service, job_name, namespace)
        if workers > 1:
            assert svc is not None
            assert _owned_by(svc, tj), svc.metadata
            assert svc.spec.cluster_ip == "None"
            assert svc.spec.publish_not_ready_addresses is True
        else:  # one pod: rank 0 is its loopback address, nothing to look up
            assert svc is None, svc.metadata
        assert "spec.yaml" in cm.data
        assert job.spec.completion_mode == "Indexed"
        assert job.spec.completions == job.spec.parallelism == workers

        # Pods: KWOK runs them on the fake GPU nodes, with the env contract and resources.
        pods = wait_running_pods(kube, namespace, job_name, workers)
        running = wait_phase(kube, namespace, "TrainingJob", job_name, Phase.RUNNING)
        assert condition(running, ConditionType.RUNNING)["status"] == "True"
        assert running["status"]["workers"]["ready"] == workers
        assert running["status"]["startTime"]
        ranks = set()
        for p in pods:
            (c,) = p.spec.containers
            env = env_of(c)
            assert env["PET_NNODES"] == str(workers)
            assert env["PET_NPROC_PER_NODE"] == str(spec.get("procsPerWorker", 1))
            assert env["PET_NODE_RANK"][1].endswith("job-completion-index']")
            rank0 = f"{job_name}-0.{job_name}.{namespace}.svc" if workers > 1 else "127.0.0.1"
            assert env["PET_MASTER_ADDR"] == rank0
            assert env["PET_MASTER_PORT"] == "29500"
            assert env["TORCHYARD_SPEC"] == "/etc/torchyard/spec.yaml"
            assert env["TORCHYARD_METRICS_PORT"] == "9400"
            assert p.spec.subdomain == (job_name if workers > 1 else None)
            ranks.add(p.metadata.annotations["batch.kubernetes.io/job-completion-index"])
            gpus = (spec.get("resources") or {}).get("gpu", 0)
            requests = c.resources.requests or {}
            if gpus:
                assert requests["nvidia.com/gpu"] == str(gpus)
                assert c.resources.limits["nvidia.com/gpu"] == str(gpus)
                node = kube.core.read_node(p.spec.node_name)
                assert int(node.status.allocatable["nvidia.com/gpu"]) >= gpus
            else:
                assert "nvidia.com/gpu" not in requests
            if (spec.get("resources") or {}).get("cpu"):
                assert requests["cpu"] == str(spec["resources"]["cpu"])
        assert ranks == {str(i) for i in range(workers)}

        release(kube, namespace, pods)
        done = wait_phase(kube, namespace, "TrainingJob", job_name, Phase.SUCCEEDED)
        st = done["status"]
        assert condition(done, ConditionType.SUCCEEDED)["reason"] == Reason.COMPLETED
        assert condition(done, ConditionType.RUNNING)["status"] == "False"
        assert condition(done, ConditionType.CREATED)["status"] == "True"
        assert st["completionTime"] >= st["startTime"]
        assert st["observedGeneration"] == done["metadata"]["generation"]
        assert st["restarts"] == 0
        assert st["workers"]["succeeded"] == workers
        reasons = poll(
            lambda: (r := event_reasons(kube, namespace, job_name)) and Reason.COMPLETED in r and r,
            what="events",
        )
        assert reasons.count(Reason.JOB_CREATED) == 1
        assert reasons.count(Reason.WORKERS_RUNNING) == 1
        assert reasons.count(Reason.COMPLETED) == 1
        # exactly one worker Job: nothing was created twice
        assert len(worker_jobs(kube, namespace)) == 1

        # Metrics: the job's series exist while it exists, and go with it.
        text = op.metrics()
        series = (
            f'torchyard_job_status{{kind="TrainingJob",name="{job_name}",'
            f'namespace="{namespace}",phase="Succeeded"}} 1.0'
        )
        assert series in text
        assert "torchyard_job_submit_to_pods_created_seconds_count" in text
        assert f'torchyard_job_info{{gang="auto",kind="TrainingJob",name="{job_name}"' in text


def test_delete_leaves_no_orphans(kube: Kube, namespace: str, tmp_path: Path) -> None:
    manifest = example("digits-ddp.yaml")
    with running_operator(kube, namespace, tmp_path) as op:
        create(kube, namespace, held(manifest))
        wait_running_pods(kube, namespace, "digits-ddp", 2)
        wait_phase(kube, namespace, "TrainingJob", "digits-ddp", Phase.RUNNING)
        kube.custom.delete_namespaced_custom_object(
            "torchyard.io", "v1alpha1", namespace, "trainingjobs", "digits-ddp"
        )

        def nothing_left() -> bool:
            return (
                get(kube, namespace, "TrainingJob", "digits-ddp") is None
                and not worker_jobs(kube, namespace)
                and not kube.core.list_namespaced_pod(namespace).items
                and not [
                    s
                    for s in kube.core.list_namespaced_service(namespace).items
                    if s.metadata.name == "digits-ddp"
                ]
                and not [
                    c
                    for c in kube.core.list_namespaced_config_map(namespace).items
                    if c.metadata.name == "digits-ddp-spec"
                ]
            )

        poll(nothing_left, timeout=180, what="garbage collection of every child")
        poll(
            lambda: 'name="digits-ddp"' not in op.metrics(),
            timeout=60,
            what="per-job series removed",
        )


def _read(fn: Any, name: str, namespace: str) -> Any:
    from kubernetes import client

    try:
        return fn(name, namespace)
    except client.ApiException as e:
        if e.status == 404:
            return None
        raise
