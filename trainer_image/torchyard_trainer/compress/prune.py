"""Pruning: magnitude (layer/global, iterative with fine-tuning), l1Threshold (L1-regularised
fine-tune, then weights under a threshold zeroed) and structured (whole neurons/channels
removed by norm; the layers are rebuilt smaller, so the model really shrinks and speeds up).

Unstructured masks live as ``torch.nn.utils.prune`` re-parametrisations during fine-tuning
(``weight = weight_orig * weight_mask`` before every forward) and are made permanent with
``prune.remove`` at the end, so the result is a plain module with zeros in it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils import prune as tprune

from torchyard_trainer.compress import layers
from torchyard_trainer.compress.context import Context, train_epochs
from torchyard_trainer.compress.hf_student import ffn_pairs
from torchyard_trainer.env import ConfigError

if TYPE_CHECKING:
    from torchyard.api.compression import PruneStep

log = logging.getLogger("torchyard_trainer.compress")

PRUNABLE = (nn.Linear, nn.Conv2d)
Prunable = nn.Linear | nn.Conv2d


def schedule(target: float, rounds: int) -> list[float]:
    """Cumulative sparsity after each round: geometric, so each round removes the same
    fraction of what is left (1 − (1 − s)^(k/n)); the last round hits the target exactly."""
    return [1.0 - (1.0 - target) ** ((k + 1) / rounds) for k in range(rounds)]


def prunable_weights(model: nn.Module) -> list[tuple[str, Prunable]]:
    mods = [(n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE)]
    if not mods:
        raise ConfigError("pruning found no Linear/Conv2d layer in the model")
    return mods


def _reparametrised(m: Prunable) -> torch.Tensor:
    """``weight_orig * weight_mask`` of a layer under a ``torch.nn.utils.prune`` mask."""
    return cast(torch.Tensor, m.weight_orig) * cast(torch.Tensor, m.weight_mask)


def effective_weight(m: Prunable) -> torch.Tensor:
    """The weight a forward would use now (the prune hook refreshes ``weight`` only in forward)."""
    if tprune.is_pruned(m):
        return _reparametrised(m).detach()
    return m.weight.detach()


def _keep_top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Mask keeping the ``keep`` largest scores exactly (ties broken by position)."""
    flat = scores.reshape(-1)
    mask = torch.zeros_like(flat)
    if keep > 0:
        mask[torch.topk(flat, keep, sorted=False).indices] = 1.0
    return mask.reshape(scores.shape)


def magnitude_masks(mods: list[tuple[str, Prunable]], sparsity: float,
                    scope: str) -> dict[str, torch.Tensor]:
    """Masks zeroing the smallest |w|: per layer, or with one threshold over all layers."""
    weights = {n: effective_weight(m).abs() for n, m in mods}
    if scope == "layer":
        return {n: _keep_top(w, w.numel() - round(sparsity * w.numel()))
                for n, w in weights.items()}
    flat = torch.cat([w.reshape(-1) for w in weights.values()])
    mask = _keep_top(flat, flat.numel() - round(sparsity * flat.numel()))
    out, i = {}, 0
    for n, w in weights.items():
        out[n] = mask[i : i + w.numel()].reshape(w.shape)
        i += w.numel()
    return out


def threshold_masks(mods: list[tuple[str, Prunable]], threshold: float
                    ) -> dict[str, torch.Tensor]:
    return {n: (effective_weight(m).abs() >= threshold).float() for n, m in mods}


def _apply_masks(mods: list[tuple[str, Prunable]], masks: dict[str, torch.Tensor]) -> None:
    for n, m in mods:
        # custom_from_mask combines with an existing mask (AND): pruned weights stay pruned
        tprune.custom_from_mask(m, "weight", masks[n])  # type: ignore[no-untyped-call]


def _make_permanent(mods: list[tuple[str, Prunable]]) -> None:
    for _, m in mods:
        if tprune.is_pruned(m):
            tprune.remove(m, "weight")  # type: ignore[no-untyped-call]


def sparsity_of(mods: list[tuple[str, Prunable]]) -> float:
    total = sum(m.weight.numel() for _, m in mods)
    zeros = sum(int((m.weight == 0).sum()) for _, m in mods)
    return zeros / max(1, total)


def magnitude(model: nn.Module, step: PruneStep, sparsity: float, ctx: Context) -> dict[str, Any]:
    mods = prunable_weights(model)
    for s in schedule(sparsity, step.iterations):
        _apply_masks(mods, magnitude_masks(mods, s, step.scope))
        train_epochs(model, ctx, step.fine_tune_epochs)
    _make_permanent(mods)
    return {"sparsity": round(sparsity_of(mods), 6)}


