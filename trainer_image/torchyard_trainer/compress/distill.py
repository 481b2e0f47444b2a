"""Distillation step: the current model is the teacher, the student comes from the step.

loss = alpha·T²·KL(teacher_T ‖ student_T) + (1 − alpha)·CE(labels). With ``transferSet:
unlabeled`` the samples whose labels were withheld (``data.labeledSamples``) join the training
set and contribute the soft term only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from torchyard_trainer.compress.common import Context, kd_loss, predict, train_epochs
from torchyard_trainer.env import ConfigError
from torchyard_trainer.models import build_model

UNLABELED = -1


def apply(teacher: nn.Module, step: Any, ctx: Context) -> tuple[nn.Module, dict[str, Any]]:
    """Train and return the student; ``ctx.model_spec`` becomes the student's spec."""
    torch.manual_seed(ctx.seed)
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
    with torch.no_grad():
        soft = predict(teacher, x)  # the teacher is frozen: its logits are computed once
    index = torch.arange(len(x))
    lookup = {"t": soft}
    temperature, alpha = float(step.temperature), float(step.alpha)

    def loss(model: nn.Module, bx: torch.Tensor, by: torch.Tensor) -> torch.Tensor:
        idx, target = by[:, 0], by[:, 1]
        return kd_loss(model(bx), lookup["t"][idx], target, temperature, alpha)

    packed = torch.stack([index, y.long()], dim=1)
    train_epochs(student, ctx, step.epochs, loss_override=loss, tensors=(x, packed))
    ctx.model_spec = step.student.model_dump(by_alias=True, exclude_none=True, mode="json")
    ctx.backends["distill"] = "torchyard (single process)"
    return student.eval(), {
        "student": ctx.model_spec, "temperature": temperature, "alpha": alpha,
        "transferSet": step.transfer_set, "epochs": step.epochs, "samples": len(x),
        "labeled": int((y >= 0).sum()),
    }
