"""What every compression step shares: the context (data, optimizer settings, seed), the
fine-tuning on the shared loop (``torchyard_trainer.loop``) and evaluation by the gate's
metric. How a compressed model is stored and rebuilt is ``compress.stored``."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchyard_trainer.compress import layers
from torchyard_trainer.data import Dataset
from torchyard_trainer.env import ConfigError
from torchyard_trainer.kd import kd_loss
from torchyard_trainer.loop import Batch, run_loop
from torchyard_trainer.models import loss_fn
from torchyard_trainer.optim import build_optimizer

Regularizer = Callable[[nn.Module], torch.Tensor]
LossOverride = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Context:
    """Everything a step needs besides the model."""

    ds: Dataset
    """The job's data (train / validation / unlabeled transfer set)."""
    optimizer: Any
    """OptimizerSpec of the fine-tuning phases."""
    batch_size: int
    """Batch size of fine-tuning and evaluation."""
    seed: int
    """Random seed (each fine-tune reseeds from it)."""
    metric: str = "accuracy"
    """accuracy or f1 (macro), as the accuracy criterion says."""
    model_spec: dict[str, Any] = field(default_factory=dict)
    """Architecture (ModelSpec as JSON) of the current model: changes with distillation."""
    notes: list[str] = field(default_factory=list)
    """Warnings for the report."""
    backends: dict[str, str] = field(default_factory=dict)
    """Which implementation ran each method."""
    reference: torch.Tensor | nn.Module | None = None
    """Fidelity gates: the original model's outputs on the held-out inputs, computed once (a
    causal LM's: the original model itself, run per batch — see fidelity.reference_outputs)."""
    output_kind: str = "classification"
    """What the outputs are (fidelity.scores): classification logits, lm token logits or an
    embedding."""
    percentile: int = 5
    """cosine: the worst-case percentile reported beside the mean."""
    tokenizer: Any = None
    """A Hugging Face model's tokenizer (saved with its model versions)."""
    group: Any = None
    """``distributed.CompressionWorld`` of a multi-worker job (the distill steps run
    data-parallel)."""
    original: nn.Module | None = None
    """The source model before any step (set by the search): a Hugging Face distillation
    student learns from it, not from an already pruned teacher."""


class Shuffled:
    """Fine-tuning batches: a fresh permutation of ``tensors`` every epoch, from one generator
    seeded once per fine-tune; the ragged tail of each epoch is dropped."""

    def __init__(self, tensors: tuple[torch.Tensor, ...], batch_size: int, seed: int) -> None:
        self.tensors = tensors
        self.n = len(tensors[0])
        self.batch_size = min(batch_size, self.n)
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.n // self.batch_size)

    def epoch(self, epoch: int, skip_steps: int) -> Iterator[list[Batch]]:
        perm = torch.randperm(self.n, generator=self.generator)
        bs = self.batch_size
        for i in range(skip_steps, self.steps_per_epoch):
            idx = perm[i * bs : (i + 1) * bs]
            yield [tuple(t[idx] for t in self.tensors)]


