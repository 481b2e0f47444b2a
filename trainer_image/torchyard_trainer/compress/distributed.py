"""Several workers for a CompressionJob: the distill steps' fine-tune runs data-parallel.

Rank 0 runs the job (search, evaluation, gate, report, saving) exactly as a single worker does.
Whenever it reaches a distill step it sends the other ranks a command over a gloo *control*
group — the step and the teacher (sparse-coded as a saved version is) — and every rank
fine-tunes the student together: each on its shard of the transfer set (DistributedSampler,
drop_last: the same number of steps everywhere), teacher logits computed locally for that
shard, the student wrapped in DistributedDataParallel (gloo on CPU, nccl on CUDA: the trainer's
process-group set-up). The other ranks never evaluate or write anything; when rank 0 is done
(saved, gate failed or crashed) it sends ``done`` with its exit code and they exit with it.

Timeouts: the default group's collectives (the DDP all-reduces, the gathers) and rank 0's
commands (the teacher, ``done``) are bounded by ``runtime.collective_timeout()`` (10 minutes,
or ``$TORCHYARD_COLLECTIVE_TIMEOUT_SECONDS``); only the other ranks' wait for the next command
on the control group, while rank 0 prunes, quantizes or measures on its own, by the job's
``runPolicy.activeDeadlineSeconds`` (else ``CONTROL_TIMEOUT``). A rank that dies closes its
connections, so its peers fail at once; one that hangs fails its peers after the collective
timeout, and rank 0 waits at most one more to tell the others its outcome (never the control
timeout): it exits with the peer-lost code and writes no model version.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from torchyard_trainer.env import ConfigError, WorkerEnv
from torchyard_trainer.runtime import collective_timeout, init_distributed

if TYPE_CHECKING:
    from torchyard.api.compression import CompressionJobSpec

log = logging.getLogger("torchyard_trainer.compress")

CONTROL_TIMEOUT = timedelta(hours=24)


@dataclass
class CompressionWorld:
    """This process's place in a multi-worker CompressionJob."""

    rank: int
    world_size: int
    device: torch.device
    """Where the distillation fine-tune runs (cuda:LOCAL_RANK with nccl, else the CPU)."""
    backend: str
    control: Any
    """The gloo process group of commands (ProcessGroup)."""

    def send(self, message: Any) -> None:
        """Rank 0: a command to every other rank, bounded by the collective timeout (a hung
        rank does not keep rank 0 for the control group's long timeout)."""
        data = torch.frombuffer(bytearray(pickle.dumps(message)), dtype=torch.uint8)
        for tensor in (torch.tensor([data.numel()], dtype=torch.long), data):
            work = dist.broadcast(tensor, src=0, group=self.control, async_op=True)
            assert work is not None
            work.wait(collective_timeout())

    def receive(self) -> Any:
        """Other ranks: the next command of rank 0 (waits as long as rank 0 works alone)."""
        size = torch.zeros(1, dtype=torch.long)
        dist.broadcast(size, src=0, group=self.control)
        data = torch.empty(int(size.item()), dtype=torch.uint8)
        work = dist.broadcast(data, src=0, group=self.control, async_op=True)
        assert work is not None
        work.wait(collective_timeout())
        return pickle.loads(data.numpy().tobytes())

    def gather(self, value: Any) -> list[Any]:
        """``value`` of every rank, in rank order (a collective of the default group)."""
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def ack(self) -> None:
        """Every rank reached this point (bounded by the collective timeout): rank 0 leaves
        only after the others have its outcome."""
        work = dist.all_reduce(torch.zeros(1), group=self.control, async_op=True)
        assert work is not None
        work.wait(collective_timeout())

    def wrap(self, model: nn.Module) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(model, device_ids=ids)


def has_distill(spec: CompressionJobSpec) -> bool:
    return any(step.distill is not None for step in spec.steps)


def check_world(spec: CompressionJobSpec, world_size: int) -> None:
    """Only distillation runs on several ranks (the API's rule on ``spec.workers``, checked
    again for a worker started by hand with WORLD_SIZE > 1)."""
    if world_size > 1 and not has_distill(spec):
        raise ConfigError(
            f"spec.workers: WORLD_SIZE={world_size} but spec.steps has no distill step; only "
            "the distillation fine-tune runs data-parallel (prune and quantize run on one "
            "worker): set workers: 1"
        )


def start(env: WorkerEnv, spec: CompressionJobSpec) -> CompressionWorld:
    """Join the process group (and the control group) of the job's ranks."""
    device = init_distributed(env, timeout=collective_timeout())
    deadline = spec.run_policy.active_deadline_seconds
    control_timeout = timedelta(seconds=deadline) if deadline else CONTROL_TIMEOUT
    control = dist.new_group(backend="gloo", timeout=control_timeout)
    backend = str(dist.get_backend())
    log.info("rank %d of %d joined (%s, distillation on %s)", env.rank, env.world_size,
             backend, device)
    return CompressionWorld(env.rank, env.world_size, device, backend, control)


__all__ = ["CompressionWorld", "check_world", "has_distill", "start"]
