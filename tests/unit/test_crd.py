"""The generated CRDs: in sync with the models, structural, and carrying what users see."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import REPO
from torchyard.api import Rule, TrainingJob
from torchyard.api.training import PipelineSpec
from torchyard.cli import app
from torchyard.crd import StructuralError, all_crds, build_crd, render, structural

# Keys a structural schema node may carry (apiextensions v1 JSONSchemaProps we use).
ALLOWED = {
    "type",
    "description",
    "properties",
    "items",
    "required",
    "enum",
    "default",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "format",
    "additionalProperties",
    "x-kubernetes-validations",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
}


def assert_structural(node: dict[str, Any], path: str = "") -> None:
    """Kubernetes' structural-schema rules that matter for generated schemas."""
    if node.get("x-kubernetes-int-or-string") and "anyOf" in node:
        # The one anyOf Kubernetes takes (what controller-gen emits for Quantity): value
        # validation of int-or-string, types only in the branches.
        assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
        node = {k: v for k, v in node.items() if k != "anyOf"}
    unknown = set(node) - ALLOWED
    assert not unknown, f"{path}: keys Kubernetes rejects: {unknown}"
    for forbidden in ("$ref", "anyOf", "nullable"):
        assert forbidden not in node, f"{path}: {forbidden} is not structural"
    if not node.get("x-kubernetes-int-or-string"):
        assert "type" in node, f"{path}: every node needs a type"
    assert node.get("type") != "null", path
    for name, child in node.get("properties", {}).items():
        assert_structural(child, f"{path}.{name}")
    if "items" in node:
        assert_structural(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        assert_structural(node["additionalProperties"], f"{path}.*")
    assert "description" in node or path.count(".") <= 1 or path.endswith(("[]", ".*")), (
        f"{path}: field has no description (a docstring is missing)"
    )


@pytest.mark.parametrize("name", sorted(all_crds()))
def test_committed_crds_match_the_models(name: str) -> None:
    committed = (REPO / "crds" / name).read_text()
    assert committed == render(all_crds()[name]), (
        f"crds/{name} drifted from the models: run `torchyard crds -o crds/`"
    )


def test_drift_check_notices_a_model_change(monkeypatch: pytest.MonkeyPatch) -> None:
    committed = (REPO / "crds" / "torchyard.io_trainingjobs.yaml").read_text()
    extra = Rule(cel="self.microbatches <= 64", message="new rule", field_path=".microbatches")
    monkeypatch.setattr(PipelineSpec, "rules", (*PipelineSpec.rules, extra))
    assert render(build_crd(TrainingJob)) != committed


@pytest.mark.parametrize("name", sorted(all_crds()))
def test_crds_are_structural(name: str) -> None:
    crd = all_crds()[name]
    (version,) = crd["spec"]["versions"]
    assert_structural(version["schema"]["openAPIV3Schema"], "")


def test_non_structural_union_is_refused() -> None:
    with pytest.raises(StructuralError):
        structural({"anyOf": [{"type": "string"}, {"type": "object"}]}, {})


def test_training_job_crd_has_what_kubectl_users_expect() -> None:
    crd = build_crd(TrainingJob)
    spec = crd["spec"]
    assert spec["names"]["shortNames"] == ["tj"]
    (version,) = spec["versions"]
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.workers"
    assert "status" in version["subresources"]
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert {"Phase", "Workers", "Loss", "Accuracy", "Age"} <= columns
    schema = version["schema"]["openAPIV3Schema"]
    spec_schema = schema["properties"]["spec"]
    # Defaults written out: the API server checks `default` against CEL rules as is.
    assert spec_schema["properties"]["optimizer"]["default"]["name"] == "adamw"
    assert spec_schema["properties"]["scheduling"]["default"]["gang"] == "auto"
    lr = spec_schema["properties"]["optimizer"]["properties"]["lr"]
    assert lr["minimum"] == 0
    assert lr["exclusiveMinimum"] is True
    assert spec_schema["properties"]["strategy"]["enum"] == ["ddp", "pipeline", "distillation"]
    rules = {r["rule"] for r in spec_schema["x-kubernetes-validations"]}
    assert any("pipeline.stages" in r for r in rules)
    assert any("oldSelf" in r["rule"] for r in schema["x-kubernetes-validations"])


def test_cli_prints_the_committed_crds() -> None:
    result = CliRunner().invoke(app, ["crds"])
    assert result.exit_code == 0, result.output
    printed = list(yaml.safe_load_all(result.output))
    committed = [yaml.safe_load((REPO / "crds" / n).read_text()) for n in sorted(all_crds())]
    by_name = {d["metadata"]["name"]: d for d in printed}
    for doc in committed:
        assert by_name[doc["metadata"]["name"]] == doc


def test_api_reference_matches_the_models() -> None:
    from torchyard.crd import render_api_docs

    assert (REPO / "docs" / "api.md").read_text() == render_api_docs(), (
        "docs/api.md drifted from the models: run `make docs`"
    )
