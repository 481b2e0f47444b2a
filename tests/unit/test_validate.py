"""`torchyard validate`: every example passes; every invalid manifest fails naming its field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import EXAMPLES, INVALID
from torchyard.api import ManifestError, TrainingJob, load_manifests
from torchyard.cli import app

INVALID_FILES = sorted(INVALID.glob("*.yaml"))
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))


def expected_path(path: Path) -> str:
    match = re.search(r"^# expect: (\S+)", path.read_text(), re.MULTILINE)
    assert match, f"{path} lacks an '# expect: field.path' header"
    return match.group(1)


def test_the_invalid_corpus_is_large_enough() -> None:
    assert len(INVALID_FILES) >= 25


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_examples_are_valid(path: Path) -> None:
    assert load_manifests(path)


@pytest.mark.parametrize("path", INVALID_FILES, ids=lambda p: p.name)
def test_invalid_manifest_is_rejected_naming_the_field(path: Path) -> None:
    with pytest.raises(ManifestError) as excinfo:
        load_manifests(path)
    field = expected_path(path)
    assert any(line.startswith(f"{field}: ") for line in excinfo.value.errors), (
        f"expected an error at {field}, got {excinfo.value.errors}"
    )


def test_cli_validate_reports_each_bad_file_and_fails() -> None:
    files = [str(p) for p in INVALID_FILES[:3]]
    result = CliRunner().invoke(app, ["validate", *files])
    assert result.exit_code == 1
    for p in INVALID_FILES[:3]:
        assert p.name in result.output
        assert expected_path(p) in result.output


def test_cli_validate_accepts_the_examples() -> None:
    result = CliRunner().invoke(app, ["validate", *map(str, EXAMPLE_FILES)])
    assert result.exit_code == 0, result.output
    assert result.output.count("is valid") == len(EXAMPLE_FILES)


def test_defaults_are_filled_in() -> None:
    job = TrainingJob.model_validate(
        {
            "apiVersion": "torchyard.io/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": "x"},
            "spec": {"model": {"builtin": "mlp"}, "data": {"builtin": "digits"}},
        }
    )
    assert job.spec.strategy == "ddp"
    assert job.spec.optimizer.name == "adamw"
    assert job.spec.run_policy.backoff_limit == 3
    assert job.spec.checkpoint.keep == 3


def test_wrong_kind_and_version_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: torchyard.io/v9\nkind: TrainingJob\nmetadata: {name: a}\n")
    with pytest.raises(ManifestError, match="apiVersion"):
        load_manifests(bad)
    bad.write_text("apiVersion: torchyard.io/v1alpha1\nkind: Pod\nmetadata: {name: a}\n")
    with pytest.raises(ManifestError, match="kind"):
        load_manifests(bad)
