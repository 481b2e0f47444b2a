"""A user's own script on the real control plane: examples/user-script.yaml (a `command`, no
`model`/`data`) gets worker pods running that command in its image, and the result the
reporting helper writes fills the job's status and model version.

The result is not hand-written: ``torchyard_trainer.report.Reporter`` produces it in this test
(rank 0 of a world of one, a real model version written to a temporary store), exactly the
bytes a pod would leave in ``/dev/termination-log``. KWOK cannot write a termination message,
so the test plays the kubelet for the held pods (``finish_pod_as_kubelet``), as
test_operator_compression does; the Job controller and the operator take it from there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.cluster.opkit import (
    create,
    example,
    held,
    running_operator,
    wait_phase,
    wait_running_pods,
)

from torchyard.api.constants import Phase
from torchyard_devcluster import finish_pod_as_kubelet
from torchyard_devcluster.testing import Kube

pytestmark = pytest.mark.cluster

TERMINATION_MESSAGE_LIMIT = 4096  # bytes Kubernetes keeps of a termination message


def _reported_result(manifest: dict[str, Any], tmp_path: Path) -> str:
    """What rank 0 of the user script writes at the end, through the real reporting helper."""
    import torch

    from torchyard_trainer.report import Reporter

    spec = tmp_path / "spec.yaml"
    output = {**manifest["spec"].get("output", {}), "storage": f"file://{tmp_path / 'store'}"}
    doc = {**manifest, "spec": {**manifest["spec"], "output": output}}
    spec.write_text(yaml.safe_dump(doc))
    result_file = tmp_path / "termination-log"
    reporter = Reporter(
        total_steps=40,
        epochs=2,
        environ={
            "TORCHYARD_SPEC": str(spec),
            "TORCHYARD_RESULT_FILE": str(result_file),
            "TORCHYARD_OUTPUT_DIR": str(tmp_path / "out"),
            "TORCHYARD_JOB_NAME": manifest["metadata"]["name"],
        },
    )
    for step in range(1, 41):
        reporter.step(step=step, epoch=(step - 1) // 20, loss=1.0 / step)
    reporter.evaluate({"accuracy": 0.9, "valLoss": 0.3})
    reporter.save_model(torch.nn.Linear(64, 10))
    reporter.finish()
    return result_file.read_text()


def test_user_script_result_fills_status_and_model_version(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    manifest = example("user-script.yaml")
    name = manifest["metadata"]["name"]
    message = _reported_result(manifest, tmp_path)
    assert len(message.encode()) < TERMINATION_MESSAGE_LIMIT
    reported = json.loads(message)
    with running_operator(kube, namespace, tmp_path):
        create(kube, namespace, held(manifest))
        pods = wait_running_pods(kube, namespace, name, manifest["spec"]["workers"])
        wait_phase(kube, namespace, "TrainingJob", name, Phase.RUNNING)
        for pod in pods:
            container = pod.spec.containers[0]
            assert container.image == manifest["spec"]["image"]
            assert [*(container.command or []), *(container.args or [])] == manifest["spec"][
                "command"
            ]
        for pod in pods:
            index = pod.metadata.annotations["batch.kubernetes.io/job-completion-index"]
            finish_pod_as_kubelet(
                kube.api_client, pod.metadata.name, namespace, message if index == "0" else None
            )
        done = wait_phase(kube, namespace, "TrainingJob", name, Phase.SUCCEEDED)
    status = done["status"]
    assert status["model"] == reported["model"]
    assert status["model"]["name"] == manifest["spec"]["output"]["modelName"]
    card = json.loads(
        (tmp_path / "store" / status["model"]["name"] / "v1" / "model-card.json").read_text()
    )
    assert status["model"]["sha256"] == card["sha256"]
    progress = status["progress"]
    assert (progress["step"], progress["totalSteps"], progress["epoch"]) == (40, 40, 2)
    assert progress["loss"] == reported["metrics"]["loss"]
    assert progress["accuracy"] == reported["metrics"]["accuracy"]
