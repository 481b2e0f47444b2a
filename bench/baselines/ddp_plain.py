"""A bare torchrun DDP training script: the baseline of bench/train_overhead.py.

The same model (MLP), data (in-memory tensors, DistributedSampler shard, index batching),
global batch, optimizer and steps as the torchyard worker run it, with nothing else: no
checkpoints, metrics, evaluation or logging. Prints one JSON line from rank 0.

    torchrun --nproc-per-node 2 bench/baselines/ddp_plain.py --steps 300 --batch 256
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data.distributed import DistributedSampler


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--batch", type=int, default=256, help="global batch")
    p.add_argument("--npz", required=True, help="arrays x (float32) and label (int64)")
    p.add_argument("--hidden", type=int, nargs="+", default=[512, 512])
    p.add_argument("--classes", type=int, default=10)
    args = p.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    with np.load(args.npz) as z:
        x = torch.from_numpy(z["x"].astype(np.float32))
        y = torch.from_numpy(z["label"].astype(np.int64))
    n, features = x.shape
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    width = features
    for h in args.hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    model = DDP(nn.Sequential(*layers, nn.Linear(width, args.classes)))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, seed=0, drop_last=True)  # type: ignore[arg-type]
    local = args.batch // world
    step, epoch, t0 = 0, 0, 0.0
    while step < args.steps:
        sampler.set_epoch(epoch)
        idx = torch.tensor(list(sampler))
        for i in range(len(idx) // local):
            if step == args.warmup:
                dist.barrier()
                t0 = time.perf_counter()
            sel = idx[i * local : (i + 1) * local]
            loss = F.cross_entropy(model(x[sel]), y[sel])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if step == args.steps:
                break
        epoch += 1
    loss_t = loss.detach().clone()
    dist.all_reduce(loss_t)  # one sync at the end, as the timing boundary
    dt = time.perf_counter() - t0
    if rank == 0:
        timed = args.steps - args.warmup
        print(
            json.dumps({"samplesPerSecond": timed * args.batch / dt, "steps": timed, "seconds": dt})
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
