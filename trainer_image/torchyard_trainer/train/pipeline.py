"""Pipeline parallelism with torch.distributed.pipelining (GPipe, 1F1B, interleaved 1F1B),
combined with data parallelism over a 2-D ("dp", "pp") DeviceMesh when the world allows.

Every rank builds the full model from the same seed and keeps only its stages (named children
of the builtin ``nn.Sequential``, with their original names, so checkpoints and model versions
look exactly like the unsplit model's). Within a pipeline replica the schedule splits the
replica's batch (``batchSize / dp``) into ``microbatches × gradAccumulationSteps`` microbatches;
gradients are scaled by 1/microbatches (the mean-loss gradient) and then averaged over the
data-parallel replicas with one all-reduce per step.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors  # type: ignore[attr-defined,unused-ignore]
from torch.distributed.pipelining import (
    PipelineStage,
    Schedule1F1B,
    ScheduleGPipe,
    ScheduleInterleaved1F1B,
)
from torch.distributed.pipelining.schedules import _PipelineSchedule
from torch.utils._pytree import tree_flatten

from torchyard_trainer.artifacts import load_weights
from torchyard_trainer.data import Dataset, eval_batches
from torchyard_trainer.env import ConfigError
from torchyard_trainer.models import (
    build_model,
    count_correct,
    loss_fn,
    split_boundaries,
    stage_module,
)
from torchyard_trainer.optim import build_optimizer
from torchyard_trainer.parallel import ParallelDims
from torchyard_trainer.storage import fetch
from torchyard_trainer.train.base import Runtime
from torchyard_trainer.train.run import run_training, setup_data


def local_stage_ids(dims: ParallelDims, pp_rank: int) -> list[int]:
    """Stages of one pipeline rank: pp_rank, pp_rank + pp, … (the loop layout that the
    interleaved schedule expects)."""
    return [pp_rank + k * dims.pp for k in range(dims.virtual_stages)]


def build_schedule(
    kind: str, stages: Sequence[PipelineStage], n_microbatches: int, loss: Any
) -> _PipelineSchedule:
    if kind == "Interleaved1F1B":
        return ScheduleInterleaved1F1B(list[Any](stages), n_microbatches, loss_fn=loss)
    if len(stages) != 1:
        raise ConfigError(f"schedule {kind} runs one stage per rank (virtualStagesPerRank: 1)")
    if kind == "GPipe":
        return ScheduleGPipe(stages[0], n_microbatches, loss_fn=loss)
    if kind == "1F1B":
        return Schedule1F1B(stages[0], n_microbatches, loss_fn=loss)
    raise ConfigError(f"unknown pipeline schedule {kind!r}")


class PipelineStrategy:
    """This rank's stages of every pipeline step."""

    def __init__(self, rt: Runtime, ds: Dataset) -> None:
        self.rt = rt
        spec = rt.spec
        dims = rt.dims
        self.dims = dims
        self.dp_rank, self.pp_rank = dims.coords(rt.rank)
        mesh = dims.build_mesh(rt.device.type)
        self.pp_group = mesh["pp"].get_group()
        self.dp_group = mesh["dp"].get_group() if dims.dp > 1 else None
        torch.manual_seed(spec.seed)
        full = build_model(rt.model_spec, ds.info)
        if rt.model_spec.checkpoint:
            load_weights(
                fetch(rt.model_spec.checkpoint, rt.env.pvc_root, rt.env.output_dir / "cache"), full
            )
        self.bounds = split_boundaries(full, dims.num_stages, list(rt.model_spec.split_points))
        self.stage_ids = local_stage_ids(dims, self.pp_rank)
        self.stage_mods = [stage_module(full, self.bounds[i]).to(rt.device) for i in self.stage_ids]
        # One module holding this rank's blocks under their original names: checkpoint + optim.
        self.model: nn.Module = nn.Sequential(
            OrderedDict(
                (name, child) for mod in self.stage_mods for name, child in mod.named_children()
            )
        )
        del full
        self.n_micro = rt.pipeline.microbatches * spec.grad_accumulation_steps
        self.stages = [
            PipelineStage(mod, i, dims.num_stages, rt.device, group=self.pp_group)
            for i, mod in zip(self.stage_ids, self.stage_mods, strict=True)
        ]
        self.loss = loss_fn(ds.info.task)
        self.schedule = build_schedule(rt.pipeline.schedule, self.stages, self.n_micro, self.loss)
        self.is_first = 0 in self.stage_ids
        self.is_last = dims.num_stages - 1 in self.stage_ids
        self.optimizer = build_optimizer(self.model.parameters(), spec.optimizer, rt.device)
        self.clip = spec.optimizer.grad_clip_norm
        self.local_batch = spec.batch_size // dims.dp
        if self.local_batch % self.n_micro:
            raise ConfigError(
                f"batchSize / data-parallel replicas = {self.local_batch} is not divisible by "
                f"pipeline.microbatches × gradAccumulationSteps = {self.n_micro}"
            )
        if rt.autocast_dtype == torch.float16:
            raise ConfigError(
                "precision fp16 (GradScaler) is not supported with pipeline; use bf16"
            )

    def train_tensors(self, ds: Dataset) -> tuple[torch.Tensor, ...]:
        return ds.train_x, ds.train_y

    def _run(
        self, x: torch.Tensor, y: torch.Tensor | None, losses: list[Any] | None, train: bool
    ) -> Any:
        args = (x,) if self.is_first else ()
        target = y if self.is_last else None
        with self.rt.autocast():
            if train:
                return self.schedule.step(*args, target=target, losses=losses)
            return self.schedule.eval(*args, target=target, losses=losses)

    def train_step(self, micro: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, float]:
        for mod in self.stage_mods:
            mod.train()
        x = torch.cat([b[0] for b in micro])
        y = torch.cat([b[1] for b in micro])
        losses: list[torch.Tensor] = []
        self._run(x, y, losses, train=True)
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.dp_group is not None and params:
            grads = [p.grad for p in params if p.grad is not None]
            flat = _flatten_dense_tensors(grads)  # type: ignore[no-untyped-call,unused-ignore]
            dist.all_reduce(flat, group=self.dp_group)
            flat /= self.dims.dp
            synced_all = _unflatten_dense_tensors(flat, grads)  # type: ignore[no-untyped-call,unused-ignore]
            for g, synced in zip(grads, synced_all, strict=True):
                g.copy_(synced)
        if self.clip:
            clip_grad_norm_pp(params, self.clip, self.pp_group)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.is_last and losses:
            return torch.stack([v.detach().float() for v in losses]).mean(), 1.0
        return torch.zeros((), device=self.rt.device), 0.0

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Forward-only pipeline over this replica's shard; batches are padded to the training
        batch shape (the stages' communication buffers have that shape) and the pad ignored."""
        for mod in self.stage_mods:
            mod.eval()
        loss_sum = correct = count = 0.0
        shard = list(eval_batches((x, y), self.local_batch, self.dims.dp, self.dp_rank))
        # every replica runs the same number of pipeline steps (an idle one runs padding)
        n_steps = torch.tensor([len(shard)])
        dist.all_reduce(n_steps, op=dist.ReduceOp.MAX)
        for i in range(int(n_steps)):
            bx, by = shard[i] if i < len(shard) else (x[:1], y[:1])
            real = len(bx) if i < len(shard) else 0
            pad = self.local_batch - len(bx)
            if pad:
                bx = torch.cat([bx, bx[:1].expand(pad, *bx.shape[1:])])
                by = torch.cat([by, by[:1].expand(pad, *by.shape[1:])])
            out = self._run(bx.to(self.rt.device), by.to(self.rt.device), None, train=False)
            if self.is_last and real:
                out = out[:real]
                ty = by[:real].to(self.rt.device)
                c, k = count_correct(out, ty)
                loss_sum += float(self.loss(out, ty)) * k
                correct += c
                count += k
        return torch.tensor([loss_sum, correct, count], dtype=torch.float64)

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Gather the stages of replica 0 on rank 0 (object collective over the world)."""
        mine = (
            {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
            if self.dp_rank == 0
            else {}
        )
        parts: list[Any] = [None] * dist.get_world_size() if self.rt.rank == 0 else []
        dist.gather_object(mine, parts if self.rt.rank == 0 else None, dst=0)
        if self.rt.rank != 0:
            return None
        merged: dict[str, torch.Tensor] = {}
        for part in parts:
            merged.update(part or {})
        return merged

    def lineage(self) -> dict[str, Any]:
        return {"pipeline": {"stages": self.bounds, "schedule": self.rt.pipeline.schedule}}


def clip_grad_norm_pp(
    params: Sequence[torch.Tensor], max_norm: float, pp_group: dist.ProcessGroup | None
) -> float:
    """Clip by the global norm over all pipeline stages (each rank holds only some params)."""
    grads, _ = tree_flatten([p.grad for p in params])
    sq = torch.zeros((), device=params[0].device if params else "cpu", dtype=torch.float32)
    for g in grads:
        sq += g.detach().float().pow(2).sum()
    dist.all_reduce(sq, group=pp_group)
    norm = float(sq.sqrt())
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        for g in grads:
            g.mul_(coef)
    return norm


def run(rt: Runtime) -> dict[str, Any]:
    ds = setup_data(rt)
    return run_training(rt, ds, PipelineStrategy(rt, ds))
