"""A rank killed mid-training: `torchyard run` restarts the whole group from the newest
checkpoint and the run ends where an uninterrupted one does."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.worker.helpers import events, job, run_local

pytestmark = pytest.mark.worker

KILL_AT = 25
EVERY = 10


def _manifest(tmp: Path) -> Path:
    doc = job(
        "restart",
        workers=2,
        model={"builtin": "mlp", "args": {"hidden": [64]}},
        data={"builtin": "digits"},
        optimizer={"name": "adamw", "lr": 0.003},
        lrSchedule={"kind": "cosine", "warmupSteps": 5},
        epochs=3,
        batchSize=64,
        checkpoint={"everySteps": EVERY, "keep": 2},
        runPolicy={"backoffLimit": 1},
    )
    path = tmp / "restart.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _result(cwd: Path) -> dict:
    import json

    return json.loads((cwd / "torchyard-runs" / "restart" / "pod-0" / "result.json").read_text())


def test_killed_rank_restarts_group_from_checkpoint(tmp_path: Path) -> None:
    clean, faulty = tmp_path / "clean", tmp_path / "faulty"
    clean.mkdir()
    faulty.mkdir()
    manifest = _manifest(tmp_path)
    ok = run_local(manifest, clean)
    assert ok.returncode == 0, ok.stderr[-4000:]
    # rank 1 (the second pod) SIGKILLs itself after step KILL_AT on the first attempt only
    hit = run_local(
        manifest,
        faulty,
        extra_env={"TORCHYARD_FAULT_KILL_AT_STEP": str(KILL_AT), "TORCHYARD_FAULT_KILL_RANK": "1"},
    )
    assert hit.returncode == 0, hit.stderr[-4000:]
    assert "exited 137 (retryable)" in hit.stderr
    assert "restarting the whole group" in hit.stderr
    starts = [
        e
        for e in events(faulty / "torchyard-runs/restart/pod-0/progress.jsonl")
        if e["event"] == "start"
    ]
    assert [s["restarts"] for s in starts] == [0, 1]
    resumed = starts[1]["startStep"]
    assert 0 < resumed <= KILL_AT, resumed
    assert resumed % EVERY == 0, resumed
    a, b = _result(clean), _result(faulty)
    assert b["restarts"] == 1
    assert a["restarts"] == 0
    assert a["step"] == b["step"]
    print(
        f"uninterrupted accuracy {a['metrics']['accuracy']:.4f}; killed at step {KILL_AT}, resumed "
        f"from step {resumed}: accuracy {b['metrics']['accuracy']:.4f}"
    )
    assert b["metrics"]["accuracy"] == pytest.approx(a["metrics"]["accuracy"], abs=0.01)
    # exact resume (weights, optimizer, LR schedule, sampler position, RNG): on CPU the
    # restarted run ends with bit-identical weights
    assert b["model"]["sha256"] == a["model"]["sha256"]
    assert b["metrics"]["loss"] == pytest.approx(a["metrics"]["loss"], rel=0.05)


def test_permanent_failure_is_not_retried(tmp_path: Path) -> None:
    """A bad spec inside the worker (exit 2) fails the job at once, without restarts."""
    doc = job(
        "bad",
        model={"builtin": "mlp", "args": {"nonsense": 1}},
        data={"builtin": "digits"},
        runPolicy={"backoffLimit": 3},
    )
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    proc = run_local(path, tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "permanent" in proc.stderr
    assert "restarting" not in proc.stderr
