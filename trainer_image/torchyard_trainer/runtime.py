"""The worker process's set-up, shared by training and compression: the process group (and its
collective timeout), the device, the CPU threads, and what exit code an exception means.

Neither ``train`` nor ``compress`` imports the other, and nothing imports ``__main__``: both
(and the entry point) take these from here.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from torchyard.api.contract import Env, ExitCode, SpecError
from torchyard_trainer.env import ConfigError, WorkerEnv
from torchyard_trainer.preempt import Preempted

if TYPE_CHECKING:
    from torchyard.api.common import Quantity


COLLECTIVE_TIMEOUT = timedelta(minutes=10)
"""Default bound of one collective (also torch's default for gloo and nccl)."""
TIMEOUT_ENV = Env.COLLECTIVE_TIMEOUT_SECONDS
"""Tests shorten the collective timeout to see a hung peer fail the job in seconds."""


# ---------------------------------------------------------------------------------------------
# process group, device, threads


def collective_timeout() -> timedelta:
    """``$TORCHYARD_COLLECTIVE_TIMEOUT_SECONDS``, else :data:`COLLECTIVE_TIMEOUT`."""
    raw = os.environ.get(TIMEOUT_ENV)
    if not raw:
        return COLLECTIVE_TIMEOUT
    try:
        return timedelta(seconds=float(raw))
    except ValueError as exc:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from exc


def pick_device(local_rank: int) -> torch.device:
    """cuda:<local rank> when CUDA is present (and made current), else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    return device


def init_distributed(env: WorkerEnv, timeout: timedelta | None = None) -> torch.device:
    """Initialise the default process group (gloo on CPU, nccl + gloo on CUDA) and return this
    rank's device; ``timeout`` bounds every collective (torch's default when None)."""
    device = pick_device(env.local_rank)
    cuda = device.type == "cuda"
    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
        if env.is_distributed:
            dist.init_process_group(
                backend=backend, device_id=device if cuda else None, timeout=timeout
            )
        else:  # plain `python -m torchyard_trainer`: a world of one, no rendezvous needed
            store = dist.HashStore()  # type: ignore[attr-defined,unused-ignore]
            dist.init_process_group(
                backend=backend, store=store, rank=0, world_size=1, timeout=timeout
            )
    if dist.get_world_size() != env.world_size:
        raise ConfigError(
            f"process group has {dist.get_world_size()} ranks, WORLD_SIZE={env.world_size}"
        )
    return device


def cpu_threads(cpu_request: Quantity | None, local_world_size: int) -> int:
    """Intra-op threads per process: OMP_NUM_THREADS if set, else the pod's CPU request (or the
    machine's cores) shared by its processes. Oversubscribed OpenMP spinning costs 10-30× on
    small models, so this errs low."""
    if os.environ.get("OMP_NUM_THREADS"):
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    cores: float = float(os.cpu_count() or 1)
    if cpu_request is not None:
        text = str(cpu_request)
        cores = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    return max(1, int(cores // max(1, local_world_size)))


def use_cpu_threads(cpu_request: Quantity | None, local_world_size: int) -> int:
    """Set this process's intra-op threads to :func:`cpu_threads` (torch's default is every
    core of the node, oversubscribing a pod with a CPU request); returns the count."""
    n = cpu_threads(cpu_request, local_world_size)
    torch.set_num_threads(n)
    return n


# ---------------------------------------------------------------------------------------------
# exceptions → exit codes (the Job's podFailurePolicy reads them)


def is_peer_failure(exc: BaseException) -> bool:
    """A collective failed because another rank died: retryable, not this rank's fault."""
    if isinstance(exc, dist.DistError) and not isinstance(exc, dist.DistStoreError):
        return True
    text = str(exc)
    markers = (
        "Connection closed by peer",
        "Connection reset by peer",
        "Broken pipe",
        "NCCL communicator was aborted",
        "gloo/transport",
        "ProcessGroupGloo",
    )
    return isinstance(exc, RuntimeError) and any(m in text for m in markers)


def exit_code_for(exc: BaseException) -> int:
    """The exit code of a worker that raised ``exc``: 2 invalid spec, 130 interrupted, 200 a
    peer rank lost (retryable), a ``SystemExit``'s own code, 1 anything else."""
    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else ExitCode.ERROR
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    if isinstance(exc, Preempted):  # stopped on SIGTERM after checkpointing
        return ExitCode.PREEMPTED
    if isinstance(exc, SpecError):  # ConfigError, a bad storage URI
        return ExitCode.CONFIG
    return ExitCode.PEER_LOST if is_peer_failure(exc) else ExitCode.ERROR
