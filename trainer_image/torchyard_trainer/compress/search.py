"""Accuracy-aware search: every candidate (sparsity levels, per-tensor vs per-channel, ...) is
built from the source model by the whole step list, measured, and judged by the accuracy
criterion. The winner is the *best passing* candidate by the objective (smallest on disk, or
fastest), never merely the first; when none passes, the most accurate one is returned with
``passed = False`` so that it and the full trial table can still be saved.

Candidates that share a prefix of steps share its result (a prune → quantize search prunes
once per sparsity, not once per sparsity × granularity).
"""

from __future__ import annotations

import itertools
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

from torchyard.api.compression import LOWER_IS_BETTER
from torchyard_trainer.compress import distill, prune, quantize, timing
from torchyard_trainer.compress.context import Context, clone
from torchyard_trainer.compress.report import latency_batch, measure, passes

if TYPE_CHECKING:
    from torchyard.api.compression import AccuracyCriterion, CompressionStep

log = logging.getLogger("torchyard_trainer.compress")

Setting = float | str | None
"""A step's setting in one candidate: a sparsity, a granularity, or None (fixed step)."""


@dataclass
class Candidate:
    """One point of the search: a setting per step."""

    choices: tuple[tuple[str, Setting], ...]
    """Per step: (label, value) — e.g. ("prune.sparsity", 0.9); ("", None) for fixed steps."""

    @property
    def name(self) -> str:
        parts = [f"{k}={v}" for k, v in self.choices if k]
        return ",".join(parts) or "as specified"

    @property
    def params(self) -> dict[str, Setting]:
        return {k: v for k, v in self.choices if k}


@dataclass
class TrialResult:
    candidate: Candidate
    model: nn.Module
    model_spec: dict[str, Any]
    stats: dict[str, Any]
    passed: bool
    steps: list[dict[str, Any]]
    seconds: float
    backends: dict[str, str] = field(default_factory=dict)

    def to_trial(self) -> dict[str, Any]:
        """The API's Trial (status.trials[])."""
        return {"name": self.candidate.name,
                "params": {**self.candidate.params, "seconds": round(self.seconds, 3)},
                "stats": self.stats, "passed": self.passed}


def step_choices(step: CompressionStep) -> list[tuple[str, Setting]]:
    if step.prune is not None:
        values = [step.prune.sparsity, *step.prune.candidates]
        uniq = list(dict.fromkeys(float(v) for v in values))
        return [("prune.sparsity", v) for v in uniq]
    if step.quantize is not None:
        if step.quantize.method == "binarize" or step.quantize.method == "weightOnlyInt4":
            return [("", None)]
        g = step.quantize.granularity
        opts = ["perTensor", "perChannel"] if g == "auto" else [g]
        return [("quantize.granularity", o) for o in opts]
    return [("", None)]


def candidates(steps: list[CompressionStep], max_trials: int) -> tuple[list[Candidate], int]:
    """All combinations (the spec's own setting first), capped at ``max_trials``."""
    combos = [Candidate(tuple(c)) for c in itertools.product(*(step_choices(s) for s in steps))]
    return combos[:max_trials], len(combos)


def apply_step(model: nn.Module, step: CompressionStep, value: Setting, ctx: Context
               ) -> tuple[nn.Module, dict[str, Any]]:
    if step.prune is not None:
        assert value is not None, "a prune step's setting is its sparsity"
        info = prune.apply(model, step.prune, float(value), ctx)
        return model, {"prune": {"method": step.prune.method, **info}}
    if step.distill is not None:
        student, info = distill.apply(model, step.distill, ctx)
        return student, {"distill": info}
    quant = step.quantize
    assert quant is not None, "a step sets one of prune, distill or quantize"
    info = quantize.apply(model, quant, str(value or quant.granularity), ctx)
    return model, {"quantize": info}


