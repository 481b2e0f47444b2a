"""Latency that respects the noise: the candidates an ``objective: latency`` search compares are
timed again, together and interleaved, and one counts as faster than another only when the
difference is clear; otherwise the smaller one on disk wins.

Why: each trial's own latency is measured once, alone, minutes apart from the others' — on a
shared CPU that measures the load as much as the model. Two granularities running the same
kernels measured 738 vs 416 ms under load and the "faster" one won (issue 19).

How (:func:`interleaved`): after a warm-up of every model, ``ROUNDS`` rounds; each round times
every model once (one slot: an untimed call, then the median of at least ``PER_SLOT`` forward
passes spanning ``SLOT_SECONDS``), in an order rotated by one each round, so a burst of load
hits all of them alike and none is always first or last. A model's latency is the median of
its rounds.

Decision (:func:`decide`, pure): A is *clearly faster* than B when A wins a clear majority of
the paired rounds — a one-sided sign test at ``ALPHA`` (8 of 9 rounds) — *and* A's median is
more than ``MARGIN`` lower. The candidates no other one is clearly faster than are *within
noise* of each other; among them the smallest on disk wins (then fewer non-zero parameters,
then the more accurate). Both conditions are needed: the sign test alone calls a steady 1%
difference "faster" (it is real but not worth a bigger file), the margin alone trusts two
medians that one burst of load can move.

Confirmation (:func:`needs_confirmation`): when one block of rounds shows a candidate clearly
faster than another, a second block is timed (the models in reverse order) and a candidate
counts as clearly faster only when it is so in *both* blocks; the medians are then over both
blocks' rounds. Why: the sign test takes the rounds as independent, and load on a shared
machine is not — one stretch of it can favour one model for a whole block (CI, same kernels:
0.069 vs 0.091 ms, faster in 8/9 rounds; here, under a Go build, 1 run in 60: 9/9, 0.051 vs
0.065 ms). A second block a second later rarely repeats the same stretch, so a false pick
needs two; a real difference costs one more block.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from torchyard_trainer.compress.report import threads

ROUNDS = 9
"""Interleaved rounds; 9 is the fewest where the sign test can call 8 wins clear at 5%."""
PER_SLOT = 5
"""Fewest timed forward passes per slot; the slot's figure is their median."""
SLOT_SECONDS = 0.02
"""Fewest seconds of timed calls per slot (tiny models: many calls, a stable median)."""
ALPHA = 0.05
"""One-sided sign test level of "wins a clear majority of the rounds"."""
MARGIN = 0.05
"""How much lower (a fraction) a faster candidate's median must be."""
WARMUP_SECONDS = 0.2
"""Warm-up per model before the rounds: first calls pay one-time set-up, not latency."""

NOISE_NOTE = "within noise: chose by size"
"""The words the report's note carries when the latency objective fell back to size."""


@dataclass(frozen=True)
class Entry:
    """A passing candidate as the decision sees it."""

    name: str
    bytes: int
    """Size on disk (the first tie-break)."""
    params: int
    """Non-zero parameters (the second)."""
    accuracy: float
    """The gate's metric (the third: higher wins)."""


@dataclass(frozen=True)
class Decision:
    """Which candidate the latency objective picks, and why."""

    winner: str
    medians: dict[str, float]
    """Median latency (ms) of each candidate over the rounds."""
    within_noise: tuple[str, ...]
    """The candidates no other one is clearly faster than (the winner is one of them); one
    name when a single candidate is clearly the fastest."""
    reason: str
    """One line for the report."""

    @property
    def by_size(self) -> bool:
        """The pick fell back to size: several candidates were within noise."""
        return len(self.within_noise) > 1


def required_wins(rounds: int, alpha: float = ALPHA) -> int | None:
    """Fewest wins out of ``rounds`` paired rounds that a one-sided sign test calls clear
    (P(Binomial(rounds, 1/2) >= k) <= alpha); None when even winning every round is not."""
    tail = 0
    for k in range(rounds, -1, -1):
        tail += math.comb(rounds, k)
        if tail / 2**rounds > alpha:
            return k + 1 if k < rounds else None
    return 0  # alpha >= 1: anything is "clear"


def wins(a: Sequence[float], b: Sequence[float]) -> int:
    """Rounds in which ``a`` was strictly faster than ``b`` (ties are nobody's win)."""
    return sum(x < y for x, y in zip(a, b, strict=True))


def clearly_faster(a: Sequence[float], b: Sequence[float], alpha: float = ALPHA,
                   margin: float = MARGIN) -> bool:
    """``a`` beats ``b``: a clear majority of the paired rounds and a median more than
    ``margin`` lower."""
    need = required_wins(len(a), alpha)
    return (need is not None and wins(a, b) >= need
            and statistics.median(a) < (1.0 - margin) * statistics.median(b))


def needs_confirmation(times: Mapping[str, Sequence[float]], alpha: float = ALPHA,
                       margin: float = MARGIN) -> bool:
    """One block of rounds shows some candidate clearly faster than another: time a second
    block before believing it (see the module's docstring)."""
    return any(a != b and clearly_faster(times[a], times[b], alpha, margin)
               for a in times for b in times)


