"""Fine-tuning by version on the real control plane: a TrainingJob with
``initFrom.modelVersion: digits-mlp@production`` waits while no version holds the alias, starts
once one does, hands its workers the version's weights as ``model.checkpoint`` and records the
version in ``status.sourceVersion`` and as the parent of the version it produces.

As in test_operator_modelversions.py the test plays the kubelet for the worker pod and writes
the version folders a worker would have written into a local store.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tests.cluster.opkit import (
    condition,
    create,
    example,
    get,
    held,
    running_operator,
    wait_phase,
    wait_running_pods,
)
from tests.cluster.test_operator_modelversions import (
    finish,
    register,
    torchyard,
    wait_mv,
    write_version,
)

from torchyard.api.constants import ConditionType, Phase, Reason
from torchyard_devcluster.testing import Kube

pytestmark = pytest.mark.cluster


def test_training_job_from_an_alias_waits_resolves_and_records_it(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    base = write_version(store, "digits-mlp", 1, {"kind": "TrainingJob"})
    register(kube, namespace, base)
    job = held(example("digits-ddp.yaml"))
    job["metadata"]["name"] = "finetune"
    job["spec"]["workers"] = 1
    job["spec"]["initFrom"] = {"modelVersion": "digits-mlp@production"}
    job["spec"]["output"] = {"modelName": "digits-mlp-ft"}
    with running_operator(kube, namespace, tmp_path):
        create(kube, namespace, job)
        waiting = wait_phase(kube, namespace, "TrainingJob", "finetune", Phase.WAITING)
        assert condition(waiting, ConditionType.WAITING)["reason"] == Reason.WAITING_FOR_SOURCE
        assert "spec.initFrom.modelVersion digits-mlp@production" in waiting["status"]["message"]
        assert not kube.batch.list_namespaced_job(namespace).items, "no workers while waiting"

        torchyard(kube, "promote", "digits-mlp@production", "1", "-n", namespace)
        (pod,) = wait_running_pods(kube, namespace, "finetune", 1)
        started = get(kube, namespace, "TrainingJob", "finetune") or {}
        resolved = started["status"]["sourceVersion"]
        assert (resolved["name"], resolved["version"], resolved["uri"]) == (
            "digits-mlp",
            1,
            base["uri"],
        )
        # The workers start from the version's directory, as from any model.checkpoint.
        (spec,) = [
            yaml.safe_load(text)["spec"]
            for cm in kube.core.list_namespaced_config_map(namespace).items
            for text in (cm.data or {}).values()
            if "TrainingJob" in text
        ]
        assert spec["model"]["checkpoint"] == base["uri"]
        assert "initFrom" not in spec

        out = write_version(store, "digits-mlp-ft", 1, {"kind": "TrainingJob"})
        finish(kube, namespace, [pod], {"status": "Succeeded", "model": out})
        made = wait_mv(kube, namespace, "digits-mlp-ft-v1", "made", lambda o: True)
        assert made["spec"]["origin"]["parent"] == "digits-mlp-v1"
