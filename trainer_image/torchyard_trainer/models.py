"""Builtin models and user factories.

Builtins are ``nn.Sequential`` of coarse blocks so that the pipeline strategy can cut them into
stages anywhere between blocks while keeping the parameter names (``"3.weight"``) of the whole
model — checkpoints and model versions are therefore the same whatever the layout.
"""

from __future__ import annotations

import importlib
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from torchyard_trainer.data import DataInfo, snake_args
from torchyard_trainer.env import ConfigError

if TYPE_CHECKING:
    from torchyard.api.common import ModelSpec

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""loss(logits, target) -> mean loss."""


def _mlp(info: DataInfo, hidden: list[int] | None = None, dropout: float = 0.0) -> nn.Module:
    hidden = [128, 64] if hidden is None else list(hidden)
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(info.input_shape)
    for h in hidden:
        block: list[nn.Module] = [nn.Linear(width, h), nn.ReLU()]
        if dropout:
            block.append(nn.Dropout(dropout))
        layers.append(nn.Sequential(*block))
        width = h
    layers.append(nn.Linear(width, info.num_classes))
    return nn.Sequential(*layers)


def _image_shape(info: DataInfo) -> tuple[int, int, int]:
    if info.image_shape is None:
        raise ConfigError(f"{info.name}: cnn/resnet need image data (C×H×W)")
    return info.image_shape


def _cnn(info: DataInfo, channels: list[int] | None = None, hidden: int = 128) -> nn.Module:
    c, h, w = _image_shape(info)
    channels = [32, 64] if channels is None else list(channels)
    layers: list[nn.Module] = [nn.Unflatten(1, (c, h, w))] if len(info.input_shape) == 1 else []
    for ch in channels:
        block: list[nn.Module] = [nn.Conv2d(c, ch, 3, padding=1), nn.ReLU()]
        if min(h, w) >= 4:
            block.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
        layers.append(nn.Sequential(*block))
        c = ch
    layers.append(nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU()))
    layers.append(nn.Linear(hidden, info.num_classes))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3×3 convs + identity / 1×1 projection shortcut)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.short(x))


def _resnet(
    info: DataInfo, widths: list[int] | None = None, blocks_per_stage: int = 1
) -> nn.Module:
    c, _, _ = _image_shape(info)
    widths = [16, 32, 64] if widths is None else list(widths)
    layers: list[nn.Module] = (
        [nn.Unflatten(1, _image_shape(info))] if len(info.input_shape) == 1 else []
    )
    layers.append(
        nn.Sequential(
            nn.Conv2d(c, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
    )
    cin = widths[0]
    for i, w in enumerate(widths):
        for b in range(blocks_per_stage):
            layers.append(BasicBlock(cin, w, 2 if (i > 0 and b == 0) else 1))
            cin = w
    layers.append(
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, info.num_classes))
    )
    return nn.Sequential(*layers)


class TokenEmbedding(nn.Module):
    """Token + learned position embedding."""

    def __init__(self, vocab: int, d_model: int, seq_len: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(seq_len, d_model)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        out: torch.Tensor = self.tok(idx) + self.pos(pos)
        return out


class TransformerBlock(nn.Module):
    """Pre-norm GPT block: causal self-attention (SDPA / flash) and a GELU MLP."""

    def __init__(self, d_model: int, heads: int, ff_mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % heads:
            raise ConfigError(f"transformer dModel={d_model} must be divisible by heads={heads}")
        self.heads = heads
        self.dropout = dropout
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)
        self.ln2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(
            nn.Linear(d_model, ff_mult * d_model, bias=False),
            nn.GELU(),
            nn.Linear(ff_mult * d_model, d_model, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (
            self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        )
        att = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        out: torch.Tensor = x + self.ff(self.ln2(x))
        return out


def _transformer(
    info: DataInfo,
    d_model: int = 128,
    layers: int = 2,
    heads: int = 4,
    ff_mult: int = 4,
    dropout: float = 0.0,
    seq_len: int | None = None,
    vocab_size: int | None = None,
) -> nn.Module:
    if info.task != "lm" or info.seq_len is None:
        raise ConfigError("the transformer model needs token data (e.g. builtin synthetic_tokens)")
    for arg, have, name in (
        (seq_len, info.seq_len, "seqLen"),
        (vocab_size, info.num_classes, "vocabSize"),
    ):
        if arg is not None and arg != have:
            raise ConfigError(f"model.args.{name}={arg} differs from the data's {have}")
    mods: list[nn.Module] = [TokenEmbedding(info.num_classes, d_model, info.seq_len)]
    mods += [TransformerBlock(d_model, heads, ff_mult, dropout) for _ in range(layers)]
    mods.append(
        nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, info.num_classes, bias=False))
    )
    model = nn.Sequential(*mods)
    for name, p in model.named_parameters():
        if p.dim() >= 2 and "pos" not in name:
            nn.init.normal_(p, std=0.02)
    return model


BUILTINS: dict[str, Callable[..., nn.Module]] = {
    "mlp": _mlp,
    "cnn": _cnn,
    "resnet": _resnet,
    "transformer": _transformer,
}


def build_model(spec: ModelSpec, info: DataInfo) -> nn.Module:
    """Build the network of a ``ModelSpec``: builtin(info, **args) or factory(**args)."""
    args = snake_args(dict(spec.args))
    if spec.builtin:
        try:
            return BUILTINS[spec.builtin](info, **args)
        except TypeError as exc:
            raise ConfigError(f"model {spec.builtin}: bad args {spec.args}: {exc}") from exc
    target = spec.import_
    if not target or ":" not in target:
        raise ConfigError("model needs builtin or import: 'pkg.module:factory'")
    mod_name, fn_name = target.split(":", 1)
    try:
        factory = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"model import {target!r}: {exc}") from exc
    model = factory(**dict(spec.args))
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model import {target!r} returned {type(model).__name__}, not nn.Module")
    return model


def loss_fn(task: str) -> LossFn:
    """Mean cross-entropy: over samples (classification) or over tokens (lm)."""
    if task == "lm":

        def lm_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1))

        return lm_loss

    def cls_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target)

    return cls_loss


def count_correct(logits: torch.Tensor, target: torch.Tensor) -> tuple[int, int]:
    """(correct predictions, predictions) — per token for lm outputs."""
    pred = logits.argmax(dim=-1)
    return int((pred == target).sum()), int(target.numel())


def flops_per_token(model: nn.Module, info: DataInfo) -> float | None:
    """Training FLOPs per token of the builtin transformer: 6·N + 12·layers·d·seq with N the
    non-embedding parameters (LM head included) — the PaLM/nanoGPT estimate, attention
    included; None for other models."""
    if info.task != "lm" or info.seq_len is None:
        return None
    blocks = [m for m in model.modules() if isinstance(m, TransformerBlock)]
    if not blocks:
        return None
    d = blocks[0].ln1.normalized_shape[0]
    # embedding lookups are not matmuls: count every weight except the token/position tables
    n_params = sum(
        p.numel()
        for n, p in model.named_parameters()
        if ".tok." not in f".{n}" and ".pos." not in f".{n}"
    )
    return 6.0 * n_params + 12.0 * len(blocks) * d * info.seq_len


# ---------------------------------------------------------------------------------------------
# pipeline splitting


def _children(model: nn.Module) -> list[tuple[str, nn.Module]]:
    if not isinstance(model, nn.Sequential):
        raise ConfigError(
            "pipeline needs a model that is an nn.Sequential of blocks (builtins are); an "
            "imported model must return one and name its stage boundaries in splitPoints"
        )
    return list(model.named_children())


def split_boundaries(model: nn.Module, num_stages: int, split_points: list[str]) -> list[list[str]]:
    """Names of the top-level children of each stage.

    With ``split_points`` (children names where a new stage begins) they are used as given;
    otherwise contiguous blocks are balanced by parameter count (a cheap cost proxy).
    """
    children = _children(model)
    names = [n for n, _ in children]
    if len(children) < num_stages:
        raise ConfigError(f"model has {len(children)} blocks, cannot make {num_stages} stages")
    if split_points:
        unknown = [p for p in split_points if p not in names]
        if unknown:
            raise ConfigError(f"splitPoints {unknown} are not top-level modules; have {names}")
        if len(split_points) != num_stages - 1:
            raise ConfigError(
                f"{num_stages} stages need {num_stages - 1} splitPoints, got {len(split_points)}"
            )
        cuts = sorted(names.index(p) for p in split_points)
        bounds = [0, *cuts, len(names)]
        return [names[bounds[i] : bounds[i + 1]] for i in range(num_stages)]
    costs = [max(1, sum(p.numel() for p in m.parameters())) for _, m in children]
    # Greedy contiguous partition: close a stage once it reaches its share of the remainder,
    # always leaving at least one block for each remaining stage.
    stages: list[list[str]] = []
    i = 0
    for s in range(num_stages):
        left = num_stages - s
        if left == 1:
            stages.append(names[i:])
            break
        target = sum(costs[i:]) / left
        acc, j = 0, i
        while j < len(names) - (left - 1):
            if acc and acc + costs[j] / 2 > target:
                break
            acc += costs[j]
            j += 1
        stages.append(names[i:j])
        i = j
    return stages


def stage_module(model: nn.Module, names: list[str]) -> nn.Sequential:
    """The stage made of ``names``' children, keeping their names (and so the state-dict keys)."""
    mods = dict(model.named_children())
    return nn.Sequential(OrderedDict((n, mods[n]) for n in names))
