"""Acceptance 3 of the watch-a-job issue with real processes: a 2-worker `torchyard run` whose
rank 1 is SIGKILLed on the first attempt restarts the group; afterwards (the processes long
gone) `torchyard logs --attempt 0 --rank 1` prints the first attempt's log from the job's
storage, where the worker launcher archived it as it ran."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.unit.kubestub import serving
from tests.worker.helpers import TIMEOUT, base_env, job, run_local

pytestmark = pytest.mark.worker

KILL_AT = 12
KILLED = "fault injection: rank 1 kills itself at step"


def _manifest(tmp: Path) -> Path:
    doc = job(
        "logged",
        workers=2,
        model={"builtin": "mlp", "args": {"hidden": [32]}},
        data={"builtin": "digits"},
        optimizer={"name": "adamw", "lr": 0.003},
        epochs=1,
        batchSize=64,
        checkpoint={"everySteps": 5, "keep": 1},
        runPolicy={"backoffLimit": 1},
    )
    path = tmp / "logged.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _torchyard(cwd: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-c", "from torchyard.cli import main; main()", *args],
        env=base_env(),
        cwd=cwd,
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )


def test_logs_of_a_restarted_runs_first_attempt_come_from_the_archive(tmp_path: Path) -> None:
    run = run_local(
        _manifest(tmp_path),
        tmp_path,
        extra_env={"TORCHYARD_FAULT_KILL_AT_STEP": str(KILL_AT), "TORCHYARD_FAULT_KILL_RANK": "1"},
    )
    assert run.returncode == 0, run.stderr[-4000:]
    assert "restarting the whole group" in run.stderr

    root = tmp_path / "torchyard-runs" / "models" / ".logs" / "default" / "logged"
    assert sorted(p.name for p in root.iterdir()) == ["attempt-0", "attempt-1"]

    first = _torchyard(tmp_path, "logs", "logged", "--local", "--attempt", "0", "--rank", "1")
    assert first.returncode == 0, first.stderr
    text = first.stdout.decode()
    assert text.startswith("===== torchyard: attempt 0 rank 1 started")
    assert f"{KILLED} {KILL_AT}" in text  # the first attempt's own last words

    second = _torchyard(tmp_path, "logs", "logged", "--local", "--attempt", "1", "--rank", "1")
    assert second.returncode == 0, second.stderr
    assert second.stdout.decode().startswith("===== torchyard: attempt 1 rank 1 started")
    assert KILLED not in second.stdout.decode()

    # The cluster path on the same launcher-written archive: the job as the API server
    # returns it (its pods gone, cleaned up), its store reachable here.
    models = tmp_path / "torchyard-runs" / "models"
    with serving() as api:
        api.answers["/apis/torchyard.io/v1alpha1/namespaces/default/trainingjobs/logged"] = (
            200,
            {
                "apiVersion": "torchyard.io/v1alpha1",
                "kind": "TrainingJob",
                "metadata": {"name": "logged", "namespace": "default", "uid": "u"},
                "spec": {"workers": 2, "output": {"storage": f"file://{models}"}},
                "status": {"phase": "Succeeded", "restarts": 1},
            },
        )
        api.answers["/api/v1/namespaces/default/pods"] = (200, {"kind": "PodList", "items": []})
        config = str(api.kubeconfig(tmp_path, namespace="default"))
        gone = _torchyard(tmp_path, "logs", "logged", "-a", "0", "-r", "1", "--kubeconfig", config)
    assert gone.returncode == 0, gone.stderr
    assert gone.stdout == first.stdout

    # what each pod's launcher recorded: rank 1 died of SIGKILL (128 + 9) on attempt 0, the
    # second attempt succeeded everywhere
    killed = json.loads((root / "attempt-0" / "rank-1.json").read_text())
    assert killed["exitCode"] == 137
    for rank in (0, 1):
        done = json.loads((root / "attempt-1" / f"rank-{rank}.json").read_text())
        assert done["exitCode"] == 0
        assert done["dropped"] == 0
        assert done["bytes"] == len((root / "attempt-1" / f"rank-{rank}.log").read_bytes())
