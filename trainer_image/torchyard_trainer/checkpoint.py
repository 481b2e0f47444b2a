"""Atomic, resumable checkpoints with torch.distributed.checkpoint (DCP).

Layout under the checkpoint root::

    step-000000120/          a complete checkpoint (only ever created by a rename)
      .metadata, __*.distcp    DCP: model + optimizer state, keyed by parameter FQN
      trainer.pt             step, epoch, LR-schedule state, data position (rank 0)
      rng-<rank>.pt          each rank's CPU/CUDA RNG state
    .tmp-step-000000140/     being written; ignored by readers, removed by the next save

A checkpoint becomes visible only after every rank has finished writing and rank 0 has fsynced
the directory and renamed it into place (rename is atomic), so a kill at any moment leaves the
newest *complete* checkpoint intact. The newest ``keep`` checkpoints are kept.

Asynchronous saves stage the state to CPU memory and write it in a background thread over a
dedicated gloo process group (so they never interleave with training collectives); the rename
happens at the next save or at the end, once every rank's write has finished.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint import state_dict_loader, state_dict_saver
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_state_dict,
)

from torchyard_trainer.storage import fsync_dir, fsync_tree

STEP_DIR = re.compile(r"^step-(\d{9})$")


def step_dir_name(step: int) -> str:
    return f"step-{step:09d}"


def latest_checkpoint(root: Path) -> tuple[int, Path] | None:
    """The newest complete checkpoint under ``root`` (step, path), or None."""
    if not root.is_dir():
        return None
    found = []
    for p in root.iterdir():
        m = STEP_DIR.match(p.name)
        if m and (p / ".metadata").is_file() and (p / "trainer.pt").is_file():
            found.append((int(m.group(1)), p))
    return max(found) if found else None


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


@dataclass
class _Pending:
    future: Future[Any] | Any
    tmp: Path
    step: int
    started: float



def _swap_in(tmp: Path, final: Path) -> None:
    """Move the written ``tmp`` to ``final``. An existing ``final`` (the same step saved again
    after a restart: a stop right after the resume lands on it) is renamed aside and removed
    only once the new one is in place. Removing it first left a window, as long as the
    removal of a whole checkpoint, in which a stop lost the checkpoint the run resumed from."""
    old = final.with_name(f".old-{final.name}")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)

class CheckpointManager:
    """Saves and restores model + optimizer + trainer state atomically."""

    def __init__(
        self,
        root: Path,
        keep: int,
        async_save: bool,
        rank: int,
        on_commit: Callable[[int, Path, float], None] | None = None,
    ) -> None:
        self.root = root
        self.keep = keep
        self.rank = rank
        self.on_commit = on_commit
        self.async_save = async_save and dist.is_initialized()
        self._pending: _Pending | None = None
        self._pg: Any = None
        if self.async_save:
            # Background saves get their own gloo group: collectives issued from the writer
            # thread must never interleave with the training collectives of the main thread.
            self._pg = dist.new_group(backend="gloo")
        self.last_committed: tuple[int, Path] | None = (
            latest_checkpoint(root) if rank == 0 else None
        )

    # -- save ----------------------------------------------------------------------------------

    def save(
        self,
        step: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        trainer_state: dict[str, Any],
    ) -> None:
        self.wait()
        started = time.perf_counter()
        tmp = self.root / f".tmp-{step_dir_name(step)}"
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in self.root.glob(".tmp-step-*"):
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier()
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        torch.save(rng_state(), tmp / f"rng-{self.rank}.pt")
        if self.rank == 0:
            torch.save(trainer_state, tmp / "trainer.pt")
        if self.async_save:
            fut = state_dict_saver.async_save(state, checkpoint_id=str(tmp), process_group=self._pg)
            self._pending = _Pending(fut, tmp, step, started)
        else:
            state_dict_saver.save(state, checkpoint_id=str(tmp))
            self._pending = _Pending(None, tmp, step, started)
            self.wait()

    @property
    def write_done(self) -> bool:
        """No save's background write is still running (an in-flight save may still await its
        commit by :meth:`wait`)."""
        p = self._pending
        return bool(p is None or p.future is None or p.future.done())

    def wait(self) -> None:
        """Finish the in-flight save (if any) on every rank and commit it."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        if pending.future is not None:
            pending.future.result()
        _barrier()
        if self.rank == 0:
            final = self.root / step_dir_name(pending.step)
            fsync_tree(pending.tmp)
            _swap_in(pending.tmp, final)
            fsync_dir(self.root)
            self.last_committed = (pending.step, final)
            self._prune()
            if self.on_commit is not None:
                self.on_commit(pending.step, final, time.perf_counter() - pending.started)
        _barrier()

    def _prune(self) -> None:
        steps = sorted(
            (int(m.group(1)), p) for p in self.root.iterdir() if (m := STEP_DIR.match(p.name))
        )
        for _, p in steps[: max(0, len(steps) - self.keep)]:
            shutil.rmtree(p, ignore_errors=True)

    # -- load ----------------------------------------------------------------------------------

    def load(
        self, path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None
    ) -> dict[str, Any]:
        """Restore model (+ optimizer, + this rank's RNG) from ``path``; returns trainer state."""
        if optimizer is not None:
            model_sd, optim_sd = get_state_dict(model, optimizer)
            state: dict[str, Any] = {"model": model_sd, "optim": optim_sd}
        else:
            state = {"model": get_state_dict(model, [])[0]}
        state_dict_loader.load(state, checkpoint_id=str(path))
        set_state_dict(
            model,
            optimizer if optimizer is not None else [],
            model_state_dict=state["model"],
            optim_state_dict=state.get("optim", {}),
            options=StateDictOptions(strict=True),
        )
        rng_file = path / f"rng-{self.rank}.pt"
        if rng_file.is_file():  # absent when the world size changed: keep the fresh seed
            set_rng_state(torch.load(rng_file, weights_only=True))
        return dict(torch.load(path / "trainer.pt", weights_only=True))

    def close(self) -> None:
        self.wait()


def load_model_weights(path: Path, model: torch.nn.Module) -> None:
    """Load only the model part of a DCP checkpoint into a plain (single-process) module."""
    sd = {"model": model.state_dict()}
    state_dict_loader.load(sd, checkpoint_id=str(path), no_dist=True)
    model.load_state_dict(sd["model"])


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
