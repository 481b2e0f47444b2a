"""Preemption loses (almost) nothing: SIGTERM to the launcher of a 2-rank torch.distributed run
mid-epoch → both ranks finish the same step, checkpoint it and exit 143 (retryable) → the
next run resumes at exactly that step, so no step is redone (stated in docs/operator.md).

No periodic checkpoint can be due before the signal (``everySteps`` past the end), so the
checkpoint found proves the save on SIGTERM; without it the ranks die on the signal with no
checkpoint and the rerun starts at 0."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.worker.helpers import base_env, events, free_port, job
from torchyard.api.contract import CHECKPOINTS_SUBDIR, ExitCode
from torchyard_trainer.checkpoint import latest_checkpoint
from torchyard_trainer.launch import single_node_command

pytestmark = pytest.mark.worker

MAX_STEPS = 400
SHUTDOWN_TIMEOUT = "25"


def _manifest(out: Path) -> Path:
    doc = job(
        "preempt",
        workers=1,
        procsPerWorker=2,
        # wide enough that a step takes milliseconds: the signal lands mid-run
        model={"builtin": "mlp", "args": {"hidden": [1024, 1024]}},
        data={"builtin": "digits"},
        optimizer={"name": "adamw", "lr": 0.001},
        epochs=50,
        maxSteps=MAX_STEPS,
        batchSize=32,
        checkpoint={"everySteps": 10 * MAX_STEPS, "keep": 2, "asyncSave": True},
    )
    path = out / "spec.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _start(out: Path, spec: Path) -> subprocess.Popen[str]:
    env = base_env(
        TORCHYARD_SPEC=str(spec),
        TORCHYARD_OUTPUT_DIR=str(out),
        TORCHYARD_SHUTDOWN_TIMEOUT_SECONDS=SHUTDOWN_TIMEOUT,
    )
    return subprocess.Popen(
        single_node_command(2, free_port()),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _steps(progress: Path) -> list[int]:
    if not progress.is_file():
        return []
    return [e["step"] for e in events(progress) if e["event"] == "step"]


def test_sigterm_checkpoints_the_current_step_and_the_rerun_resumes_there(tmp_path: Path) -> None:
    spec = _manifest(tmp_path)
    progress = tmp_path / "progress.jsonl"
    proc = _start(tmp_path, spec)
    deadline = time.monotonic() + 300
    while not _steps(progress):  # every rank is in the loop (a step report is a collective)
        assert proc.poll() is None, proc.communicate()[1][-4000:]
        assert time.monotonic() < deadline, "no step reported"
        time.sleep(0.05)
    seen = max(_steps(progress))
    proc.send_signal(signal.SIGTERM)  # what the kubelet sends to the pod's PID 1
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == ExitCode.PREEMPTED, stderr[-4000:]
    assert "stopped on SIGTERM after step" in stderr, stderr[-4000:]

    # the default store is <output>/models, checkpoints under its .checkpoints/<ns>/<job>
    found = latest_checkpoint(tmp_path / "models" / CHECKPOINTS_SUBDIR / "default" / "preempt")
    assert found is not None, f"no checkpoint written on SIGTERM:\n{stderr[-4000:]}"
    saved, _ = found
    assert seen <= saved < MAX_STEPS, (seen, saved)
    failure = json.loads((tmp_path / "result.json").read_text())
    assert failure["exitCode"] == ExitCode.PREEMPTED
    assert failure["retryable"] is True
    assert f"after step {saved} and checkpointed it" in failure["message"]

    rerun = _start(tmp_path, spec)
    _, stderr = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, stderr[-4000:]
    starts = [e for e in events(progress) if e["event"] == "start"]
    assert [s["startStep"] for s in starts] == [0, saved]  # resumed at the step it stopped
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["step"] == MAX_STEPS
    print(
        f"SIGTERM after step report {seen}: stopped and checkpointed at step {saved}, "
        f"rerun resumed at {starts[1]['startStep']} (0 steps redone)"
    )
