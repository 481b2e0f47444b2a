"""Distillation step: the current model is the teacher, the student comes from the step.

loss = alpha·T²·KL(teacher_T ‖ student_T) + (1 − alpha)·CE(labels) (``kd.kd_loss``). With
``transferSet: unlabeled`` the samples whose labels were withheld (``data.labeledSamples``) join
the training set and contribute the soft term only. With several workers the fine-tune is
data-parallel (distributed.py).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data.distributed import DistributedSampler

from torchyard_trainer.compress import hf_student
from torchyard_trainer.compress.context import Context, predict, train_epochs
from torchyard_trainer.compress.stored import export_state
from torchyard_trainer.env import ConfigError
from torchyard_trainer.kd import UNLABELED, kd_loss
from torchyard_trainer.models import build_model

if TYPE_CHECKING:
    from torchyard.api.compression import DistillStep

log = logging.getLogger("torchyard_trainer.compress")


def apply(teacher: nn.Module, step: DistillStep, ctx: Context) -> tuple[nn.Module, dict[str, Any]]:
    """Train and return the student; ``ctx.model_spec`` becomes the student's spec.

    In a multi-worker job (``ctx.group``) rank 0 first sends the step and the teacher to the
    other ranks, and every rank trains on its shard of the transfer set (see distributed.py).
    """
    if step.student.huggingface is not None or "huggingface" in ctx.model_spec:
        # the student is the teacher with fewer transformer layers (hf_student.py)
        return hf_student.distill(teacher, step, ctx)
    group = ctx.group
    if group is not None and group.rank == 0:
        tensors, section = export_state(teacher)
        group.send(("distill", step.model_dump(by_alias=True, exclude_none=True, mode="json"),
                    dict(ctx.model_spec), tensors, section))
    torch.manual_seed(ctx.seed)  # the same initial student on every rank
    student = build_model(step.student, ctx.ds.info)
    teacher.eval()
    ds = ctx.ds
    x, y = ds.train_x, ds.train_y
    if step.transfer_set == "unlabeled":
        if ds.unlabeled_x is None or len(ds.unlabeled_x) == 0:
            raise ConfigError("distill transferSet unlabeled needs data.labeledSamples smaller "
                              "than the training set (the rest is the unlabeled transfer set)")
        x = torch.cat([x, ds.unlabeled_x])
        y = torch.cat([y, torch.full((len(ds.unlabeled_x),), UNLABELED, dtype=y.dtype)])
    total, n_labeled = len(x), int((y >= 0).sum())
    extra: dict[str, Any] = {}
    if group is not None:
        # this rank's shard: DistributedSampler's (seeded shuffle, every world-th index, the
        # ragged tail dropped so every rank runs the same number of steps)
        sampler: DistributedSampler[int] = DistributedSampler(
            range(total), num_replicas=group.world_size, rank=group.rank,  # type: ignore[arg-type]
            shuffle=True, seed=ctx.seed, drop_last=True,
        )
        shard = torch.tensor(list(sampler), dtype=torch.long)
        x, y = x[shard], y[shard]
        device = group.device
        teacher, student = teacher.to(device), student.to(device)
        x, y = x.to(device), y.to(device)
        log.info("rank %d: distilling on %d of %d transfer samples", group.rank, len(x), total)
    with torch.no_grad():
        soft = predict(teacher, x)  # the teacher is frozen: its logits are computed once
    index = torch.arange(len(x), device=x.device)
    lookup = {"t": soft}
    temperature, alpha = float(step.temperature), float(step.alpha)

    def loss(model: nn.Module, bx: torch.Tensor, by: torch.Tensor) -> torch.Tensor:
        idx, target = by[:, 0], by[:, 1]
        return kd_loss(model(bx), lookup["t"][idx], target, temperature, alpha)

    packed = torch.stack([index, y.long()], dim=1)
    if group is None:
        train_epochs(student, ctx, step.epochs, loss_override=loss, tensors=(x, packed))
        ctx.backends["distill"] = "torchyard (single process)"
    else:
        # the global batch is the spec's batchSize, split evenly over the ranks
        local_batch = max(1, ctx.batch_size // group.world_size)
        train_epochs(student, ctx, step.epochs, loss_override=loss, tensors=(x, packed),
                     device=group.device, wrap=group.wrap, batch_size=local_batch)
        per_rank = group.gather(len(x))
        student = student.cpu()
        ctx.backends["distill"] = (f"torchyard DDP ({group.world_size} ranks, "
                                   f"{group.backend}, {group.device.type})")
        extra = {"worldSize": group.world_size, "samplesPerRank": per_rank}
    ctx.model_spec = step.student.model_dump(by_alias=True, exclude_none=True, mode="json")
    return student.eval(), {
        "student": ctx.model_spec, "temperature": temperature, "alpha": alpha,
        "transferSet": step.transfer_set, "epochs": step.epochs, "samples": total,
        "labeled": n_labeled, **extra,
    }