def run_search(source: nn.Module, steps: list[CompressionStep], ctx: Context,
               criterion: AccuracyCriterion,
               objective: str, baseline_metric: float, n_threads: int,
               on_trial: Callable[[int, int, TrialResult], None] | None = None,
               ) -> tuple[TrialResult, list[TrialResult], list[str]]:
    """Evaluate the candidates; returns (winner or best failing, all trials, warnings)."""
    cands, total = candidates(steps, criterion.max_trials)
    warnings: list[str] = []
    if total > len(cands):
        warnings.append(f"the search has {total} candidates; maxTrials={criterion.max_trials} "
                        f"evaluated the first {len(cands)}")
    base_spec = dict(ctx.model_spec)
    ctx.original = source
    # prefix cache: choices of the first k steps -> (model, model spec, step infos, backends)
    cache: dict[tuple[tuple[str, Setting], ...],
                tuple[nn.Module, dict[str, Any], list[dict[str, Any]], dict[str, str]]] = {
        (): (source, base_spec, [], {})}
    results: list[TrialResult] = []
    for cand in cands:
        t0 = time.perf_counter()
        k = len(cand.choices)
        while cand.choices[:k] not in cache:
            k -= 1
        model, spec, infos, backends = cache[cand.choices[:k]]
        model, infos, backends = clone(model), list(infos), dict(backends)
        ctx.model_spec = dict(spec)
        for i in range(k, len(steps)):
            ctx.backends = backends
            model, info = apply_step(model, steps[i], cand.choices[i][1], ctx)
            infos.append(info)
            if i < len(steps) - 1:
                cache[cand.choices[: i + 1]] = (clone(model), dict(ctx.model_spec), list(infos),
                                                dict(backends))
        stats = measure(model, ctx, n_threads)
        ok = passes(baseline_metric, stats["accuracy"], criterion)
        res = TrialResult(cand, model, dict(ctx.model_spec), stats, ok, infos,
                          time.perf_counter() - t0, dict(backends))
        log.info("trial %s: %s=%.4f bytes=%d latency=%.3fms passed=%s", cand.name,
                 ctx.metric, stats["accuracy"], stats["bytes"], stats["latencyMs"] or -1, ok)
        results.append(res)
        if on_trial is not None:
            on_trial(len(results), len(cands), res)
    ctx.model_spec = base_spec
    return pick(results, objective, criterion.metric in LOWER_IS_BETTER), results, warnings


def pick(results: list[TrialResult], objective: str, lower_is_better: bool = False) -> TrialResult:
    """Best passing by objective (ties: the better gate metric); else the candidate with the
    best gate metric. ``lower_is_better`` for perplexity and kl, where a rise is the loss.
    For ``latency`` this is the one-shot pick; the job refines it with :func:`settle_latency`."""
    sign = 1.0 if lower_is_better else -1.0  # sign * metric: smaller is better either way

    def worse(r: TrialResult) -> float:
        return sign * float(r.stats["accuracy"])

    passing = [r for r in results if r.passed]
    if passing:
        key = "bytes" if objective == "size" else "latencyMs"
        return min(passing, key=lambda r: (r.stats[key], worse(r)))
    return min(results, key=lambda r: (worse(r), r.stats["bytes"]))


@dataclass
class LatencyPick:
    """What :func:`settle_latency` decided."""

    winner: TrialResult
    """The pick (its ``stats["latencyMs"]`` is now the interleaved median)."""
    baseline_ms: float
    """The source model's median latency over the same interleaved rounds (like-for-like
    speedup)."""
    notes: list[str]
    """How the pick was made, for the report's warnings (none with a single candidate)."""


def settle_latency(source: nn.Module, results: list[TrialResult], winner: TrialResult,
                   ctx: Context, n_threads: int) -> LatencyPick:
    """``objective: latency``: time the passing candidates and the source again in the same
    interleaved rounds (compress/timing.py) and pick by :func:`timing.decide` — the fastest only
    when it is clearly faster, else the smallest of those within noise. Every re-timed trial's
    ``latencyMs`` becomes its interleaved median, so the trial table, the winner and the
    baseline are the same kind of figure. With no passing candidate ``winner`` (the most
    accurate) stays, re-timed beside the source. When the first block of rounds shows one
    candidate clearly faster than another, a second block (models in reverse order) must
    show it too (:func:`timing.blocks`); the medians are then over both."""
    timed = [r for r in results if r.passed] or [winner]
    blocks = timing.blocks([source, *(r.model for r in timed)], latency_batch(ctx), n_threads,
                           compared=slice(1, None))

    def by_name(rounds: list[list[float]]) -> dict[str, list[float]]:
        return {r.candidate.name: rounds[i + 1] for i, r in enumerate(timed)}

    pooled = [[t for block in blocks for t in block[i]] for i in range(len(timed) + 1)]
    for r, rounds in zip(timed, pooled[1:], strict=True):
        r.stats["latencyMs"] = round(statistics.median(rounds), 4)
    baseline_ms = round(statistics.median(pooled[0]), 4)
    if not winner.passed:
        return LatencyPick(winner, baseline_ms, [])
    decision = timing.decide(
        [timing.Entry(r.candidate.name, r.stats["bytes"], r.stats["nonZeroParams"],
                      r.stats["accuracy"]) for r in timed], by_name(blocks[0]),
        confirm=by_name(blocks[1]) if len(blocks) > 1 else None)
    log.info("%s", decision.reason)
    chosen = next(r for r in timed if r.candidate.name == decision.winner)
    return LatencyPick(chosen, baseline_ms, [decision.reason] if len(timed) > 1 else [])
