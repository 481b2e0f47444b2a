"""The TrainingJob -> CompressionJob chain on the real control plane.

The CompressionJob waits (phase and condition Waiting) until its TrainingJob has produced a
model version, then starts its worker Job; results travel from the workers' termination
messages into status. KWOK cannot write a termination message, so for the two pods whose
result matters the test plays the kubelet: it holds the pod (KWOK leaves it alone) and writes
the terminated container state with the result JSON through the pod status API — exactly
what a kubelet reports. The Job controller and the operator take it from there.
"""

from __future__ import annotations

import json
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
    running_operator,
    wait_phase,
    wait_running_pods,
    worker_jobs,
)

from torchyard.api.constants import ConditionType, Phase, Reason
from torchyard_devcluster import finish_pod_as_kubelet
from torchyard_devcluster.testing import Kube, poll

pytestmark = pytest.mark.cluster

MODEL = {
    "name": "digits-mlp",
    "version": 1,
    "uri": "file:///models/digits-mlp/1",
    "sha256": "0" * 64,
    "metrics": {"accuracy": 0.975},
}


def _rank(pod: Any) -> int:
    return int(pod.metadata.annotations["batch.kubernetes.io/job-completion-index"])


def test_compression_job_waits_for_the_model_then_runs(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    training = held(example("digits-ddp.yaml"))
    compression = held(example("compress-prune.yaml"))
    assert compression["spec"]["source"]["trainingJobRef"] == "digits-ddp"
    with running_operator(kube, namespace, tmp_path) as op:
        # The CompressionJob first: its source does not even exist yet.
        create(kube, namespace, compression)
        waiting = wait_phase(kube, namespace, "CompressionJob", "digits-prune", Phase.WAITING)
        assert condition(waiting, ConditionType.WAITING)["reason"] == Reason.WAITING_FOR_SOURCE
        assert "not found" in waiting["status"]["message"]

        create(kube, namespace, training)
        pods = wait_running_pods(kube, namespace, "digits-ddp", 2)
        wait_phase(kube, namespace, "TrainingJob", "digits-ddp", Phase.RUNNING)
        poll(
            lambda: (
                "produce its model"
                in (
                    (get(kube, namespace, "CompressionJob", "digits-prune") or {}).get("status")
                    or {}
                ).get("message", "")
            ),
            what="Waiting for the running TrainingJob",
        )
        # Still waiting: no worker Job of the CompressionJob exists.
        assert [j.metadata.name for j in worker_jobs(kube, namespace)] == ["digits-ddp"]

        result = {
            "status": "Succeeded",
            "step": 680,
            "totalSteps": 680,
            "epoch": 30,
            "metrics": {"accuracy": 0.975, "loss": 0.08},
            "model": MODEL,
            "lastCheckpoint": {
                "step": 600,
                "uri": "file:///ckpt/600",
                "time": "2026-01-01T00:00:00Z",
            },
        }
        for p in pods:
            finish_pod_as_kubelet(
                kube.api_client,
                p.metadata.name,
                namespace,
                json.dumps(result) if _rank(p) == 0 else None,
            )
        trained = wait_phase(kube, namespace, "TrainingJob", "digits-ddp", Phase.SUCCEEDED)
        assert trained["status"]["model"] == MODEL  # from rank 0's termination message
        assert trained["status"]["progress"]["accuracy"] == 0.975
        assert trained["status"]["lastCheckpoint"]["step"] == 600

        # Now the CompressionJob starts: one worker pod with the same env contract.
        (cpod,) = wait_running_pods(kube, namespace, "digits-prune", 1, kind="compressionjob")
        started = wait_phase(kube, namespace, "CompressionJob", "digits-prune", Phase.RUNNING)
        waiting_cond = condition(started, ConditionType.WAITING)
        assert waiting_cond["status"] == "False"
        assert waiting_cond["reason"] == Reason.SOURCE_READY
        env = {e.name: e.value for e in cpod.spec.containers[0].env}
        assert env["PET_NNODES"] == "1"
        assert env["TORCHYARD_JOB_NAME"] == "digits-prune"

        report = {
            "status": "Succeeded",
            "model": {"name": "digits-mlp-pruned", "version": 1, "uri": "file:///models/p/1"},
            "report": {
                "baseline": {"accuracy": 0.975, "params": 12000, "nonZeroParams": 12000},
                "compressed": {"accuracy": 0.969, "params": 12000, "nonZeroParams": 1200},
                "ratios": {"params": 10.0},
                "accuracyDelta": -0.006,
                "passed": True,
            },
            "trials": [{"name": "sparsity=0.9", "params": {"sparsity": 0.9}, "passed": True}],
        }
        finish_pod_as_kubelet(kube.api_client, cpod.metadata.name, namespace, json.dumps(report))
        done = wait_phase(kube, namespace, "CompressionJob", "digits-prune", Phase.SUCCEEDED)
        st = done["status"]
        assert st["model"]["name"] == "digits-mlp-pruned"
        assert st["report"]["passed"] is True
        assert st["report"]["ratios"]["params"] == 10.0
        assert st["trials"][0]["name"] == "sparsity=0.9"
        reasons = event_reasons(kube, namespace, "digits-prune", Reason.COMPLETED)
        for reason in (Reason.WAITING_FOR_SOURCE, Reason.SOURCE_READY, Reason.JOB_CREATED):
            assert reasons.count(reason) == 1, reasons
        assert Reason.COMPLETED in reasons
        ratio = (
            f'torchyard_compression_ratio{{name="digits-prune",namespace="{namespace}",'
            f'ratio="params"}} 10.0'
        )
        assert ratio in op.metrics()


def test_compression_job_fails_when_its_training_job_fails(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    training = example("digits-ddp.yaml")
    training["spec"]["podMetadata"] = {
        "annotations": {"kwok.torchyard.io/exit-code": "1", "kwok.torchyard.io/delay": "200ms"}
    }
    with running_operator(kube, namespace, tmp_path):
        create(kube, namespace, example("compress-prune.yaml"))
        create(kube, namespace, training)
        wait_phase(kube, namespace, "TrainingJob", "digits-ddp", Phase.FAILED)
        failed = wait_phase(kube, namespace, "CompressionJob", "digits-prune", Phase.FAILED)
        assert condition(failed, ConditionType.FAILED)["reason"] == Reason.SOURCE_FAILED
        assert [j.metadata.name for j in worker_jobs(kube, namespace)] == ["digits-ddp"]