def l1_threshold(model: nn.Module, step: PruneStep, sparsity: float, ctx: Context
                 ) -> dict[str, Any]:
    """L1-regularised fine-tune (pushes unimportant weights to zero), then zero every weight
    under the threshold (given, or the one that reaches ``sparsity``), then fine-tune the rest."""
    mods = prunable_weights(model)
    lam = float(step.l1_lambda)

    def l1(m: nn.Module) -> torch.Tensor:
        total = torch.zeros(())
        for _, mod in mods:
            w = _reparametrised(mod) if tprune.is_pruned(mod) else mod.weight
            total = total + w.abs().sum()
        return lam * total

    used: float | None = None
    for s in schedule(sparsity, step.iterations):
        train_epochs(model, ctx, max(1, step.fine_tune_epochs), regularizer=l1)
        if step.threshold is not None:
            masks = threshold_masks(mods, step.threshold)
            used = float(step.threshold)
        else:
            masks = magnitude_masks(mods, s, step.scope)
            kept = torch.cat([(effective_weight(m).abs() * masks[n]).reshape(-1) for n, m in mods])
            used = float(kept[kept > 0].min()) if bool((kept > 0).any()) else None
        _apply_masks(mods, masks)
        train_epochs(model, ctx, step.fine_tune_epochs)  # recovery, masks held by the hooks
    _make_permanent(mods)
    return {"sparsity": round(sparsity_of(mods), 6), "threshold": used, "l1Lambda": lam}


# ---------------------------------------------------------------------------------------------
# structured


PASS_THROUGH = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Dropout,
    nn.Identity, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
)
PASS_FUNCTIONS = {F.relu, torch.relu, F.gelu, F.silu, torch.tanh, torch.sigmoid, F.dropout}


@dataclass
class CoupledLayers:
    """A producer layer whose output units feed exactly one consumer layer (through
    element-wise ops, pooling, batch norm and at most one flatten)."""

    producer: str
    consumer: str
    norms: list[str] = field(default_factory=list)
    flatten: bool = False
    units: int = 0


def _trace_groups(module: nn.Module, prefix: str) -> list[CoupledLayers] | None:
    try:
        gm = fx.symbolic_trace(module)
    except Exception:
        return None
    mods = dict(gm.named_modules())
    groups: list[CoupledLayers] = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), PRUNABLE):
            continue
        prod = mods[node.target]
        if isinstance(prod, nn.Conv2d) and prod.groups != 1:
            continue
        g = CoupledLayers(prefix + node.target, "")
        cur = node
        while True:
            users = list(cur.users)
            if len(users) != 1:
                break
            u = users[0]
            m = mods.get(u.target) if u.op == "call_module" else None
            if m is not None and isinstance(m, PASS_THROUGH):
                cur = u
                continue
            if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                g.norms.append(prefix + u.target)
                cur = u
                continue
            is_flatten = isinstance(m, nn.Flatten) or (
                u.op == "call_function" and u.target is torch.flatten)
            if is_flatten and isinstance(prod, nn.Conv2d) and not g.flatten:
                g.flatten = True
                cur = u
                continue
            if u.op == "call_function" and u.target in PASS_FUNCTIONS and len(u.args) >= 1 \
                    and u.args[0] is cur:
                cur = u
                continue
            if isinstance(m, PRUNABLE) and u.args and u.args[0] is cur:
                ok = (isinstance(m, nn.Linear) and (isinstance(prod, nn.Linear) or g.flatten)) or (
                    isinstance(m, nn.Conv2d) and m.groups == 1 and isinstance(prod, nn.Conv2d)
                    and not g.flatten)
                if ok:
                    g.consumer = prefix + u.target
            break
        if g.consumer:
            g.units = prod.weight.shape[0]
            groups.append(g)
    return groups


def find_groups(model: nn.Module, prefix: str = "") -> list[CoupledLayers]:
    """Prunable producer → consumer pairs, found by tracing with torch.fx; modules that do not
    trace (shape-dependent code) are searched child by child."""
    found = _trace_groups(model, prefix)
    if found is not None:
        return found
    # transformers blocks do not trace (shape-dependent attention): their feed-forward pair is
    # known by name instead (hf_student.FFN_PAIRS)
    out = [CoupledLayers(prefix + p, prefix + c, units=layers.get_module(model, p).weight.shape[0])
           for p, c in ffn_pairs(model)]
    for name, child in model.named_children():
        out += find_groups(child, f"{prefix}{name}.")
    return out


def _unit_scores(model: nn.Module, g: CoupledLayers) -> torch.Tensor:
    w = layers.get_module(model, g.producer).weight.detach()
    return w.reshape(w.shape[0], -1).norm(dim=1)  # type: ignore[no-any-return]


def _shrink(model: nn.Module, g: CoupledLayers, keep: torch.Tensor) -> None:
    prod = layers.get_module(model, g.producer)
    cons = layers.get_module(model, g.consumer)
    with torch.no_grad():
        new_p = layers.resize_module(prod, [len(keep), *prod.weight.shape[1:]])
        new_p.weight.copy_(prod.weight[keep])
        if prod.bias is not None:
            new_p.bias.copy_(prod.bias[keep])
        layers.set_module(model, g.producer, new_p)
        for nfqn in g.norms:
            bn = layers.get_module(model, nfqn)
            new_bn = layers.resize_module(bn, [len(keep)])
            if bn.affine:
                new_bn.weight.copy_(bn.weight[keep])
                new_bn.bias.copy_(bn.bias[keep])
            if bn.track_running_stats:
                new_bn.running_mean.copy_(bn.running_mean[keep])
                new_bn.running_var.copy_(bn.running_var[keep])
                new_bn.num_batches_tracked.copy_(bn.num_batches_tracked)
            layers.set_module(model, nfqn, new_bn)
        if g.flatten:
            spatial = cons.weight.shape[1] // g.units
            idx = (keep.reshape(-1, 1) * spatial + torch.arange(spatial)).reshape(-1)
        else:
            idx = keep
        new_c = layers.resize_module(cons, [cons.weight.shape[0], len(idx), *cons.weight.shape[2:]])
        new_c.weight.copy_(cons.weight[:, idx])
        if cons.bias is not None:
            new_c.bias.copy_(cons.bias)
        layers.set_module(model, g.consumer, new_c)
    g.units = len(keep)


