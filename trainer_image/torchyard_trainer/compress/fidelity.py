"""Fidelity to the original model — gates that need no labels — and the gate's arithmetic.

The original model's outputs on the held-out set are computed once (``Context.reference``);
every candidate's outputs are compared with them:

* ``cosine``: cosine similarity per sample (per real token for ``(N, L, V)`` outputs), its
  mean (the gated value) and its ``percentile``-th lowest value (the worst case, reported);
* ``top1Agreement``: share of samples (tokens) whose arg-max is unchanged;
* ``kl``: mean KL(original ‖ candidate) of the softmax distributions, nats;
* ``perplexity`` (causal LMs): exp of the mean next-token negative log-likelihood of the
  candidate on the held-out text, padding ignored — the only one that uses the text itself.

Outputs ``(N, L, V)`` are token logits of a causal LM: only positions whose attention mask is
1 count (``x[:, 1]`` of the adapter's input, :mod:`torchyard_trainer.hf`).

The gate (:func:`threshold`, :func:`gate_passes`) bounds the worsening of the metric:
a drop for accuracy, f1, cosine, top1Agreement, a rise for perplexity and kl
(``LOWER_IS_BETTER``); ``relative`` scales tolerableLoss by the baseline, ``absolute`` not.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from torchyard.api.compression import FIDELITY_METRICS, LOWER_IS_BETTER
from torchyard_trainer.compress.context import Context, evaluate, predict

if TYPE_CHECKING:
    from torchyard.api.compression import AccuracyCriterion

EPS = 1e-12


def token_mask(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor | None:
    """Which positions of token-level outputs count: the attention mask of ``x`` (N, C, L)
    for outputs (N, L, V); None for per-sample outputs."""
    if out.dim() != 3 or x.dim() != 3:
        return None
    return x[:, 1].bool()


def _rows(out: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Outputs as (items, features): per sample, or per real token of (N, L, V) outputs."""
    out = out.float()
    if mask is not None:
        return out[mask]
    return out.reshape(len(out), -1)


def cosine(out: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor | None = None
           ) -> torch.Tensor:
    """Cosine similarity of each item to the reference's."""
    return F.cosine_similarity(_rows(out, mask), _rows(ref, mask), dim=-1, eps=1e-8)


def worst(values: torch.Tensor, percentile: int) -> float:
    """The ``percentile``-th lowest value (p5: 95 % of the items are at least this)."""
    return float(torch.quantile(values.double(), percentile / 100.0))


def top1_agreement(out: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor | None = None
                   ) -> float:
    a, b = _rows(out, mask).argmax(-1), _rows(ref, mask).argmax(-1)
    return float((a == b).double().mean())


