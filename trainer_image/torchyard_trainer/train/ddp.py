"""Data parallelism: DistributedDataParallel over all ranks, the global batch split evenly,
gradient accumulation with ``no_sync``, autocast on GPU, torch.compile opt-in."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn
from torch.amp.grad_scaler import GradScaler
from torch.nn.parallel import DistributedDataParallel as DDP

from torchyard_trainer.artifacts import load_weights
from torchyard_trainer.data import Dataset, eval_batches
from torchyard_trainer.models import build_model, count_correct, loss_fn
from torchyard_trainer.optim import build_optimizer
from torchyard_trainer.storage import fetch
from torchyard_trainer.train.base import Runtime
from torchyard_trainer.train.run import run_training, setup_data


class DDPStrategy:
    """Plain supervised training on every rank, gradients averaged by DDP."""

    def __init__(self, rt: Runtime, ds: Dataset) -> None:
        self.rt = rt
        spec = rt.spec
        torch.manual_seed(spec.seed)  # identical initial weights on every rank
        raw = build_model(rt.model_spec, ds.info)
        if rt.model_spec.checkpoint:
            load_weights(
                fetch(rt.model_spec.checkpoint, rt.env.pvc_root, rt.env.output_dir / "cache"), raw
            )
        self.raw = raw.to(rt.device)
        self.model: nn.Module = self.raw  # what gets checkpointed (no DDP prefix)
        self.train_model: nn.Module = self.raw
        if rt.dims.dp > 1:
            self.train_model = DDP(
                self.raw,
                device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
                gradient_as_bucket_view=True,
            )
        if spec.compile:
            self.train_model = torch.compile(self.train_model)  # type: ignore[assignment]
        self.optimizer = build_optimizer(self.raw.parameters(), spec.optimizer, rt.device)
        self.loss = loss_fn(ds.info.task)
        self.task = ds.info.task
        fp16 = rt.autocast_dtype == torch.float16
        self.scaler = GradScaler(rt.device.type, enabled=fp16)
        self.clip = spec.optimizer.grad_clip_norm

    def train_tensors(self, ds: Dataset) -> tuple[torch.Tensor, ...]:
        return ds.train_x, ds.train_y

    def compute_loss(self, out: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        loss: torch.Tensor = self.loss(out, batch[1])
        return loss

    def train_step(self, micro: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, float]:
        self.train_model.train()
        n = len(micro)
        total = torch.zeros((), device=self.rt.device)
        for i, batch in enumerate(micro):
            sync = i == n - 1 or not isinstance(self.train_model, DDP)
            ctx = contextlib.nullcontext() if sync else self.train_model.no_sync()  # type: ignore[operator]
            with ctx:
                with self.rt.autocast():
                    out = self.train_model(batch[0])
                    loss = self.compute_loss(out, batch) / n
                self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call,unused-ignore]
            total += loss.detach()
        if self.clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.raw.parameters(), self.clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return total, 1.0

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.raw.eval()
        dims = self.rt.dims
        dp_rank, _ = dims.coords(self.rt.rank)
        loss_sum = correct = count = 0.0
        bs = max(1, self.rt.spec.batch_size // dims.dp)
        for bx, by in eval_batches((x, y), bs, dims.dp, dp_rank):
            bx, by = bx.to(self.rt.device), by.to(self.rt.device)
            with self.rt.autocast():
                out = self.raw(bx)
            c, k = count_correct(out, by)
            loss_sum += float(self.loss(out, by)) * k
            correct += c
            count += k
        return torch.tensor([loss_sum, correct, count], dtype=torch.float64)

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        if self.rt.rank != 0:
            return None
        return {k: v.detach().cpu() for k, v in self.raw.state_dict().items()}

    def lineage(self) -> dict[str, Any]:
        return {}


def run(rt: Runtime) -> dict[str, Any]:
    ds = setup_data(rt)
    strategy = DDPStrategy(rt, ds)
    return run_training(rt, ds, strategy)


__all__ = ["DDPStrategy", "run"]
