"""The one training loop: a TrainingJob's strategies (DDP, pipeline, distillation) and a
CompressionJob's fine-tuning (prune recovery, distill step, QAT) both run it.

What differs between them plugs in:

* a :class:`BatchSource` — the optimizer steps of one epoch, resumable at any step (a DDP rank's
  ``DistributedSampler`` shard with gradient accumulation, or a seeded permutation);
* a step function — one optimizer step over those micro-batches, returning (loss, weight);
* :class:`Component` s — what happens after a step or at the end of an epoch: metrics and the
  progress log, evaluation, checkpoints, fault injection. Compression fine-tuning has none.

The loop itself consumes no random numbers: the order of the data, the steps and the components
is the order of the calls here, so a seeded run gives the same numbers however it is assembled.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

Batch = tuple[torch.Tensor, ...]
StepFn = Callable[[list[Batch]], tuple[torch.Tensor, float]]
"""One optimizer step over the micro-batches of one step: (mean loss as a 0-d tensor, weight:
1 if this rank computed a loss else 0)."""


class BatchSource(Protocol):
    """The micro-batches of each optimizer step, epoch by epoch."""

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch."""
        ...

    def epoch(self, epoch: int, skip_steps: int) -> Iterator[list[Batch]]:
        """The steps of ``epoch`` from step ``skip_steps`` on (each a list of micro-batches)."""
        ...


class Scheduler(Protocol):
    def step(self) -> None: ...


@dataclass
class LoopState:
    """Where the loop is; what components read after each step."""

    step: int
    """Optimizer steps done."""
    total: int
    """Optimizer steps to do."""
    steps_per_epoch: int
    """Optimizer steps per epoch."""
    epoch: int = 0
    """The epoch of the step just done."""
    loss: torch.Tensor | None = None
    """The step's loss (not synchronised: a component that reads it decides when)."""
    weight: float = 0.0
    """1 if this rank computed ``loss``, else 0 (a pipeline stage without the loss)."""
    data_wait: float = 0.0
    """Seconds the step waited for its micro-batches."""

    @property
    def end_of_epoch(self) -> bool:
        return self.step % self.steps_per_epoch == 0 or self.step == self.total


class Component:
    """A part of the loop that acts after each step (in the order given) and at each epoch's
    end (after every component's ``after_step``)."""

    def after_step(self, state: LoopState) -> None:
        """Called after every optimizer step."""

    def epoch_end(self, state: LoopState) -> None:
        """Called after the last step of an epoch (and of the run)."""


def run_loop(
    batches: BatchSource,
    train_step: StepFn,
    scheduler: Scheduler,
    total: int,
    *,
    start_step: int = 0,
    components: Sequence[Component] = (),
) -> LoopState:
    """Run optimizer steps ``start_step`` … ``total``; returns the final state."""
    state = LoopState(step=start_step, total=total, steps_per_epoch=batches.steps_per_epoch)
    steps: Iterator[list[Batch]] | None = None
    while state.step < state.total:
        state.epoch, in_epoch = divmod(state.step, state.steps_per_epoch)
        if steps is None or in_epoch == 0:
            steps = batches.epoch(state.epoch, in_epoch)
        t0 = time.perf_counter()
        micro = next(steps)
        state.data_wait = time.perf_counter() - t0
        state.loss, state.weight = train_step(micro)
        scheduler.step()
        state.step += 1
        for component in components:
            component.after_step(state)
        if state.end_of_epoch:
            for component in components:
                component.epoch_end(state)
    return state