def kl(out: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Mean KL(reference ‖ output) over items, nats (0 when the distributions agree)."""
    logq = F.log_softmax(_rows(out, mask).double(), dim=-1)
    logp = F.log_softmax(_rows(ref, mask).double(), dim=-1)
    return float((logp.exp() * (logp - logq)).sum(-1).mean().clamp_min(0.0))


def perplexity(logits: torch.Tensor, x: torch.Tensor) -> float:
    """exp(mean NLL) of next tokens: logits (N, L, V) at t predict ``input_ids[t + 1]`` of
    ``x`` (N, C, L); positions whose next token is padding are ignored."""
    ids, mask = x[:, 0], x[:, 1]
    target = torch.where(mask[:, 1:] > 0, ids[:, 1:], -100)
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).double(),
                          target.reshape(-1), ignore_index=-100, reduction="sum")
    count = int((target != -100).sum())
    return math.exp(float(nll) / max(count, 1))


def item_values(out: torch.Tensor, ref: torch.Tensor, x: torch.Tensor, metric: str,
                task: str) -> dict[str, torch.Tensor]:
    """Per-item figures of one batch (cosine, top-1 agreement, KL) and the summed next-token
    NLL with its token count: batches are scored one at a time, so a causal LM's (N, L, V)
    logits never need to be held for the whole held-out set."""
    mask = token_mask(x, out)
    vals: dict[str, torch.Tensor] = {}
    if metric == "cosine" or task == "embedding":
        vals["cos"] = cosine(out, ref, mask).double()
    if task != "embedding":
        a, b = _rows(out, mask), _rows(ref, mask)
        vals["agree"] = (a.argmax(-1) == b.argmax(-1)).double()
        logq, logp = F.log_softmax(a.double(), -1), F.log_softmax(b.double(), -1)
        vals["kl"] = (logp.exp() * (logp - logq)).sum(-1)
    if task == "lm":
        ids, m = x[:, 0], x[:, 1]
        target = torch.where(m[:, 1:] > 0, ids[:, 1:], -100)
        vals["nll"] = F.cross_entropy(out[:, :-1].reshape(-1, out.shape[-1]).double(),
                                      target.reshape(-1), ignore_index=-100,
                                      reduction="sum").reshape(1)
        vals["tokens"] = (target != -100).sum().double().reshape(1)
    return vals


GATED = {"cosine": "fidelityMean", "top1Agreement": "top1Agreement", "kl": "kl",
         "perplexity": "perplexity"}
"""The stats field each fidelity metric gates on."""


def combine(parts: list[dict[str, torch.Tensor]], metric: str, percentile: int
            ) -> dict[str, Any]:
    """ModelStats fields from the batches' :func:`item_values`; ``accuracy`` is the gated
    one."""
    cat = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    stats: dict[str, Any] = {}
    if "cos" in cat:
        stats["fidelityMean"] = round(float(cat["cos"].mean()), 6)
        stats["fidelityWorst"] = round(worst(cat["cos"], percentile), 6)
    if "agree" in cat:
        stats["top1Agreement"] = round(float(cat["agree"].mean()), 6)
        stats["kl"] = round(max(0.0, float(cat["kl"].mean())), 8)
    if "nll" in cat:
        stats["perplexity"] = round(
            math.exp(float(cat["nll"].sum()) / max(1.0, float(cat["tokens"].sum()))), 6)
    stats["accuracy"] = stats[GATED[metric]]
    return stats


def scores(out: torch.Tensor, ref: torch.Tensor, x: torch.Tensor, metric: str, task: str,
           percentile: int) -> dict[str, Any]:
    """ModelStats fields for outputs ``out`` of inputs ``x`` (one batch): ``accuracy`` is
    the gate's metric; the others as they apply to ``task`` (lm, classification,
    embedding)."""
    return combine([item_values(out, ref, x, metric, task)], metric, percentile)


def reference_outputs(model: nn.Module, ctx: Context) -> torch.Tensor | nn.Module:
    """The yardstick of every candidate: the original's held-out outputs, computed once — or,
    for a causal LM, whose (N, L, vocab) logits would not fit in memory for a real
    vocabulary, the original model itself (run beside each candidate, batch by batch)."""
    if ctx.output_kind == "lm":
        return model
    return predict(model, ctx.ds.val_x, batch=ctx.batch_size).detach()


@torch.no_grad()
def gate_scores(model: nn.Module, ctx: Context) -> dict[str, Any]:
    """ModelStats' metric fields of ``model``: ``accuracy`` (the gate's metric) and, for a
    fidelity gate, every fidelity figure that applies; in batches of ``batchSize``."""
    if not is_fidelity(ctx.metric):
        return {"accuracy": round(evaluate(model, ctx), 6)}
    ref_all = ctx.reference
    if ref_all is None:
        raise RuntimeError("a fidelity gate needs the original's outputs (ctx.reference)")
    if isinstance(ref_all, nn.Module):
        ref_all.eval()
    model.eval()
    x, bs = ctx.ds.val_x, ctx.batch_size
    parts = []
    for i in range(0, len(x), bs):
        xb = x[i : i + bs]
        ref = ref_all(xb) if isinstance(ref_all, nn.Module) else ref_all[i : i + bs]
        parts.append(item_values(model(xb), ref, xb, ctx.metric, ctx.output_kind))
    return combine(parts, ctx.metric, ctx.percentile)


# ---------------------------------------------------------------------------------------------
# the gate


def lower_is_better(metric: str) -> bool:
    return metric in LOWER_IS_BETTER


def is_fidelity(metric: str) -> bool:
    return metric in FIDELITY_METRICS


def threshold(baseline: float, criterion: AccuracyCriterion) -> float:
    """The worst value the gate accepts."""
    scale = abs(baseline) if criterion.mode == "relative" else 1.0
    allowed = criterion.tolerable_loss * scale
    return baseline + allowed if lower_is_better(criterion.metric) else baseline - allowed


def shortfall(baseline: float, value: float, criterion: AccuracyCriterion) -> float:
    """How far ``value`` is on the wrong side of the gate (≤ 0 when it passes)."""
    limit = threshold(baseline, criterion)
    return value - limit if lower_is_better(criterion.metric) else limit - value


def gate_passes(baseline: float, value: float, criterion: AccuracyCriterion) -> bool:
    # a hair of slack: a candidate identical to the baseline must pass a zero tolerance
    return shortfall(baseline, value, criterion) <= 1e-12 * max(1.0, abs(baseline))


def better(metric: str, a: float, b: float) -> bool:
    """Whether value ``a`` of ``metric`` is better than ``b``."""
    return a < b if lower_is_better(metric) else a > b


def miss_message(baseline: float, value: float, criterion: AccuracyCriterion) -> str:
    """'cosine 0.9100 is 0.0700 below the gate 0.9800' (or 'above' for lower-is-better)."""
    limit = threshold(baseline, criterion)
    side = "above" if lower_is_better(criterion.metric) else "below"
    gap = shortfall(baseline, value, criterion)
    return (f"{criterion.metric} {value:.4f} is {gap:.4f} {side} the gate {limit:.4f} "
            f"(baseline {baseline:.4f}, {criterion.mode} tolerableLoss "
            f"{criterion.tolerable_loss})")


def summary(baseline: dict[str, Any], compressed: dict[str, Any], ratios: dict[str, Any],
            metric: str, percentile: int, threads: int) -> str:
    """One line: size ×, speed ×, the gate's metric before → after (mean and worst case for
    cosine)."""
    def x(v: Any) -> str:
        return "-" if v is None else f"{v:.2f}×"

    parts = [f"size {x(ratios.get('size'))} smaller",
             f"speed {x(ratios.get('speedup'))} ({threads} threads)"]
    if metric == "cosine":
        parts.append(f"cosine to the original: mean {compressed.get('fidelityMean', 0):.3f}, "
                     f"p{percentile} {compressed.get('fidelityWorst', 0):.3f}")
    else:
        parts.append(f"{metric} {baseline.get('accuracy', 0):.4f} → "
                     f"{compressed.get('accuracy', 0):.4f}")
    return ", ".join(parts)


__all__ = [
    "GATED",
    "better",
    "combine",
    "cosine",
    "gate_passes",
    "gate_scores",
    "is_fidelity",
    "item_values",
    "kl",
    "lower_is_better",
    "miss_message",
    "perplexity",
    "reference_outputs",
    "scores",
    "shortfall",
    "summary",
    "threshold",
    "top1_agreement",
    "worst",
]
