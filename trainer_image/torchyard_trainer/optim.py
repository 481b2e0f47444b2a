"""Optimizers and learning-rate schedules (warm-up + constant/step/exponential/cosine/SGDR).

The schedule is a pure function of the optimizer step, wrapped in a LambdaLR: its state is just
the step counter, so a resumed run continues on exactly the same curve.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch
from torch.optim.lr_scheduler import LambdaLR

if TYPE_CHECKING:
    from torchyard.api.common import OptimizerSpec
    from torchyard.api.training import LRScheduleSpec


def build_optimizer(
    params: Iterable[torch.nn.Parameter], spec: OptimizerSpec, device: torch.device
) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov, L2 weight decay) or AdamW (fused on CUDA)."""
    params = [p for p in params if p.requires_grad]
    if spec.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=spec.lr,
            momentum=spec.momentum,
            nesterov=spec.nesterov and spec.momentum > 0,
            weight_decay=spec.weight_decay,
        )
    return torch.optim.AdamW(
        params, lr=spec.lr, weight_decay=spec.weight_decay, fused=device.type == "cuda"
    )


def lr_factor(spec: LRScheduleSpec, peak_lr: float, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based)."""
    warm = int(spec.warmup_steps)
    floor = float(spec.min_lr) / peak_lr if peak_lr > 0 else 0.0
    kind = spec.kind
    decay_steps = max(1, total_steps - warm)

    def cosine(pos: float, length: float) -> float:
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, pos / length)))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        s = step - warm
        if kind == "step":
            assert spec.step_size is not None  # the spec's rules require it for kind step
            return float(spec.gamma) ** (s // int(spec.step_size))
        if kind == "exponential":
            return float(spec.gamma) ** s
        if kind == "cosine":
            return cosine(s, decay_steps)
        if kind == "warmRestarts":
            assert spec.restart_period is not None  # required for kind warmRestarts
            period = float(spec.restart_period)
            mult = int(spec.period_multiplier)
            pos = float(s)
            while pos >= period:
                pos -= period
                period *= mult
            return cosine(pos, period)
        return 1.0

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, spec: LRScheduleSpec, peak_lr: float, total_steps: int
) -> LambdaLR:
    return LambdaLR(optimizer, lr_factor(spec, peak_lr, total_steps))
