"""Helper of test_checkpoint.py (one process): commit a checkpoint at step 10, then die by
SIGKILL in the middle of writing the step-20 checkpoint."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint import state_dict_saver

from torchyard_trainer.checkpoint import CheckpointManager


def main() -> None:
    root = Path(sys.argv[1])
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 8)).sum().backward()
    opt.step()
    mgr = CheckpointManager(root, keep=3, async_save=False, rank=0)
    mgr.save(10, model, opt, {"step": 10, "recipe": "r"})
    torch.save(model.state_dict(), root / "weights-at-10.pt")
    with torch.no_grad():
        model.weight.add_(1.0)
    real_save = state_dict_saver.save

    def dying_save(state, **kw):  # type: ignore[no-untyped-def]
        real_save(state, **kw)  # the data files and .metadata are written ...
        os.kill(os.getpid(), signal.SIGKILL)  # ... but the process dies before the commit

    state_dict_saver.save = dying_save
    mgr.save(20, model, opt, {"step": 20, "recipe": "r"})


if __name__ == "__main__":
    main()
