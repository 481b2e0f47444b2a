"""ModelVersion's pure parts: the API model's rules, the object the operator builds from a job,
alias resolution, version references, the source rewrite for workers, `torchyard models`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from torchyard.api import CompressionJob
from torchyard.api.modelversion import ModelVersion, parse_version_ref, version_name
from torchyard.cli_cluster.models import local_versions, table
from torchyard.crd import MODEL_VERSION_COLUMNS, build_crd
from torchyard.state.modelversion import (
    alias_moves,
    artifact_phase,
    build_version,
    parent_from,
    resolve_ref,
    stamp_patches,
)
from torchyard.state.modelversion_source import store_root, with_resolved_source

SHA = "ab" * 32


def version(name: str, aliases: list[str], rv: int, since: dict[str, str] | None = None) -> Any:
    model, number = name.rsplit("-v", 1)
    return {
        "metadata": {"name": name, "resourceVersion": str(rv)},
        "spec": {"model": model, "version": int(number), "aliases": aliases},
        "status": {"aliasSince": since or {}},
    }


def test_name_must_be_model_dash_version() -> None:
    spec = {"model": "m", "version": 2, "artifact": {"uri": "file:///s/m/v2"},
            "origin": {"source": "TrainingJob/j"}}  # fmt: skip
    assert ModelVersion.model_validate({"metadata": {"name": "m-v2"}, "spec": spec})
    with pytest.raises(ValidationError, match=r"metadata\.name must be"):
        ModelVersion.model_validate({"metadata": {"name": "m-v3"}, "spec": spec})
    with pytest.raises(ValidationError):  # aliases are DNS labels
        ModelVersion.model_validate(
            {"metadata": {"name": "m-v2"}, "spec": {**spec, "aliases": ["Prod"]}}
        )


def test_crd_columns_and_transition_rules() -> None:
    crd = build_crd(ModelVersion)
    (v,) = crd["spec"]["versions"]
    names = [c["name"] for c in v["additionalPrinterColumns"]]
    assert names == [n for n, _, _ in MODEL_VERSION_COLUMNS] + ["Age"]
    rules = json.dumps(v["schema"]["openAPIV3Schema"])
    assert "self.spec.artifact == oldSelf.spec.artifact" in rules
    assert crd["spec"]["names"]["shortNames"] == ["tymv"]


def test_version_refs() -> None:
    assert parse_version_ref("digits-mlp@production") == ("digits-mlp", "production", None)
    assert parse_version_ref("digits-mlp/v12") == ("digits-mlp", None, 12)
    with pytest.raises(ValueError, match="expected"):
        parse_version_ref("digits-mlp:3")


def test_build_version_from_a_compression_job_and_its_card() -> None:
    job = {
        "metadata": {"name": "prune", "namespace": "ns"},
        "spec": {"steps": [{"prune": {"method": "structured"}}, {"quantize": {"method": "qat"}}]},
        "status": {"model": {"name": "small", "version": 3, "uri": "file:///s/small/v3",
                             "sha256": SHA, "metrics": {"accuracy": 0.9}}},
    }  # fmt: skip
    card = {"bytes": 10, "lineage": {"kind": "CompressionJob",
                                     "source": {"name": "big", "version": 7}}}  # fmt: skip
    body = build_version("CompressionJob", job, card, parent_from("CompressionJob", {}, card, None))
    assert body["metadata"]["name"] == "small-v3"
    assert body["spec"]["origin"]["source"] == "CompressionJob/prune"
    assert body["spec"]["origin"]["parent"] == "big-v7"
    assert body["spec"]["artifact"] == {"uri": "file:///s/small/v3", "sha256": SHA,
                                        "formats": ["safetensors", "structured", "int8"],
                                        "bytes": 10}  # fmt: skip
    assert body["spec"]["metrics"] == {"accuracy": 0.9}
    ModelVersion.model_validate(body)  # what the API server takes


def test_parent_without_a_card() -> None:
    by_job = {"name": "digits-mlp", "version": 4}
    assert parent_from("CompressionJob", {}, None, by_job) == "digits-mlp-v4"
    spec = {"source": {"modelVersion": "digits-mlp/v2"}}
    assert parent_from("CompressionJob", spec, None, None) == "digits-mlp-v2"
    assert parent_from("TrainingJob", {}, None, None) is None


def test_newest_assignment_wins() -> None:
    # v1 held the alias (stamped); v2 got it after that: v2 keeps it, whatever the versions.
    old = version("m-v1", ["prod"], rv=50, since={"prod": "2026-01-01T00:00:00Z"})
    new = version("m-v2", ["prod", "canary"], rv=40)
    (move,) = alias_moves([old, new])
    assert (move.alias, move.winner, move.losers) == ("prod", "m-v2", ("m-v1",))
    # Neither stamped (seen together): the later write wins.
    a, b = version("m-v1", ["prod"], rv=7), version("m-v2", ["prod"], rv=9)
    assert alias_moves([b, a])[0].winner == "m-v2"
    assert alias_moves([version("m-v1", ["prod"], rv=1)]) == []


def test_stamps_follow_sole_holders() -> None:
    lost = version("m-v1", [], rv=1, since={"prod": "t0"})
    held = version("m-v2", ["prod"], rv=2)
    assert stamp_patches([lost, held], "t1") == {"m-v1": {"prod": None}, "m-v2": {"prod": "t1"}}
    contested = [version("m-v1", ["prod"], 1), version("m-v2", ["prod"], 2)]
    assert stamp_patches(contested, "t1") == {}


def test_resolve_ref() -> None:
    vs = [version("m-v1", ["prod"], 1), version("m-v2", [], 2)]
    assert resolve_ref("m@prod", vs) is vs[0]
    assert resolve_ref("m/v2", vs) is vs[1]
    assert resolve_ref("m@canary", vs) is None
    assert resolve_ref("other/v1", vs) is None


def test_artifact_phase() -> None:
    assert artifact_phase(True, SHA, SHA)[0] == "Ready"
    assert artifact_phase(True, "00" * 32, SHA)[0] == "Missing"
    assert artifact_phase(False, None, SHA)[0] == "Missing"


def test_workers_get_the_resolved_version_as_a_model_ref() -> None:
    job = CompressionJob.model_validate({
        "metadata": {"name": "c"},
        "spec": {"source": {"modelVersion": "m@prod"}, "data": {"builtin": "digits"},
                 "steps": [{"quantize": {"method": "dynamicInt8"}}]},
    })  # fmt: skip
    assert with_resolved_source(job, {}) is job
    resolved = {"name": "m", "version": 3, "uri": "pvc://models/store/m/v3"}
    out = with_resolved_source(job, {"sourceVersion": resolved})
    assert isinstance(out, CompressionJob)
    assert out.spec.source.model_version is None
    assert out.spec.source.model_ref is not None
    assert out.spec.source.model_ref.storage == "pvc://models/store"
    assert job.spec.source.model_version == "m@prod"  # the original is untouched
    assert store_root("file:///a/m/v3/", "m", 3) == "file:///a"


def test_source_takes_exactly_one_kind() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        CompressionJob.model_validate({
            "metadata": {"name": "c"},
            "spec": {"source": {"modelVersion": "m@prod", "trainingJobRef": "t"},
                     "data": {"builtin": "digits"}, "steps": [{"quantize": {"method": "qat"}}]},
        })  # fmt: skip


def test_models_lists_a_local_store(tmp_path: Path) -> None:
    vdir = tmp_path / "m" / "v1"
    vdir.mkdir(parents=True)
    (vdir / "model.safetensors").write_bytes(b"w")
    card = {"name": "m", "version": 1, "uri": f"file://{vdir}",
            "sha256": "0d" * 32, "lineage": {"job": "j", "kind": "TrainingJob"}}  # fmt: skip
    (vdir / "model-card.json").write_text(json.dumps(card))
    (tmp_path / ".hidden" / "v1").mkdir(parents=True)
    (found,) = local_versions(tmp_path)
    assert version_name("m", 1) == found["metadata"]["name"]
    assert found["status"]["phase"] == "Missing"  # the digest does not match b"w"
    lines = table([found]).splitlines()
    assert lines[0].split()[:3] == ["NAME", "MODEL", "VERSION"]
    assert "TrainingJob/j" in lines[1]


def test_models_command_on_local_stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from torchyard.cli import app

    store = tmp_path / "torchyard-runs" / "models"
    vdir = store / "m" / "v2"
    vdir.mkdir(parents=True)
    card = {"name": "m", "version": 2, "uri": f"file://{vdir}", "lineage": {"job": "j"}}
    (vdir / "model-card.json").write_text(json.dumps(card))
    runner = CliRunner()
    by_store = runner.invoke(app, ["models", "--store", str(store)])
    assert by_store.exit_code == 0, by_store.output
    assert "m-v2" in by_store.output
    monkeypatch.chdir(tmp_path)
    local = runner.invoke(app, ["models", "--local"])
    assert local.output == by_store.output
    assert "No model versions" in runner.invoke(app, ["models", "other", "--local"]).output
