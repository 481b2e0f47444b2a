"""Ctrl-C on `torchyard run`: every worker process ends, the last checkpoint stays, and the next
run of the same manifest resumes from it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.worker.helpers import base_env, events, job

pytestmark = pytest.mark.worker


def _workers_of(run_dir: Path) -> list[int]:
    """PIDs of live processes whose environment points at this run's spec."""
    needle = f"TORCHYARD_SPEC={run_dir / 'spec.yaml'}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if needle in (proc / "environ").read_bytes().split(b"\0"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _ctrl_c_as_on_a_terminal() -> None:
    """A shell starts background jobs (`make test &`, nohup) with SIGINT ignored, and the
    child inherits that: Python then never raises KeyboardInterrupt. A user's Ctrl-C reaches a
    foreground process whose SIGINT is the default one, so that is what the run gets."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(cmd: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        cmd,
        env=base_env(),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_ctrl_c_as_on_a_terminal,
    )


def _wait_for(predicate, what: str, limit: float = 300.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.2)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_ctrl_c_stops_every_worker_and_keeps_the_checkpoint(tmp_path: Path) -> None:
    doc = job(
        "interrupt",
        workers=2,
        model={"builtin": "mlp", "args": {"hidden": [64]}},
        data={"builtin": "digits"},
        epochs=200,
        batchSize=32,
        checkpoint={"everySteps": 20, "keep": 2, "asyncSave": False},
    )
    manifest = tmp_path / "interrupt.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    run_dir = tmp_path / "torchyard-runs" / "interrupt"
    progress = run_dir / "pod-0" / "progress.jsonl"
    cmd = [sys.executable, "-m", "torchyard.local", str(manifest)]
    proc = _start(cmd, tmp_path)

    def checkpointed() -> bool:
        return progress.exists() and any(e["event"] == "checkpoint" for e in events(progress))

    _wait_for(checkpointed, "a first checkpoint")
    assert _workers_of(run_dir), "workers should be running"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "last checkpoint is kept" in err
    assert _workers_of(run_dir) == []
    ckpts = sorted(
        (tmp_path / "torchyard-runs/models/.checkpoints/default/interrupt").glob("step-*")
    )
    assert ckpts, "the checkpoint must survive Ctrl-C"
    last = int(ckpts[-1].name.split("-")[1])
    # the next run resumes from it (and is stopped again right away: we only check the resume)
    proc = _start(cmd, tmp_path)

    def restarted() -> bool:
        return len([e for e in events(progress) if e["event"] == "start"]) >= 2

    _wait_for(restarted, "the second run's start")
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    starts = [e for e in events(progress) if e["event"] == "start"]
    assert starts[1]["startStep"] >= last
    assert json.dumps(starts[1]["resumedFrom"]).count("step-") == 1
    # The checkpoint resumed from stays until newer ones replace it: on a quiet machine the
    # second run gets past another everySteps boundary before the Ctrl-C lands, checkpoints
    # there and at the stop, and keep: 2 then prunes the older one.
    newer = [p for p in ckpts[-1].parent.glob("step-*") if int(p.name.split("-")[1]) > last]
    assert os.path.exists(ckpts[-1]) or len(newer) >= 2
