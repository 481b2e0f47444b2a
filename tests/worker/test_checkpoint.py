"""Checkpoint atomicity: a process killed while saving leaves the newest complete checkpoint
intact and loadable; the half-written one is never picked and is cleaned by the next save."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.worker.helpers import base_env

pytestmark = pytest.mark.worker


def test_kill_during_save_keeps_the_last_complete_checkpoint(tmp_path: Path) -> None:
    import torch
    import torch.distributed as dist

    from torchyard_trainer.checkpoint import CheckpointManager, latest_checkpoint

    root = tmp_path / "ckpt"
    script = Path(__file__).with_name("ckpt_crash.py")
    proc = subprocess.run(
        [sys.executable, str(script), str(root)],
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert (root / ".tmp-step-000000020" / ".metadata").exists()  # died after writing, pre-commit
    latest = latest_checkpoint(root)
    assert latest is not None
    assert latest[0] == 10
    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        model = torch.nn.Linear(8, 4)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        mgr = CheckpointManager(root, keep=1, async_save=False, rank=0)
        state = mgr.load(latest[1], model, opt)
        assert state["step"] == 10
        expected = torch.load(root / "weights-at-10.pt", weights_only=True)
        for k, v in model.state_dict().items():
            assert torch.equal(v, expected[k]), k
        assert opt.state_dict()["state"], "optimizer momentum restored"
        mgr.save(30, model, opt, {"step": 30, "recipe": "r"})
        assert sorted(p.name for p in root.iterdir() if "step" in p.name) == ["step-000000030"]
    finally:
        dist.destroy_process_group()
