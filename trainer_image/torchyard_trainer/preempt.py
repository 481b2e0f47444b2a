"""Checkpoint-on-SIGTERM: a preempted, evicted or drained worker loses (almost) nothing.

The kubelet sends SIGTERM to the pod's launcher, which forwards it to its ranks (torchrun's
agent, with its shutdown timeout set from ``runPolicy.gracePeriodSeconds``); a rank that gets
it only raises a flag. Ranks of other pods may never get one, and every rank must stop at the
same step (DCP saves are collectives), so the flags are OR-ed over all ranks every step: an
``all_reduce`` on its own gloo group, issued after step k and read after step k+1, so it
overlaps a step of compute instead of adding a round trip to each (bench/preempt_cost.py
measures what it costs). Once the ranks agree, they finish that step, checkpoint it (unless
the last save took longer than the time left: then they keep the previous checkpoint rather
than be SIGKILLed half-way) and exit with ``ExitCode.PREEMPTED``; the next attempt resumes
at that step, so no step is redone.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from types import FrameType
from typing import Any, Protocol

import torch
import torch.distributed as dist

from torchyard.api.contract import Env, checkpoint_budget_seconds
from torchyard_trainer.loop import Component, LoopState

log = logging.getLogger("torchyard_trainer")

DEFAULT_SHUTDOWN_TIMEOUT = 30.0
"""torchrun's agent's own shutdown timeout, for a launcher that was not told one."""


class _Commits(Protocol):
    def wait(self) -> None: ...


class Saver(Protocol):
    """What a stop needs of the loop's checkpointer (``train.components.Checkpointer``)."""

    saved_step: int
    last_save_seconds: float | None

    @property
    def manager(self) -> _Commits: ...

    def save(self, step: int) -> None: ...


class Preempted(Exception):
    """The ranks stopped on SIGTERM at ``step`` (checkpointed when ``saved``)."""

    def __init__(self, step: int, saved: bool) -> None:
        what = "checkpointed it" if saved else "kept the previous checkpoint (no time to save)"
        super().__init__(f"stopped on SIGTERM after step {step} and {what}")
        self.step, self.saved = step, saved


class StopFlag:
    """SIGTERM (and the time it came) as a flag the loop polls; the handler does nothing else,
    so it is safe whatever the main thread was doing."""

    def __init__(self) -> None:
        self.received_at: float | None = None

    @property
    def requested(self) -> bool:
        return self.received_at is not None

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.received_at is None:
            self.received_at = time.monotonic()

    def seconds_left(self, shutdown_timeout: float) -> float:
        """Of this rank's checkpoint budget; unbounded on a rank that got no signal."""
        if self.received_at is None:
            return math.inf
        spent = time.monotonic() - self.received_at
        return checkpoint_budget_seconds(shutdown_timeout) - spent


def shutdown_timeout() -> float:
    """``$TORCHYARD_SHUTDOWN_TIMEOUT_SECONDS`` (what the launcher waits after SIGTERM)."""
    raw = os.environ.get(Env.SHUTDOWN_TIMEOUT_SECONDS)
    try:
        return float(raw) if raw else DEFAULT_SHUTDOWN_TIMEOUT
    except ValueError:
        return DEFAULT_SHUTDOWN_TIMEOUT


class StopAgreement:
    """Whether any rank was asked to stop, agreed by all: one pipelined 1-element all_reduce
    per step (the answer of step k is read after step k+1)."""

    def __init__(self, flag: StopFlag) -> None:
        self.flag = flag
        world = dist.get_world_size() if dist.is_initialized() else 1
        # Own gloo group: never interleaves with the training collectives (nor waits on them).
        self.pg: Any = dist.new_group(backend="gloo") if world > 1 else None
        self._buf = torch.zeros(1)
        self._work: Any = None

    def poll(self) -> bool:
        """Called once per step on every rank; True on all ranks at the same call."""
        if self.pg is None:
            return self.flag.requested
        agreed = False
        if self._work is not None:
            self._work.wait()
            agreed = bool(self._buf.item() > 0)
        if agreed:
            self._work = None
            return True
        self._buf.fill_(1.0 if self.flag.requested else 0.0)
        self._work = dist.all_reduce(self._buf, op=dist.ReduceOp.MAX, group=self.pg, async_op=True)
        return False

    def min_over_ranks(self, value: float) -> float:
        """The smallest ``value`` of all ranks (a synchronous collective on the stop group)."""
        if self.pg is None:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.pg)
        return float(t.item())

    def close(self) -> None:
        """The last step's all_reduce (issued by every rank) is finished before the group goes."""
        if self._work is not None:
            self._work.wait()
            self._work = None


class GracefulStop(Component):
    """The loop component: after every step, stop all ranks together once any got SIGTERM,
    checkpointing that step first when the time left allows (see the module docstring)."""

    def __init__(self, checkpointer: Saver, flag: StopFlag | None = None) -> None:
        self.checkpointer = checkpointer
        self.flag = flag or StopFlag()
        self.flag.install()
        self.agreement = StopAgreement(self.flag)
        self.shutdown_timeout = shutdown_timeout()

    def after_step(self, state: LoopState) -> None:
        if self.agreement.poll():
            self._stop(state.step)

    def _stop(self, step: int) -> None:
        ckpt = self.checkpointer
        manager = ckpt.manager
        saved = ckpt.saved_step == step  # a periodic save of this very step is in flight
        if not saved:
            estimate = ckpt.last_save_seconds or 0.0
            room = self.agreement.min_over_ranks(
                self.flag.seconds_left(self.shutdown_timeout) - estimate
            )
            if room >= 0:
                ckpt.save(step)
                saved = True
            else:
                log.warning(
                    "SIGTERM: the last checkpoint took %.1f s, more than the time left; "
                    "keeping the previous one",
                    estimate,
                )
        manager.wait()  # every rank's write done and committed (renamed into place)
        self.agreement.close()
        raise Preempted(step, saved)

    def close(self) -> None:
        self.agreement.close()