class FineTuneStep:
    """One plain optimizer step on one batch: the task's loss (or ``loss_override``) plus the
    ``regularizer``; ``masks`` (parameter name → 0/1) are re-applied so pruned weights stay
    zero."""

    def __init__(
        self,
        model: nn.Module,
        forward: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        *,
        loss_override: LossOverride | None = None,
        regularizer: Regularizer | None = None,
        masks: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.model, self.forward, self.optimizer, self.loss = model, forward, optimizer, loss
        self.loss_override, self.regularizer, self.masks = loss_override, regularizer, masks
        self.params = dict(model.named_parameters())

    def __call__(self, micro: list[Batch]) -> tuple[torch.Tensor, float]:
        bx, by = micro[0]
        if self.loss_override is not None:
            value = self.loss_override(self.forward, bx, by)
        else:
            value = self.loss(self.forward(bx), by)
        if self.regularizer is not None:
            value = value + self.regularizer(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        value.backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        if self.masks:
            with torch.no_grad():
                for name, m in self.masks.items():
                    self.params[name].mul_(m)
        return value.detach(), 1.0


def unlabelled_loss(ctx: Context) -> LossOverride | None:
    """The fine-tune loss (prune's recovery, qat) of a Hugging Face model without labels: its
    targets are zeros (textdata.py), so cross-entropy would train it towards class 0. It
    learns to reproduce the original model instead — 1 − cosine to the original's embedding
    (feature-extraction), the KD soft term on its logits (sequence-classification). Causal
    LMs train on their next tokens as they are; None for everything with real labels."""
    if "huggingface" not in ctx.model_spec or ctx.output_kind == "lm" \
            or ctx.ds.extra.get("labelled"):
        return None
    original = ctx.original
    if original is None:
        raise ConfigError("fine-tuning a Hugging Face model without labels needs the original "
                          "model (Context.original, set by the search)")
    embedding = ctx.output_kind == "embedding"

    def loss(model: nn.Module, bx: torch.Tensor, by: torch.Tensor) -> torch.Tensor:
        out = model(bx)
        with torch.no_grad():
            ref = original(bx)
        if embedding:
            return (1.0 - F.cosine_similarity(out, ref, dim=-1)).mean()
        return kd_loss(out, ref, None, 1.0, 1.0)

    return loss


def cosine_schedule(
    optimizer: torch.optim.Optimizer, total: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(1.0, s / max(1, total))))
    )


def train_epochs(
    model: nn.Module,
    ctx: Context,
    epochs: int,
    *,
    regularizer: Regularizer | None = None,
    masks: dict[str, torch.Tensor] | None = None,
    loss_override: LossOverride | None = None,
    tensors: tuple[torch.Tensor, ...] | None = None,
    lr_scale: float = 1.0,
    device: torch.device | None = None,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
    batch_size: int | None = None,
) -> None:
    """Fine-tune on the shared loop (cosine-decayed lr; no checkpoints, metrics or evaluation),
    single-process unless ``wrap`` makes the forward model data-parallel (DDP: ``tensors`` are
    then this rank's shard, ``batch_size`` its share of the batch)."""
    if epochs <= 0:
        return
    x, y = tensors if tensors is not None else (ctx.ds.train_x, ctx.ds.train_y)
    spec = ctx.optimizer.model_copy(update={"lr": ctx.optimizer.lr * lr_scale})
    opt = build_optimizer(model.parameters(), spec, device or torch.device("cpu"))
    forward = wrap(model) if wrap is not None else model
    step = FineTuneStep(model, forward, opt, loss_fn(ctx.ds.info.task),
                        loss_override=loss_override or unlabelled_loss(ctx),
                        regularizer=regularizer, masks=masks)
    batches = Shuffled((x, y), batch_size or ctx.batch_size, ctx.seed)
    total = epochs * batches.steps_per_epoch
    model.train()
    run_loop(batches, step, cosine_schedule(opt, total), total)
    model.eval()


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    model.eval()
    outs = [model(x[i : i + batch]) for i in range(0, len(x), batch)]
    return torch.cat(outs) if outs else torch.empty(0)


def metric_value(logits: torch.Tensor, y: torch.Tensor, metric: str) -> float:
    """accuracy, or macro F1 over the classes present in ``y``."""
    pred = logits.argmax(dim=-1).reshape(-1)
    y = y.reshape(-1)
    if len(y) == 0:
        raise ConfigError("the evaluation set is empty: set data.validationFraction > 0")
    if metric == "accuracy":
        return float((pred == y).float().mean())
    f1s = []
    for c in torch.unique(y):
        tp = int(((pred == c) & (y == c)).sum())
        fp = int(((pred == c) & (y != c)).sum())
        fn = int(((pred != c) & (y == c)).sum())
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(sum(f1s) / len(f1s))


def evaluate(model: nn.Module, ctx: Context) -> float:
    return metric_value(predict(model, ctx.ds.val_x), ctx.ds.val_y, ctx.metric)


def clone(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, layers.QuantLinear) for m in model.modules())