def blocks(models: Sequence[Callable[[torch.Tensor], Any]], x: torch.Tensor, n_threads: int,
           compared: slice = slice(None)) -> list[list[list[float]]]:
    """What a decision is made on: one block of :func:`interleaved` rounds, and a second one
    (timed with the models in reverse order, returned in the given order) when the first shows
    one of ``models[compared]`` clearly faster than another of them (:func:`needs_confirmation`).
    ``out[block][i][r]``: model ``i``'s ms in round ``r`` of that block."""
    first = interleaved(models, x, n_threads)
    indices = range(len(models))[compared]
    if not needs_confirmation({str(i): first[i] for i in indices}):
        return [first]
    return [first, interleaved(models[::-1], x, n_threads)[::-1]]


def decide(entries: Sequence[Entry], times: Mapping[str, Sequence[float]],
           alpha: float = ALPHA, margin: float = MARGIN,
           confirm: Mapping[str, Sequence[float]] | None = None) -> Decision:
    """The latency objective's pick among passing candidates, from per-round timings
    (``times[name][r]``: the candidate's ms in round ``r``; rounds are paired by index).
    ``confirm``: the same candidates' rounds in a second, later block; given, a candidate is
    clearly faster than another only when it is so in both blocks, and each median is over
    both blocks' rounds."""
    if not entries:
        raise ValueError("decide() needs at least one candidate")
    names = [e.name for e in entries]
    per_block = [times] if confirm is None else [times, confirm]
    medians = {n: statistics.median([t for block in per_block for t in block[n]])
               for n in names}

    def beats(a: str, b: str) -> bool:
        return all(clearly_faster(block[a], block[b], alpha, margin) for block in per_block)

    beaten = {b for b in names for a in names if a != b and beats(a, b)}
    front = [e for e in entries if e.name not in beaten]  # never empty: the lowest median
    best = min(front, key=lambda e: (e.bytes, e.params, -e.accuracy, medians[e.name]))
    n_rounds = len(times[names[0]])
    rounds_of = (f"{n_rounds} interleaved rounds" if confirm is None
                 else f"two blocks of {n_rounds} interleaved rounds")
    rule = (f"a clear difference needs {required_wins(n_rounds, alpha)}/{n_rounds} rounds won "
            f"and a median {margin:.0%} lower" + ("" if confirm is None else ", in each block"))
    if len(names) == 1:
        reason = f"objective latency: {best.name} was the only passing candidate"
    elif len(front) > 1:
        listed = ", ".join(f"{e.name} {medians[e.name]:.3f} ms" for e in front)
        unconfirmed = ("; the first block's lead was not confirmed by the second"
                       if confirm is not None and needs_confirmation(
                           {n: times[n] for n in names}, alpha, margin) else "")
        reason = (f"objective latency: {NOISE_NOTE} — {listed} (medians of {rounds_of}; "
                  f"{rule}{unconfirmed}); {best.name} is the smallest ({best.bytes} bytes)")
    else:
        runner_up = min((n for n in names if n != best.name), key=lambda n: medians[n])
        won = " and ".join(f"{wins(block[best.name], block[runner_up])}/{n_rounds}"
                           for block in per_block)
        reason = (f"objective latency: {best.name} is clearly the fastest — "
                  f"{medians[best.name]:.3f} vs {medians[runner_up]:.3f} ms ({runner_up}), "
                  f"faster in {won} interleaved rounds"
                  + ("" if confirm is None else " (two blocks)"))
    return Decision(best.name, medians, tuple(e.name for e in front), reason)


def _slot(model: Callable[[torch.Tensor], Any], x: torch.Tensor, per_slot: int,
          clock: Callable[[], float]) -> float:
    """One model's figure in one round (ms): an untimed call (the previous model's weights
    were in the cache), then the median of at least ``per_slot`` timed calls spanning at least
    ``SLOT_SECONDS`` (a sub-millisecond model gets enough calls that one preemption or timer
    tick does not move its median)."""
    model(x)
    times: list[float] = []
    start = clock()
    while True:
        t0 = clock()
        model(x)
        t1 = clock()
        times.append(t1 - t0)
        if len(times) >= 10_000 or (len(times) >= per_slot and t1 - start >= SLOT_SECONDS):
            return statistics.median(times) * 1e3


@torch.no_grad()
def interleaved(models: Sequence[Callable[[torch.Tensor], Any]], x: torch.Tensor,
                n_threads: int, rounds: int = ROUNDS, per_slot: int = PER_SLOT,
                clock: Callable[[], float] = time.perf_counter) -> list[list[float]]:
    """``out[i][r]``: model ``i``'s latency (ms) over the batch ``x`` in round ``r``; round
    ``r`` times the models in the order rotated by ``r``."""
    for m in models:
        if isinstance(m, torch.nn.Module):
            m.eval()
    out: list[list[float]] = [[] for _ in models]
    with threads(n_threads):
        for m in models:
            t_end, calls = clock() + WARMUP_SECONDS, 0
            while calls < 3 or (clock() < t_end and calls < 10_000):
                m(x)
                calls += 1
        order = list(range(len(models)))
        for r in range(rounds):
            shift = r % max(1, len(order))
            for i in order[shift:] + order[:shift]:
                out[i].append(_slot(models[i], x, per_slot, clock))
    return out
