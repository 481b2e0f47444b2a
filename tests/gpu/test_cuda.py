"""GPU tier: what only CUDA can show. Marked `gpu`; tests/conftest.py skips them where
torch sees no CUDA device (CI, the CPU dev machines), so they run on the GPU machine only.

- one worker trains the builtin transformer in bf16 on the GPU through the real worker entry
  point, reports a finite, falling loss, peak GPU memory and (for a GPU whose peak is known,
  or with TORCHYARD_PEAK_FLOPS) MFU;
- the trainer's process group on CUDA is NCCL (a world of one: two NCCL ranks cannot share
  one GPU), and an all-reduce through it is exact.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.worker.helpers import events, job, run_worker

pytestmark = pytest.mark.gpu


def _transformer_job(name: str) -> dict[str, object]:
    return job(
        name,
        strategy="ddp",
        workers=1,
        procsPerWorker=1,
        resources={"gpu": 1, "cpu": "4", "memory": "16Gi"},
        model={
            "builtin": "transformer",
            "args": {"dModel": 256, "layers": 4, "heads": 4, "seqLen": 128, "vocabSize": 1024},
        },
        data={"builtin": "synthetic_tokens", "args": {"seqLen": 128, "vocabSize": 1024}},
        optimizer={"name": "adamw", "lr": 0.001},
        precision="bf16",
        maxSteps=60,
        batchSize=32,
        seed=0,
    )


def test_bf16_transformer_trains_on_the_gpu(tmp_path: Path) -> None:
    result = run_worker(
        _transformer_job("gpu-bf16"), tmp_path, extra_env={"TORCHYARD_PEAK_FLOPS": "989e12"}
    )
    assert result["status"] == "Succeeded"
    steps = [e for e in events(tmp_path / "progress.jsonl") if e["event"] == "step"]
    assert steps, "no step events"
    losses = [float(e["loss"]) for e in steps]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]
    assert any(e.get("mfu") for e in steps), "MFU is never reported on the GPU"


def test_process_group_is_nccl_on_cuda() -> None:
    import torch
    import torch.distributed as dist

    from torchyard_trainer.env import WorkerEnv
    from torchyard_trainer.runtime import init_distributed

    device = init_distributed(WorkerEnv.from_environ({}))
    try:
        assert device.type == "cuda"
        assert dist.get_backend(dist.group.WORLD) in ("nccl", "cpu:gloo,cuda:nccl")
        t = torch.arange(4, dtype=torch.float32, device=device)
        dist.all_reduce(t)
        assert t.tolist() == [0.0, 1.0, 2.0, 3.0]
    finally:
        dist.destroy_process_group()
