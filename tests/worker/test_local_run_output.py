"""`torchyard run`'s output, with real processes: the result on stdout (one JSON document with
``--output json``), progress on stderr, a fresh log.txt per run with the previous ones kept,
a failing precheck before any worker starts, and a custom command's progress line."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.worker.helpers import REPO, TIMEOUT, base_env, job

pytestmark = pytest.mark.worker

ATTEMPT_HEADER = "===== attempt 0 · started "


def _torchyard_run(manifest: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI (`torchyard run`), stdout and stderr apart, neither a terminal."""
    return subprocess.run(
        [sys.executable, "-m", "torchyard.cli", "run", str(manifest), *args],
        env=base_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def _write(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


def test_json_result_on_stdout_progress_on_stderr_and_fresh_logs(tmp_path: Path) -> None:
    doc = yaml.safe_load((REPO / "examples" / "digits-ddp.yaml").read_text())
    doc["spec"]["epochs"] = 1  # the example as is, only shorter
    manifest = _write(tmp_path / "digits-ddp.yaml", doc)
    name = doc["metadata"]["name"]

    first = _torchyard_run(manifest, tmp_path, "--output", "json")
    assert first.returncode == 0, first.stderr[-4000:]
    # acceptance 4 of issue 15, literally: a script reads stdout as one JSON document
    check = subprocess.run(
        [sys.executable, "-c", "import json,sys; json.load(sys.stdin)"],
        input=first.stdout,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr + first.stdout[-2000:]
    result = json.loads(first.stdout)
    run_dir = tmp_path / "torchyard-runs" / name
    assert result["phase"] == "Succeeded"
    assert result["runDir"] == str(run_dir)
    assert [p["exitCode"] for p in result["pods"]] == [0] * doc["spec"]["workers"]
    assert Path(result["model"]["path"], "model.safetensors").is_file()
    total = result["progress"]["totalSteps"]
    assert result["progress"]["step"] == total > 0
    # progress and messages on stderr, none of it on stdout
    assert f"{name}: step {total}/{total}" in first.stderr
    assert "metrics: rank 0" in first.stderr
    assert "metrics:" not in first.stdout
    assert "step " not in first.stdout
    first_log = (run_dir / "pod-0" / "log.txt").read_text()
    assert first_log.count(ATTEMPT_HEADER) == 1

    second = _torchyard_run(manifest, tmp_path)  # human output
    assert second.returncode == 0, second.stderr[-4000:]
    # the summary on stdout, paths whole (stdout is no terminal: plain lines, never cut)
    assert "Succeeded" in second.stdout
    assert f"run folder       {run_dir}\n" in second.stdout
    assert "…" not in second.stdout
    assert "metrics:" not in second.stdout
    # log.txt is this run's alone; the first run's is kept beside it
    assert (run_dir / "pod-0" / "log.1.txt").read_text() == first_log
    # (appended, it would hold both runs' headers)
    assert (run_dir / "pod-0" / "log.txt").read_text().count(ATTEMPT_HEADER) == 1


@pytest.mark.parametrize(
    ("example", "field"),
    [
        ("compress-prune", "spec.source.trainingJobRef"),
        ("digits-distillation", "spec.distillation.teacher.trainingJobRef"),
    ],
)
def test_a_job_without_the_model_it_takes_from_another_fails_before_any_worker(
    tmp_path: Path, example: str, field: str
) -> None:
    doc = yaml.safe_load((REPO / "examples" / f"{example}.yaml").read_text())
    manifest = _write(tmp_path / f"{example}.yaml", doc)  # in a folder where nothing ran
    proc = _torchyard_run(manifest, tmp_path, "-o", "json")
    assert proc.returncode == 2, proc.stderr[-4000:]
    message = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(message) == 1, proc.stderr
    assert message[0].startswith(f"{doc['kind']} {doc['metadata']['name']}: {field}: ")
    assert "'digits-ddp'" in message[0]
    result = json.loads(proc.stdout)
    assert result["phase"] == "Failed"
    assert result["exitCode"] == 2
    assert result["message"].startswith(f"{field}: ")
    # no worker was planned or started: no run folder, no log, no spec written
    assert not (tmp_path / "torchyard-runs" / doc["metadata"]["name"]).exists()
    assert not list(tmp_path.rglob("log.txt"))


def _custom(name: str, code: str) -> dict[str, Any]:
    return job(
        name,
        command=[sys.executable, "-c", code],
        model={"builtin": "mlp"},
        data={"builtin": "digits"},
        runPolicy={"backoffLimit": 0},
    )


def test_a_custom_command_shows_what_runs_not_an_empty_counter(tmp_path: Path) -> None:
    doc = _custom("byo", "print('hello from my script')")
    proc = _torchyard_run(_write(tmp_path / "byo.yaml", doc), tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    command = shlex.join(doc["spec"]["command"])
    progress = [line for line in proc.stderr.splitlines() if line.startswith("byo: ")]
    assert progress, proc.stderr
    assert progress[0].startswith(f"byo: running {command} · 0:00:"), progress
    assert not any("?" in line or "starting" in line for line in progress), progress
    assert "Succeeded" in proc.stdout
    log = tmp_path / "torchyard-runs" / "byo" / "pod-0" / "log.txt"
    assert "hello from my script" in log.read_text()


def test_a_failed_pods_log_tail_ends_before_the_next_line(tmp_path: Path) -> None:
    # a last log line without a newline, as a worker killed mid-write leaves it
    code = "import sys; sys.stdout.write('step 1 ok\\npartial line'); sys.exit(1)"
    doc = _custom("crash", code)
    proc = _torchyard_run(_write(tmp_path / "crash.yaml", doc), tmp_path, "-o", "json")
    assert proc.returncode == 1, proc.stderr[-4000:]
    log = tmp_path / "torchyard-runs" / "crash" / "pod-0" / "log.txt"
    lines = proc.stderr.splitlines()
    assert "partial line" in lines, proc.stderr
    assert lines[lines.index("partial line") + 1] == f"----- end of {log} -----"
    assert "pod 0 exited 1 (permanent)" in proc.stderr
    result = json.loads(proc.stdout)
    assert result["phase"] == "Failed"
    assert result["pods"] == [{"index": 0, "exitCode": 1, "log": str(log)}]
