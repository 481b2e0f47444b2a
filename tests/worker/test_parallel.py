"""DDP and pipeline parallelism against the single-process / unsplit computation (real gloo)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.worker.helpers import base_env, free_port, job, model_weights, run_worker

pytestmark = pytest.mark.worker


def _ddp_job(store: str) -> dict:
    return job(
        "ddp-equivalence",
        model={"builtin": "mlp", "args": {"hidden": [32]}},
        data={"builtin": "digits"},
        optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9},
        lrSchedule={"kind": "step", "stepSize": 10, "gamma": 0.5, "warmupSteps": 3},
        epochs=1,
        maxSteps=20,
        batchSize=32,
        gradAccumulationSteps=2,
        output={"storage": store},
    )


def test_ddp_two_ranks_match_one_process(tmp_path: Path) -> None:
    """2 ranks × 2 micro-batches of 8 == 1 process × 2 micro-batches of 16 (same global batch)."""
    one = run_worker(_ddp_job(f"file://{tmp_path}/one/models"), tmp_path / "one", nproc=1)
    two = run_worker(_ddp_job(f"file://{tmp_path}/two/models"), tmp_path / "two", nproc=2)
    assert one["step"] == two["step"] == 20
    assert two["worldSize"] == 2
    w1, w2 = model_weights(one), model_weights(two)
    assert w1.keys() == w2.keys()
    worst = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
    moved = max(float((w1[k]).abs().max()) for k in w1)
    print(f"DDP 2 ranks vs 1 process: max |Δparam| = {worst:.2e} (params up to {moved:.2f})")
    assert worst < 1e-5


def test_pipeline_schedules_match_unsplit_model(tmp_path: Path) -> None:
    script = Path(__file__).with_name("pipeline_check.py")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        str(script),
        str(tmp_path),
    ]
    proc = subprocess.run(
        cmd, env=base_env(), capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for kind in ("GPipe", "1F1B", "Interleaved1F1B"):
        stages = [s for r in ranks for s in r[kind]["stages"]]
        params = [p for r in ranks for p in r[kind]["params"]]
        assert len(params) == len(set(params)) == 8, f"{kind}: every parameter on exactly one rank"
        loss, ref = ranks[1][kind]["loss"], ranks[1][kind]["refLoss"]
        grad_diff = max(r[kind]["maxGradDiff"] for r in ranks)
        print(
            f"{kind}: stages {stages} loss {loss:.6f} vs unsplit {ref:.6f}, "
            f"max |Δgrad| {grad_diff:.2e}"
        )
        assert loss == pytest.approx(ref, rel=1e-5, abs=1e-6)
        assert grad_diff < 1e-5


def test_pipeline_with_data_parallel_matches_one_process(tmp_path: Path) -> None:
    """4 ranks = 2 pipeline stages × 2 data-parallel replicas (2-D mesh), GPipe, trains to the
    same weights as one process on the same global batch."""
    spec = _ddp_job(f"file://{tmp_path}/one/models")
    spec["spec"]["gradAccumulationSteps"] = 1
    spec["spec"]["model"]["args"] = {"hidden": [32, 32]}
    one = run_worker(spec, tmp_path / "one", nproc=1)
    spec["spec"]["strategy"] = "pipeline"
    spec["spec"]["pipeline"] = {"stages": 2, "microbatches": 4, "schedule": "GPipe"}
    spec["spec"]["procsPerWorker"] = 4
    spec["spec"]["output"] = {"storage": f"file://{tmp_path}/four/models"}
    four = run_worker(spec, tmp_path / "four", nproc=4)
    assert four["worldSize"] == 4
    w1, w4 = model_weights(one), model_weights(four)
    assert w1.keys() == w4.keys()
    worst = max(float((w1[k] - w4[k]).abs().max()) for k in w1)
    print(f"pipeline 2 stages × dp 2 vs 1 process: max |Δparam| = {worst:.2e}")
    assert worst < 1e-5
