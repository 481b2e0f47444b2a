"""Run under torchrun (2 ranks): each pipeline schedule of torchyard_trainer vs the unsplit model.

Writes ``<out>/rank<r>.json`` with, per schedule, the pipeline loss (last stage) and the largest
difference between this rank's stage gradients and the unsplit model's gradients.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.pipelining import PipelineStage

from torchyard_trainer.data import DataInfo
from torchyard_trainer.models import BUILTINS, split_boundaries, stage_module
from torchyard_trainer.parallel import ParallelDims
from torchyard_trainer.train.pipeline import build_schedule, local_stage_ids


def main() -> None:
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    info = DataInfo("classification", (64,), 10)
    full = BUILTINS["mlp"](info, hidden=[32, 32, 32])
    x = torch.randn(32, 64)
    y = torch.randint(0, 10, (32,))
    ref_model = copy.deepcopy(full)
    ref_loss = F.cross_entropy(ref_model(x), y)
    ref_loss.backward()
    ref_grads = {n: p.grad for n, p in ref_model.named_parameters()}
    results = {}
    for kind, virtual in (("GPipe", 1), ("1F1B", 1), ("Interleaved1F1B", 2)):
        dims = ParallelDims.build(world, pp=world, virtual_stages=virtual)
        model = copy.deepcopy(full)
        bounds = split_boundaries(model, dims.num_stages, [])
        ids = local_stage_ids(dims, rank)
        mods = [stage_module(model, bounds[i]) for i in ids]
        stages = [
            PipelineStage(m, i, dims.num_stages, torch.device("cpu"))
            for i, m in zip(ids, mods, strict=True)
        ]
        sched = build_schedule(kind, stages, 4, lambda o, t: F.cross_entropy(o, t))
        losses: list[torch.Tensor] = []
        first, last = 0 in ids, dims.num_stages - 1 in ids
        args = (x,) if first else ()
        sched.step(*args, target=y if last else None, losses=losses)
        diff = 0.0
        names = []
        for m in mods:
            for n, p in m.named_parameters():
                names.append(n)
                diff = max(diff, float((p.grad - ref_grads[n]).abs().max()))
        results[kind] = {
            "stages": [bounds[i] for i in ids],
            "params": names,
            "maxGradDiff": diff,
            "loss": float(torch.stack(losses).mean()) if last else None,
            "refLoss": float(ref_loss),
        }
    (out / f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
