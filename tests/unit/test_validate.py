"""`torchyard validate`: every example passes; every invalid manifest fails naming its field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import EXAMPLES, INVALID, VALID
from torchyard.api import ManifestError, TrainingJob, check_manifests, load_manifests
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


VALID_FILES = sorted(VALID.glob("*.yaml"))


@pytest.mark.parametrize("path", VALID_FILES, ids=lambda p: p.name)
def test_valid_corpus_is_accepted_with_the_warnings_its_header_names(path: Path) -> None:
    check = check_manifests(path)
    assert not check.errors
    assert check.jobs
    expected = re.findall(r"^# warns: (.+)$", path.read_text(), re.MULTILINE)
    assert [w.removeprefix(f"{path}: ").split(";")[0] for w in check.warnings] == expected


def test_an_integral_number_is_an_integer_as_for_the_api_server() -> None:
    (job,) = load_manifests(VALID / "workers_integral_float.yaml")
    assert isinstance(job, TrainingJob)
    assert job.spec.workers == 2
    assert type(job.spec.workers) is int


@pytest.mark.parametrize(
    ("value", "got"),
    [
        ("true", "boolean true"),
        ("'2'", 'string "2"'),
        ("2.5", "number 2.5"),
        ("[2]", "array [2]"),
    ],
)
def test_no_coercion_into_an_integer(tmp_path: Path, value: str, got: str) -> None:
    bad = tmp_path / "job.yaml"
    bad.write_text(_manifest(f"workers: {value}"))
    with pytest.raises(ManifestError) as excinfo:
        load_manifests(bad)
    assert excinfo.value.errors == [f"spec.workers: must be of type integer, got {got}"]


def test_a_number_is_not_coerced_into_a_string_nor_a_string_into_a_boolean(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "job.yaml"
    bad.write_text(_manifest("output: {modelName: 7}\n  runPolicy: {suspend: 'yes'}"))
    with pytest.raises(ManifestError) as excinfo:
        load_manifests(bad)
    assert sorted(excinfo.value.errors) == [
        "spec.output.modelName: must be of type string, got integer 7",
        'spec.runPolicy.suspend: must be of type boolean, got string "yes"',
    ]


def _manifest(spec_extra: str = "", name: str = "a") -> str:
    return (
        "apiVersion: torchyard.io/v1alpha1\n"
        "kind: TrainingJob\n"
        f"metadata: {{name: {name}}}\n"
        "spec:\n"
        "  model: {builtin: mlp}\n"
        "  data: {builtin: digits}\n" + (f"  {spec_extra}\n" if spec_extra else "")
    )


def test_the_name_pattern_prints_whole() -> None:
    result = CliRunner().invoke(app, ["validate", str(INVALID / "bad_name.yaml")])
    assert result.exit_code == 1
    assert "'^[a-z]([-a-z0-9]*[a-z0-9])?$'" in result.output, result.output


def test_a_duplicate_key_is_a_warning_naming_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(_manifest("workers: 2\n  epochs: 3\n  workers: 4"))
    check = check_manifests(path)
    assert not check.errors
    (job,) = check.jobs
    assert isinstance(job, TrainingJob)
    assert job.spec.workers == 4  # the last value, as kubectl takes it
    (warning,) = check.warnings
    assert warning.startswith(f"{path}: line 9: duplicate key 'workers' (first at line 7)")
    assert warning.endswith("; kubectl keeps the last value, from line 9")

    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output  # still valid: a warning, not an error
    assert "warning: " in result.output
    assert "line 9" in result.output
    assert "line 7" in result.output


def test_a_yaml_error_names_the_file_and_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("apiVersion: torchyard.io/v1alpha1\nkind: [TrainingJob\nmetadata: {}\n")
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert "<unicode string>" not in result.output
    (line,) = result.output.splitlines()
    assert line.startswith(f"✗ {path}: (root): not valid YAML: line 3, column 9: ")


def test_documents_are_numbered_from_one_in_every_message(tmp_path: Path) -> None:
    path = tmp_path / "many.yaml"
    path.write_text(
        _manifest(name="first")
        + "---\n"
        + _manifest("workers: 0\n  seed: 1\n  seed: 2", name="second")
        + "---\n"
        + _manifest(name="Third")
    )
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert f"✓ {path}: TrainingJob first is valid" in lines
    assert any(line.startswith(f"✗ {path} (document 2): spec.workers: ") for line in lines)
    assert any(line.startswith(f"✗ {path} (document 3): metadata.name: ") for line in lines)
    assert any(
        line.startswith(
            f"warning: {path} (document 2): line 16: duplicate key 'seed' (first at line 15)"
        )
        for line in lines
    ), lines
    assert "#0" not in result.output
    assert "document 0" not in result.output


def test_a_single_document_file_says_no_document_number(tmp_path: Path) -> None:
    path = tmp_path / "one.yaml"
    path.write_text("---\n" + _manifest("workers: 0") + "---\n")  # empty documents skipped
    with pytest.raises(ManifestError) as excinfo:
        load_manifests(path)
    assert excinfo.value.source == str(path)


def test_a_yaml_error_in_a_later_document_names_that_document(tmp_path: Path) -> None:
    path = tmp_path / "many.yaml"
    # A leading `---` opens document 1; an empty document between two `---` still counts.
    path.write_text("---\n" + _manifest() + "---\n---\n" + "kind: [TrainingJob\nspec: {}\n")
    with pytest.raises(ManifestError) as excinfo:
        load_manifests(path)
    assert excinfo.value.source == f"{path} (document 3)"
    assert excinfo.value.errors[0].startswith("(root): not valid YAML: line 11, column 5: ")
