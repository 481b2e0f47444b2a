"""Rank 0's progress lines on the worker's console (torchyard_trainer/console.py): what makes
``kubectl logs`` of a worker pod show anything at all on a successful run."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from torchyard_trainer import console
from torchyard_trainer.metrics import WorkerMetrics

START = {"strategy": "ddp", "worldSize": 2, "totalSteps": 690, "epochs": 30, "startStep": 0}


def _step(step: int, total: int = 690, per_epoch: int = 23) -> dict[str, object]:
    return {
        "epoch": (step - 1) // per_epoch,
        "step": step,
        "totalSteps": total,
        "stepsPerEpoch": per_epoch,
        "loss": 0.5,
        "samplesPerSecond": 600.0,
    }


def test_start_eval_checkpoint_and_end_have_lines() -> None:
    start = console.line("start", START)
    assert start is not None
    assert "ddp" in start
    assert "world size 2" in start
    resumed = console.line("start", {**START, "startStep": 400, "restarts": 1})
    assert resumed is not None
    assert "resuming at step 400" in resumed
    assert "accuracy 0.9700" in str(console.line("eval", {"step": 5, "accuracy": 0.97}))
    assert "step-200" in str(console.line("checkpoint", {"step": 200, "uri": "/c/step-200"}))
    end = console.line(
        "end", {"status": "Succeeded", "model": {"name": "m", "version": 3}, "metrics": {}}
    )
    assert end is not None
    assert "Succeeded" in end
    assert "m v3" in end


def test_steps_are_thinned_to_a_few_dozen_lines() -> None:
    total = 690
    shown = [s for s in range(1, total + 1) if console.line("step", _step(s, total)) is not None]
    assert shown[0] == 1
    assert shown[-1] == total
    assert 23 in shown  # the last step of the first epoch
    assert len(shown) < total // 10
    line = console.line("step", _step(1, total))
    assert line is not None
    assert "step 1/690" in line
    assert "loss 0.5000" in line


@pytest.mark.parametrize(("rank", "lines"), [(0, 1), (1, 0)])
def test_only_rank_0_writes_progress_lines(
    rank: int, lines: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    jsonl = tmp_path / "progress.jsonl" if rank == 0 else None
    metrics = WorkerMetrics("j", "ns", rank, None, jsonl)
    try:
        with caplog.at_level(logging.INFO, logger="torchyard_trainer.progress"):
            metrics.event("start", **START)
    finally:
        metrics.close()
    assert len([r for r in caplog.records if "start: ddp" in r.getMessage()]) == lines
