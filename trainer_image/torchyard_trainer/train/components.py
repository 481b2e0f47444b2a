"""The parts a TrainingJob plugs into the shared loop (``torchyard_trainer.loop``): its batches
(a data-parallel shard with gradient accumulation), metrics and the progress log, evaluation at
each epoch's end, resumable checkpoints and the restart tests' fault injection."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch.optim.lr_scheduler import LambdaLR

from torchyard.api.contract import Env
from torchyard_trainer.artifacts import spec_hash
from torchyard_trainer.checkpoint import CheckpointManager, latest_checkpoint
from torchyard_trainer.data import Dataset, ShardedBatches
from torchyard_trainer.env import ConfigError
from torchyard_trainer.loop import Batch, Component, LoopState
from torchyard_trainer.models import flops_per_token

if TYPE_CHECKING:
    from torchyard.api.training import TrainingJob
    from torchyard_trainer.train.base import Runtime, Strategy

log = logging.getLogger("torchyard_trainer")

# Dense bf16 peak FLOP/s of GPUs we know (for MFU); override with TORCHYARD_PEAK_FLOPS.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "L40S": 362e12}

# Spec fields that may change between attempts without changing what is trained (checkpoints
# are layout-independent, so even the number of workers may change on resume).
NOT_RECIPE = (
    "workers",
    "procsPerWorker",
    "resources",
    "image",
    "imagePullPolicy",
    "command",
    "env",
    "podMetadata",
    "runPolicy",
    "scheduling",
    "checkpoint",
    "output",
)


# ---------------------------------------------------------------------------------------------
# batches


class StepBatches:
    """This data-parallel rank's optimizer steps: ``gradAccumulationSteps`` micro-batches each,
    moved to the device (the move counts as data wait)."""

    def __init__(self, sharded: ShardedBatches, accum: int, device: torch.device) -> None:
        self.sharded = sharded
        self.accum = accum
        self.device = device

    @classmethod
    def build(cls, rt: Runtime, tensors: tuple[torch.Tensor, ...]) -> StepBatches:
        spec, dims = rt.spec, rt.dims
        dp_rank, _ = dims.coords(rt.rank)
        accum = spec.grad_accumulation_steps
        if spec.batch_size % (dims.dp * accum):
            raise ConfigError(
                f"batchSize={spec.batch_size} is not divisible by data-parallel ranks "
                f"({dims.dp}) × gradAccumulationSteps ({accum})"
            )
        micro_bs = spec.batch_size // (dims.dp * accum)
        batches = cls(ShardedBatches(tensors, micro_bs, dims.dp, dp_rank, spec.seed), accum,
                      rt.device)
        if batches.steps_per_epoch == 0:
            raise ConfigError(f"batchSize={spec.batch_size} is larger than one epoch of data")
        return batches

    @property
    def steps_per_epoch(self) -> int:
        return self.sharded.micro_steps_per_epoch // self.accum

    def epoch(self, epoch: int, skip_steps: int) -> Iterator[list[Batch]]:
        micro = self.sharded.epoch(epoch, skip_micro_steps=skip_steps * self.accum)
        for _ in range(skip_steps, self.steps_per_epoch):
            yield [
                tuple(t.to(self.device, non_blocking=True) for t in next(micro))
                for _ in range(self.accum)
            ]


# ---------------------------------------------------------------------------------------------
# metrics


def peak_flops(device: torch.device, precision: str) -> float | None:
    """Peak FLOP/s of this device for MFU: TORCHYARD_PEAK_FLOPS, else a known GPU's bf16 peak."""
    override = os.environ.get(Env.PEAK_FLOPS)
    if override:
        return float(override)
    if device.type != "cuda" or precision == "fp32":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


class Throughput:
    """samples/s, tokens/s and MFU of a log interval (all ranks together)."""

    def __init__(self, rt: Runtime, ds: Dataset, strategy: Strategy) -> None:
        self.batch_size = rt.spec.batch_size
        self.seq = ds.info.seq_len or 1
        self.lm = ds.info.task == "lm"
        fpt = flops_per_token(strategy.model, ds.info) if self.seq > 1 else None
        if fpt is not None and rt.dims.pp > 1:
            fpt = None  # this rank holds only part of the model; MFU is reported unsplit only
        self.flops_per_token = fpt
        self.peak = peak_flops(rt.device, rt.spec.precision)
        self.world_size = rt.env.world_size

    def __call__(self, steps: int, seconds: float) -> tuple[float, float | None, float | None]:
        sps = self.batch_size * steps / seconds
        tps = sps * self.seq if self.lm else None
        fpt, peak = self.flops_per_token, self.peak
        mfu = (tps * fpt / (peak * self.world_size)) if (tps and fpt and peak) else None
        return sps, tps, mfu


