"""TrainingJob ``initFrom.modelVersion`` (fine-tuning from a model version): validation next to
the field, waiting for the version, and the workers' spec built from the version it resolved to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from tests.unit.test_status import cond, kinds, run, step, tj_body
from torchyard.api import TrainingJob
from torchyard.api.constants import ConditionType, Phase, Reason
from torchyard.builders import build_children
from torchyard.builders.workers import SPEC_FILE
from torchyard.crd import build_crd
from torchyard.state import ActionKind
from torchyard.state.modelversion_source import (
    ref_model,
    version_ref_field,
    version_ref_of,
    with_resolved_source,
)
from torchyard.state.observed import SourceInfo
from torchyard.state.storage import pod_claims

RESOLVED = {"name": "digits-mlp", "version": 2, "uri": "pvc://models/store/digits-mlp/v2"}


def _body(ref: str = "digits-mlp@production", **model: Any) -> dict[str, Any]:
    body = tj_body()
    body["spec"]["initFrom"] = {"modelVersion": ref}
    body["spec"]["model"].update(model)
    return body


def _job(body: dict[str, Any]) -> TrainingJob:
    return TrainingJob.model_validate(body)


# ------------------------------------------------------------------------ validation


def test_a_version_ref_is_accepted() -> None:
    for ref in ("digits-mlp@production", "digits-mlp/v3"):
        job = _job(_body(ref))
        assert job.spec.init_from is not None
        assert job.spec.init_from.model_version == ref


@pytest.mark.parametrize("ref", ["digits-mlp", "digits-mlp/v0", "Digits@prod", "m@", "m/3"])
def test_a_malformed_ref_is_rejected(ref: str) -> None:
    with pytest.raises(ValidationError, match="initFrom"):
        _job(_body(ref))


def test_init_from_and_model_checkpoint_are_mutually_exclusive() -> None:
    with pytest.raises(ValidationError, match=r"at most one of initFrom\.modelVersion"):
        _job(_body(checkpoint="file:///w/m/v1"))


def test_init_from_needs_a_model() -> None:
    body = _body()
    del body["spec"]["model"]
    body["spec"]["command"] = ["python", "train.py"]
    with pytest.raises(ValidationError, match="initFrom needs model"):
        _job(body)


def test_the_crd_carries_the_pattern_and_the_rules() -> None:
    schema = build_crd(TrainingJob)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec = schema["properties"]["spec"]
    ref = spec["properties"]["initFrom"]["properties"]["modelVersion"]
    assert ref["pattern"].startswith("^")
    assert "@" in ref["pattern"]
    rules = {r["rule"]: r for r in spec["x-kubernetes-validations"]}
    exclusive = "!has(self.initFrom) || !has(self.model) || !has(self.model.checkpoint)"
    assert rules[exclusive]["fieldPath"] == ".initFrom.modelVersion"
    assert spec["properties"]["initFrom"]["required"] == ["modelVersion"]
    status_phase = schema["properties"]["status"]["properties"]["phase"]
    assert "Waiting" in status_phase["enum"]


# ------------------------------------------------------------------------ refs


def test_version_ref_of_each_kind() -> None:
    assert version_ref_of("TrainingJob", _body("m/v2")) == "m/v2"
    assert version_ref_of("TrainingJob", tj_body()) is None
    cj = {"spec": {"source": {"modelVersion": "m@prod"}}}
    assert version_ref_of("CompressionJob", cj) == "m@prod"
    assert version_ref_of("CompressionJob", {"spec": {"source": {"trainingJobRef": "t"}}}) is None
    assert version_ref_of("ModelVersion", cj) is None
    assert version_ref_field("TrainingJob") == "spec.initFrom.modelVersion"
    assert ref_model("digits-mlp@production") == ref_model("digits-mlp/v7") == "digits-mlp"


# ------------------------------------------------------------------------ state machine


def test_waits_naming_the_field_until_the_version_exists() -> None:
    body = _body()
    first = run(body)
    assert first.needs_source
    assert kinds(first) == []
    for source in (SourceInfo(found=False), SourceInfo(True, "Missing", dict(RESOLVED))):
        d = run(body, source=source)
        assert kinds(d) == [], "no worker Job while the version is not there"
        assert d.status["phase"] == Phase.WAITING
        waiting = cond(d, ConditionType.WAITING)
        assert waiting["status"] == "True"
        assert waiting["reason"] == Reason.WAITING_FOR_SOURCE
        assert "spec.initFrom.modelVersion digits-mlp@production" in waiting["message"]
        assert "sourceVersion" not in d.status


def test_records_the_resolved_version_before_the_worker_job() -> None:
    waiting = step(_body(), run(_body(), source=SourceInfo(found=False)))
    ready = SourceInfo(True, "Ready", dict(RESOLVED))
    d = run(waiting, source=ready)
    assert d.status["sourceVersion"] == RESOLVED
    assert kinds(d) == [], "the status is written first: the workers' spec is built from it"
    assert cond(d, ConditionType.WAITING)["reason"] == Reason.SOURCE_READY
    assert Reason.SOURCE_READY in [e.reason for e in d.events]
    d2 = run(step(waiting, d), source=ready)
    assert kinds(d2) == [ActionKind.CREATE]
    assert d2.status["sourceVersion"] == RESOLVED


# ------------------------------------------------------------------------ workers


def test_workers_get_the_version_as_their_initial_weights() -> None:
    job = _job(_body())
    assert with_resolved_source(job, {}) is job
    out = with_resolved_source(job, {"sourceVersion": RESOLVED})
    assert isinstance(out, TrainingJob)
    assert out.spec.model is not None
    assert out.spec.model.checkpoint == RESOLVED["uri"]
    assert out.spec.init_from is None
    assert job.spec.init_from is not None  # the original is untouched
    children = build_children(out, namespace="ml")
    spec = yaml.safe_load(children.configmap["data"][SPEC_FILE])["spec"]
    assert spec["model"]["checkpoint"] == RESOLVED["uri"]
    assert "initFrom" not in spec
    # The version's claim is mounted like any checkpoint the pod reads.
    assert "models" in pod_claims(children.job["spec"]["template"]["spec"])


def test_a_worker_refuses_an_unresolved_init_from(tmp_path: Path) -> None:
    """Only the operator resolves the reference: a worker given it (``torchyard run``) stops
    with a config error instead of silently training from scratch."""
    from torchyard_trainer.env import ConfigError, WorkerEnv
    from torchyard_trainer.train.run import build_runtime

    env = WorkerEnv.from_environ({"TORCHYARD_OUTPUT_DIR": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"spec\.initFrom\.modelVersion digits-mlp@production"):
        build_runtime(env, _job(_body()))