def _zero_units(model: nn.Module, g: CoupledLayers, keep: torch.Tensor) -> dict[str, torch.Tensor]:
    """physicalShrink: false — mask whole output units instead of removing them."""
    prod = layers.get_module(model, g.producer)
    mask = torch.zeros(prod.weight.shape[0])
    mask[keep] = 1.0
    shape = (-1,) + (1,) * (prod.weight.dim() - 1)
    with torch.no_grad():
        prod.weight.mul_(mask.reshape(shape))
        if prod.bias is not None:
            prod.bias.mul_(mask)
    out = {f"{g.producer}.weight": mask.reshape(shape).expand_as(prod.weight).clone()}
    if prod.bias is not None:
        out[f"{g.producer}.bias"] = mask.clone()
    return out


def structured(model: nn.Module, step: PruneStep, sparsity: float, ctx: Context) -> dict[str, Any]:
    groups = find_groups(model)
    if not groups:
        raise ConfigError(
            "structured pruning found no prunable neuron/channel group (a Linear/Conv2d whose "
            "outputs feed exactly one Linear/Conv2d through element-wise ops); use magnitude"
        )
    original = {g.producer: g.units for g in groups}
    masks: dict[str, torch.Tensor] = {}
    alive = {g.producer: torch.arange(g.units) for g in groups}
    for s in schedule(sparsity, step.iterations):
        target = {g.producer: max(1, round((1.0 - s) * original[g.producer])) for g in groups}
        if step.scope == "global":
            # one ranking over all groups, each score relative to its layer's mean norm
            scored = []
            for g in groups:
                sc = _unit_scores(model, g)[alive[g.producer]]
                sc = sc / sc.mean().clamp_min(1e-12)
                scored += [(float(v), g.producer, i) for i, v in enumerate(sc)]
            total_keep = sum(target.values())
            scored.sort(reverse=True)
            picked: dict[str, list[int]] = {g.producer: [] for g in groups}
            for _, prod, i in scored[:total_keep]:
                picked[prod].append(i)
            for g in groups:  # never empty a layer
                if not picked[g.producer]:
                    best = int(torch.argmax(_unit_scores(model, g)[alive[g.producer]]))
                    picked[g.producer].append(best)
            local_keep = {p: torch.tensor(sorted(v)) for p, v in picked.items()}
        else:
            local_keep = {}
            for g in groups:
                sc = _unit_scores(model, g)[alive[g.producer]]
                k = min(len(sc), target[g.producer])
                local_keep[g.producer] = torch.sort(torch.topk(sc, k).indices).values
        for g in groups:
            keep = local_keep[g.producer]
            if step.physical_shrink:
                _shrink(model, g, keep)
            else:
                alive[g.producer] = alive[g.producer][keep]
                masks.update(_zero_units(model, g, alive[g.producer]))
                continue
        if step.physical_shrink:
            alive = {g.producer: torch.arange(g.units) for g in groups}
        train_epochs(model, ctx, step.fine_tune_epochs, masks=masks or None)
    units = {g.producer: [original[g.producer], len(alive[g.producer]) if not step.physical_shrink
                          else g.units] for g in groups}
    return {"unitsRemoved": round(1.0 - sum(v[1] for v in units.values())
                                  / max(1, sum(v[0] for v in units.values())), 6),
            "layers": {k: f"{v[0]}->{v[1]}" for k, v in units.items()},
            "physicalShrink": bool(step.physical_shrink)}


def apply(model: nn.Module, step: PruneStep, sparsity: float, ctx: Context) -> dict[str, Any]:
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"prune.sparsity must be in [0, 1), got {sparsity}")
    if any(isinstance(m, layers.QuantLinear) for m in model.modules()):
        raise ConfigError("prune after quantize is not supported: put prune steps first")
    torch.manual_seed(ctx.seed)
    if step.method == "magnitude":
        info = magnitude(model, step, sparsity, ctx)
    elif step.method == "l1Threshold":
        info = l1_threshold(model, step, sparsity, ctx)
    elif step.method == "structured":
        info = structured(model, step, sparsity, ctx)
    else:
        raise ConfigError(f"unknown prune method {step.method!r}")
    ctx.backends["prune"] = "torch.nn.utils.prune" if step.method != "structured" or not \
        step.physical_shrink else "torchyard structured (torch.fx groups, layers rebuilt)"
    return info