class StepLogger(Component):
    """Every ``log_every`` steps and at each epoch's end: one small all-reduce (the loss over
    the ranks + "is my async checkpoint write done"), the gauges and a ``step`` event; commits
    the in-flight checkpoint once every rank's write is done."""

    def __init__(
        self, rt: Runtime, ds: Dataset, strategy: Strategy, sched: LambdaLR, total: int,
        ckpt: CheckpointManager,
    ) -> None:
        self.rt, self.sched, self.total, self.ckpt = rt, sched, total, ckpt
        self.m = rt.metrics
        self.throughput = Throughput(rt, ds, strategy)
        self.log_every = max(1, min(50, total // 50))  # one small all-reduce per interval
        self.loss_acc = torch.zeros((), device=rt.device)
        self.weight_acc = 0.0
        self.t_last, self.steps_since, self.data_wait = time.perf_counter(), 0, 0.0
        self.last_loss: float | None = None
        """Mean loss over all ranks of the last log interval."""

    def start(
        self, step: int, steps_per_epoch: int, resumed_from: dict[str, Any] | None, ds: Dataset
    ) -> None:
        """The ``start`` event; the first interval's clock starts now."""
        spec, env, dims = self.rt.spec, self.rt.env, self.rt.dims
        self.m.event(
            "start",
            totalSteps=self.total,
            epochs=spec.epochs,
            stepsPerEpoch=steps_per_epoch,
            startStep=step,
            restarts=env.restart_count,
            worldSize=env.world_size,
            dp=dims.dp,
            pp=dims.pp,
            strategy=spec.strategy,
            resumedFrom=resumed_from,
            data=ds.extra,
        )
        self.t_last = time.perf_counter()

    def after_step(self, state: LoopState) -> None:
        self.steps_since += 1
        self.data_wait += state.data_wait
        if state.weight and state.loss is not None:
            self.loss_acc += state.loss.detach().float()
            self.weight_acc += state.weight
        if state.step % self.log_every == 0 or state.end_of_epoch:
            self._log(state)

    def epoch_end(self, state: LoopState) -> None:
        self.t_last = time.perf_counter()  # evaluation and checkpoints are not step time

    def _log(self, state: LoopState) -> None:
        flags = torch.tensor(
            [float(self.loss_acc), self.weight_acc, float(not self.ckpt.write_done)]
        )
        dist.all_reduce(flags)
        dt = time.perf_counter() - self.t_last
        lsum, wsum, _ = (float(v) for v in flags.tolist())
        self.last_loss = lsum / wsum if wsum > 0 else None
        self._publish(state, dt)
        if flags[2].item() == 0:
            self.ckpt.wait()  # everyone's background write is done: commit it now
        self.loss_acc.zero_()
        self.weight_acc, self.steps_since, self.data_wait = 0.0, 0, 0.0
        self.t_last = time.perf_counter()

    def _publish(self, state: LoopState, dt: float) -> None:
        m, n = self.m, self.steps_since
        sps, tps, mfu = self.throughput(n, dt)
        lr = self.sched.get_last_lr()[0]
        m.set(m.loss, self.last_loss)
        m.set(m.samples_ps, sps)
        m.set(m.tokens_ps, tps)
        m.set(m.step_time, dt / n)
        m.set(m.data_wait, self.data_wait / n)
        m.set(m.mfu, mfu)
        m.set(m.step, state.step)
        m.set(m.epoch, state.epoch)
        m.set(m.lr, float(lr))
        m.observe(m.step_hist, dt / n)
        if self.rt.device.type == "cuda":
            m.set(m.gpu_mem, torch.cuda.max_memory_allocated(self.rt.device))
        m.event(
            "step",
            epoch=state.epoch,
            step=state.step,
            totalSteps=state.total,
            loss=self.last_loss,
            lr=lr,
            samplesPerSecond=round(sps, 2),
            tokensPerSecond=None if tps is None else round(tps, 1),
            stepTime=round(dt / n, 6),
            dataWait=round(self.data_wait / n, 6),
            mfu=None if mfu is None else round(mfu, 4),
        )


# ---------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def evaluate(rt: Runtime, ds: Dataset, strategy: Strategy) -> dict[str, float]:
    """valLoss and accuracy over the whole validation set (every rank's share, all-reduced)."""
    if len(ds.val_x) == 0:
        return {}
    totals = strategy.evaluate(ds.val_x, ds.val_y).to("cpu", torch.float64)
    dist.all_reduce(totals)
    loss_sum, correct, count = totals.tolist()
    if count == 0:
        return {}
    out = {"valLoss": loss_sum / count, "accuracy": correct / count}
    rt.metrics.set(rt.metrics.val_loss, out["valLoss"])
    rt.metrics.set(rt.metrics.accuracy, out["accuracy"])
    return out


class Evaluator(Component):
    """Evaluates at the end of every epoch (an ``eval`` event); ``final()`` is the last result
    (or a fresh evaluation when the run had no step left to do)."""

    def __init__(self, rt: Runtime, ds: Dataset, strategy: Strategy) -> None:
        self.rt, self.ds, self.strategy = rt, ds, strategy
        self.last: dict[str, float] = {}

    def after_step(self, state: LoopState) -> None:
        if state.end_of_epoch:
            self.last = evaluate(self.rt, self.ds, self.strategy)
            self.rt.metrics.event("eval", epoch=state.epoch, step=state.step, **self.last)

    def final(self) -> dict[str, float]:
        return self.last or evaluate(self.rt, self.ds, self.strategy)


# ---------------------------------------------------------------------------------------------
# checkpoints


def recipe_hash(job: TrainingJob) -> str:
    """Hash of what defines the training run; a checkpoint resumes only the same recipe."""
    spec = job.spec.model_dump(by_alias=True, exclude_none=True, mode="json")
    recipe = {k: v for k, v in spec.items() if k not in NOT_RECIPE}
    return spec_hash({"name": job.metadata.name, **recipe})[:16]


class Checkpointer(Component):
    """Resumes from the newest checkpoint of the same recipe, saves every ``everySteps`` (else
    every epoch) and always the final state."""

    def __init__(
        self, rt: Runtime, strategy: Strategy, sched: LambdaLR, steps_per_epoch: int
    ) -> None:
        self.rt, self.strategy, self.sched = rt, strategy, sched
        self.steps_per_epoch = steps_per_epoch
        self.recipe = recipe_hash(rt.job)
        cfg = rt.spec.checkpoint
        self.every = cfg.every_steps
        self.manager = CheckpointManager(
            rt.checkpoint_root, cfg.keep, cfg.async_save, rt.rank, on_commit=self._on_commit
        )
        self.saved_step = -1
        self.resumed_from: dict[str, Any] | None = None
        self.last_save_seconds: float | None = None
        """How long the last committed save took (rank 0 only): what a save on SIGTERM is
        expected to take (train/preempt.py)."""

    def _on_commit(self, step: int, path: Path, seconds: float) -> None:
        self.last_save_seconds = seconds
        m = self.rt.metrics
        m.observe(m.ckpt, seconds)
        m.event("checkpoint", step=step, uri=str(path), seconds=round(seconds, 4))

    def _newest_of_this_recipe(self) -> tuple[int, Path] | None:
        """Rank 0's view of the store; checkpoints of another recipe are removed."""
        root = self.rt.checkpoint_root
        found = latest_checkpoint(root) if self.rt.rank == 0 else None
        if found is None:
            return None
        theirs = torch.load(found[1] / "trainer.pt", weights_only=True).get("recipe")
        if theirs == self.recipe:
            return found
        # a different job that had the same name: its checkpoints are not ours to resume
        log.warning(
            "checkpoints in %s belong to a different recipe (%s != %s): removing them",
            root,
            theirs,
            self.recipe,
        )
        for p in root.glob("step-*"):
            shutil.rmtree(p, ignore_errors=True)
        return None

    def resume(self) -> int:
        """Load the newest checkpoint every rank agrees on; returns the step to start from."""
        found = self._newest_of_this_recipe()
        # every rank must agree on what to resume from (rank 0's view of the shared store decides)
        choice = [found[0] if found else -1]
        dist.broadcast_object_list(choice, src=0)
        if choice[0] < 0:
            return 0
        path = self.rt.checkpoint_root / f"step-{choice[0]:09d}"
        state = self.manager.load(path, self.strategy.model, self.strategy.optimizer)
        self.sched.load_state_dict(state["scheduler"])
        step = int(state["step"])
        self.saved_step = step
        self.resumed_from = {"step": step, "uri": str(path)}
        log.info("rank %d resumed from %s (step %d)", self.rt.rank, path, step)
        return step

    def trainer_state(self, step: int) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "step": step,
            "epoch": step // self.steps_per_epoch,
            "stepsPerEpoch": self.steps_per_epoch,
            "scheduler": self.sched.state_dict(),
            "worldSize": self.rt.env.world_size,
        }

    def save(self, step: int) -> None:
        s = self.strategy
        self.manager.save(step, s.model, s.optimizer, self.trainer_state(step))
        self.saved_step = step

    def after_step(self, state: LoopState) -> None:
        every = self.every
        due = state.step % every == 0 if every else state.step % self.steps_per_epoch == 0
        if due and state.step < state.total:
            self.save(state.step)

    def finish(self, step: int) -> None:
        """The final state is always checkpointed (a restart after this only re-exports)."""
        if self.saved_step != step:
            self.save(step)
        self.manager.close()


# ---------------------------------------------------------------------------------------------
# fault injection


class FaultInjector(Component):
    """Test hook: TORCHYARD_FAULT_KILL_AT_STEP / _RANK make one rank SIGKILL itself after that
    optimizer step on the first attempt, exactly like an OOM kill or a lost node."""

    def __init__(self, rt: Runtime) -> None:
        self.rank, self.restarts = rt.rank, rt.env.restart_count

    def after_step(self, state: LoopState) -> None:
        at = os.environ.get(Env.FAULT_KILL_AT_STEP)
        if not at or self.restarts != 0 or state.step != int(at):
            return
        if self.rank == int(os.environ.get(Env.FAULT_KILL_RANK, "0")):
            log.warning("fault injection: rank %d kills itself at step %d", self.rank, state.step)
            os.kill(os.getpid(), signal.SIGKILL)
