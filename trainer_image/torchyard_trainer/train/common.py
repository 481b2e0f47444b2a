"""What every strategy shares: process-group setup, the resumable training loop, evaluation,
checkpoints, metrics, and the model version + result file at the end."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn

from torchyard.api import contract
from torchyard.api.contract import Env
from torchyard_trainer.artifacts import spec_hash, write_model_version, write_result
from torchyard_trainer.checkpoint import CheckpointManager, latest_checkpoint
from torchyard_trainer.data import Dataset, ShardedBatches, load_dataset
from torchyard_trainer.env import ConfigError, WorkerEnv
from torchyard_trainer.metrics import WorkerMetrics
from torchyard_trainer.models import flops_per_token
from torchyard_trainer.optim import build_scheduler
from torchyard_trainer.parallel import ParallelDims

log = logging.getLogger("torchyard_trainer")

# Dense bf16 peak FLOP/s of GPUs we know (for MFU); override with TORCHYARD_PEAK_FLOPS.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "L40S": 362e12}


@dataclass
class Runtime:
    """The process's place in the job, decided once at start-up."""

    env: WorkerEnv
    """Environment contract values."""
    job: Any
    """The validated TrainingJob (torchyard.api)."""
    device: torch.device
    """cuda:<local rank> when CUDA is present, else cpu."""
    dims: ParallelDims
    """dp × pp layout, validated against WORLD_SIZE."""
    metrics: WorkerMetrics
    """Prometheus endpoint + JSONL log."""
    model_store: str
    """URI of the model store root (output.storage or $TORCHYARD_OUTPUT_DIR/models)."""
    model_name: str
    """Name of the produced model (output.modelName or the job name)."""
    checkpoint_root: Path
    """Local path of this job's checkpoint directory."""
    started: float = field(default_factory=time.time)
    """Wall-clock start of this attempt."""

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def spec(self) -> Any:
        return self.job.spec

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        if self.device.type != "cuda":
            return None  # bf16/fp16 fall back to fp32 on CPU (documented in the API)
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.spec.precision)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        dtype = self.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)


class Strategy(Protocol):
    """One training strategy on top of the shared loop."""

    model: nn.Module
    """This rank's part of the model (full FQNs): what is checkpointed."""
    optimizer: torch.optim.Optimizer
    """Optimizer over ``model``'s parameters."""

    def train_tensors(self, ds: Dataset) -> tuple[torch.Tensor, ...]:
        """The tensors the training batches are cut from."""
        ...

    def train_step(self, micro: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, float]:
        """One optimizer step over ``micro`` (the accumulation micro-batches of this rank);
        returns (mean loss as a 0-d tensor, weight: 1 if this rank computed a loss else 0)."""
        ...

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """[loss sum, correct, count] of this rank's share of the evaluation set."""
        ...

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The whole model's weights on rank 0 (None elsewhere); a collective."""
        ...

    def lineage(self) -> dict[str, Any]:
        """Strategy-specific lineage for the model card (e.g. the teacher)."""
        ...


# ---------------------------------------------------------------------------------------------
# set-up


def cpu_threads(cpu_request: Any, local_world_size: int) -> int:
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


def init_distributed(env: WorkerEnv, timeout: timedelta | None = None) -> torch.device:
    """Initialise the default process group (gloo on CPU, nccl + gloo on CUDA); ``timeout``
    bounds every collective (torch's default when None)."""
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", env.local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
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


def build_runtime(env: WorkerEnv, job: Any) -> Runtime:
    spec = job.spec
    pp = spec.pipeline.stages if spec.strategy == "pipeline" and spec.pipeline else 1
    virtual = (
        spec.pipeline.virtual_stages_per_rank
        if spec.strategy == "pipeline" and spec.pipeline
        else 1
    )
    dims = ParallelDims.build(env.world_size, pp=pp, virtual_stages=virtual)
    expected = spec.workers * spec.procs_per_worker
    if expected != env.world_size:
        log.warning(
            "WORLD_SIZE=%d differs from workers × procsPerWorker = %d; using WORLD_SIZE",
            env.world_size,
            expected,
        )
    device = init_distributed(env)
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads(spec.resources.cpu, env.local_world_size))
    name = job.metadata.name
    store = spec.output.storage or f"file://{env.output_dir / 'models'}"
    model_name = spec.output.model_name or name
    ns = env.namespace or job.metadata.namespace or "default"
    try:
        shared_ckpt_root = contract.checkpoint_dir(
            checkpoint_storage=spec.checkpoint.storage,
            output_storage=store,
            namespace=ns,
            job_name=name,
            pvc_root=env.pvc_root,
        )
    except contract.StorageURIError as exc:
        raise ConfigError(str(exc)) from exc
    ckpt_root = shared_ckpt_root or env.output_dir / "checkpoints" / ns / name
    env.output_dir.mkdir(parents=True, exist_ok=True)
    metrics = WorkerMetrics(
        job=env.job_name or name,
        namespace=ns,
        rank=env.rank,
        port=None if env.metrics_port is None else env.metrics_port + env.local_rank,
        jsonl=env.output_dir / "progress.jsonl" if env.rank == 0 else None,
    )
    metrics.set(metrics.restarts, env.restart_count)
    return Runtime(env, job, device, dims, metrics, store, model_name, ckpt_root)


def _peak_flops(device: torch.device, precision: str) -> float | None:
    override = os.environ.get(Env.PEAK_FLOPS)
    if override:
        return float(override)
    if device.type != "cuda" or precision == "fp32":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def _maybe_inject_fault(rt: Runtime, step: int) -> None:
    """Test hook: TORCHYARD_FAULT_KILL_AT_STEP / _RANK make one rank SIGKILL itself after that
    optimizer step on the first attempt, exactly like an OOM kill or a lost node."""
    at = os.environ.get(Env.FAULT_KILL_AT_STEP)
    if not at or rt.env.restart_count != 0 or step != int(at):
        return
    if rt.rank == int(os.environ.get(Env.FAULT_KILL_RANK, "0")):
        log.warning("fault injection: rank %d kills itself at step %d", rt.rank, step)
        os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------------------------------
# the loop


def _micro_steps(
    batches: ShardedBatches, epoch: int, skip: int
) -> Iterator[tuple[torch.Tensor, ...]]:
    yield from batches.epoch(epoch, skip_micro_steps=skip)


def run_training(rt: Runtime, ds: Dataset, strategy: Strategy) -> dict[str, Any]:
    """Train to the end (resuming from the newest checkpoint), export, write the result."""
    spec = rt.spec
    env = rt.env
    dims = rt.dims
    dp_rank, _ = dims.coords(rt.rank)
    accum = spec.grad_accumulation_steps
    if spec.batch_size % (dims.dp * accum):
        raise ConfigError(
            f"batchSize={spec.batch_size} is not divisible by data-parallel ranks ({dims.dp}) × "
            f"gradAccumulationSteps ({accum})"
        )
    micro_bs = spec.batch_size // (dims.dp * accum)
    batches = ShardedBatches(strategy.train_tensors(ds), micro_bs, dims.dp, dp_rank, spec.seed)
    steps_per_epoch = batches.micro_steps_per_epoch // accum
    if steps_per_epoch == 0:
        raise ConfigError(f"batchSize={spec.batch_size} is larger than one epoch of data")
    total = spec.epochs * steps_per_epoch
    if spec.max_steps is not None:
        total = min(total, spec.max_steps)
    sched = build_scheduler(strategy.optimizer, spec.lr_schedule, spec.optimizer.lr, total)
    m = rt.metrics

    def on_commit(step: int, path: Path, seconds: float) -> None:
        m.observe(m.ckpt, seconds)
        m.event("checkpoint", step=step, uri=str(path), seconds=round(seconds, 4))

    ckpt = CheckpointManager(
        rt.checkpoint_root,
        spec.checkpoint.keep,
        spec.checkpoint.async_save,
        rt.rank,
        on_commit=on_commit,
    )
    step = 0
    saved_step = -1
    resumed_from = None
    recipe = recipe_hash(rt.job)
    found = latest_checkpoint(rt.checkpoint_root) if rt.rank == 0 else None
    if found is not None:
        theirs = torch.load(found[1] / "trainer.pt", weights_only=True).get("recipe")
        if theirs != recipe:
            # a different job that had the same name: its checkpoints are not ours to resume
            log.warning(
                "checkpoints in %s belong to a different recipe (%s != %s): removing them",
                rt.checkpoint_root,
                theirs,
                recipe,
            )
            for p in rt.checkpoint_root.glob("step-*"):
                shutil.rmtree(p, ignore_errors=True)
            found = None
    # every rank must agree on what to resume from (rank 0's view of the shared store decides)
    choice = [found[0] if found else -1]
    dist.broadcast_object_list(choice, src=0)
    if choice[0] >= 0:
        path = rt.checkpoint_root / f"step-{choice[0]:09d}"
        state = ckpt.load(path, strategy.model, strategy.optimizer)
        sched.load_state_dict(state["scheduler"])
        step = int(state["step"])
        saved_step = step
        resumed_from = {"step": step, "uri": str(path)}
        log.info("rank %d resumed from %s (step %d)", rt.rank, path, step)

    seq = ds.info.seq_len or 1
    fpt = flops_per_token(strategy.model, ds.info) if seq > 1 else None
    if fpt is not None and dims.pp > 1:
        fpt = None  # this rank holds only part of the model; MFU is reported unsplit only
    peak = _peak_flops(rt.device, spec.precision)
    log_every = max(1, min(50, total // 50))  # one small all-reduce per interval
    m.event(
        "start",
        totalSteps=total,
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

    def trainer_state(step: int) -> dict[str, Any]:
        return {
            "recipe": recipe,
            "step": step,
            "epoch": step // steps_per_epoch,
            "stepsPerEpoch": steps_per_epoch,
            "scheduler": sched.state_dict(),
            "worldSize": env.world_size,
        }

    def should_save(step: int) -> bool:
        every = spec.checkpoint.every_steps
        return bool(step % every == 0) if every else step % steps_per_epoch == 0

    last_eval: dict[str, float] = {}
    loss_acc = torch.zeros((), device=rt.device)
    weight_acc = 0.0
    t_last, steps_since, data_wait = time.perf_counter(), 0, 0.0
    last_loss: float | None = None
    while step < total:
        epoch = step // steps_per_epoch
        in_epoch = step % steps_per_epoch
        it = _micro_steps(batches, epoch, in_epoch * accum)
        while step < total and step // steps_per_epoch == epoch:
            t0 = time.perf_counter()
            micro = [
                tuple(t.to(rt.device, non_blocking=True) for t in next(it)) for _ in range(accum)
            ]
            data_wait += time.perf_counter() - t0
            loss, weight = strategy.train_step(micro)
            sched.step()
            step += 1
            steps_since += 1
            if weight:
                loss_acc += loss.detach().float()
                weight_acc += weight
            end_of_epoch = step % steps_per_epoch == 0 or step == total
            if step % log_every == 0 or end_of_epoch:
                # one small all-reduce per log interval: loss over ranks + "is my async save done"
                flags = torch.tensor([float(loss_acc), weight_acc, float(not ckpt_done(ckpt))])
                dist.all_reduce(flags)
                now = time.perf_counter()
                dt = now - t_last
                lsum, wsum, _ = (float(v) for v in flags.tolist())
                last_loss = lsum / wsum if wsum > 0 else None
                sps = spec.batch_size * steps_since / dt
                tps = sps * seq if ds.info.task == "lm" else None
                mfu = (tps * fpt / (peak * env.world_size)) if (tps and fpt and peak) else None
                m.set(m.loss, last_loss)
                m.set(m.samples_ps, sps)
                m.set(m.tokens_ps, tps)
                m.set(m.step_time, dt / steps_since)
                m.set(m.data_wait, data_wait / steps_since)
                m.set(m.mfu, mfu)
                m.set(m.step, step)
                m.set(m.epoch, epoch)
                m.set(m.lr, float(sched.get_last_lr()[0]))
                m.observe(m.step_hist, dt / steps_since)
                if rt.device.type == "cuda":
                    m.set(m.gpu_mem, torch.cuda.max_memory_allocated(rt.device))
                m.event(
                    "step",
                    epoch=epoch,
                    step=step,
                    totalSteps=total,
                    loss=last_loss,
                    lr=sched.get_last_lr()[0],
                    samplesPerSecond=round(sps, 2),
                    tokensPerSecond=None if tps is None else round(tps, 1),
                    stepTime=round(dt / steps_since, 6),
                    dataWait=round(data_wait / steps_since, 6),
                    mfu=None if mfu is None else round(mfu, 4),
                )
                if flags[2].item() == 0:
                    ckpt.wait()  # everyone's background write is done: commit it now
                loss_acc.zero_()
                weight_acc, steps_since, data_wait = 0.0, 0, 0.0
                t_last = time.perf_counter()
            if end_of_epoch:
                last_eval = evaluate(rt, ds, strategy)
                m.event("eval", epoch=epoch, step=step, **last_eval)
            if should_save(step) and step < total:
                ckpt.save(step, strategy.model, strategy.optimizer, trainer_state(step))
                saved_step = step
            _maybe_inject_fault(rt, step)
            if end_of_epoch:
                t_last = time.perf_counter()
    # the final state is always checkpointed (a restart after this point only re-exports)
    if saved_step != step:
        ckpt.save(step, strategy.model, strategy.optimizer, trainer_state(step))
    ckpt.close()
    if not last_eval:
        last_eval = evaluate(rt, ds, strategy)
    return finish(rt, ds, strategy, step, total, last_loss, last_eval, ckpt)


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


def recipe_hash(job: Any) -> str:
    """Hash of what defines the training run; a checkpoint resumes only the same recipe."""
    spec = job.spec.model_dump(by_alias=True, exclude_none=True, mode="json")
    recipe = {k: v for k, v in spec.items() if k not in NOT_RECIPE}
    return spec_hash({"name": job.metadata.name, **recipe})[:16]


def ckpt_done(ckpt: CheckpointManager) -> bool:
    p = ckpt._pending
    return bool(p is None or p.future is None or p.future.done())


@torch.no_grad()
def evaluate(rt: Runtime, ds: Dataset, strategy: Strategy) -> dict[str, float]:
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


def finish(
    rt: Runtime,
    ds: Dataset,
    strategy: Strategy,
    step: int,
    total: int,
    loss: float | None,
    evals: dict[str, float],
    ckpt: CheckpointManager,
) -> dict[str, Any]:
    spec = rt.spec
    state = strategy.full_state_dict()  # collective
    result: dict[str, Any] = {}
    if rt.rank == 0:
        assert state is not None
        metrics = {
            k: v for k, v in {"loss": loss, **evals}.items() if v is not None and math.isfinite(v)
        }
        spec_dict = rt.job.spec.model_dump(by_alias=True, exclude_none=True, mode="json")
        card = {
            "specHash": spec_hash(spec_dict),
            "model": spec_dict["model"],
            "data": {**spec_dict["data"], **ds.extra},
            "metrics": metrics,
            "lineage": {
                "job": rt.job.metadata.name,
                "namespace": rt.metrics.labels["namespace"],
                "kind": "TrainingJob",
                "strategy": spec.strategy,
                "steps": step,
                "restarts": rt.env.restart_count,
                "worldSize": rt.env.world_size,
                "initCheckpoint": spec.model.checkpoint,
                **strategy.lineage(),
            },
        }
        card = write_model_version(
            rt.model_store, rt.env.pvc_root, rt.model_name, state, card, rt.env.output_dir
        )
        last = ckpt.last_committed
        result = {
            "status": "Succeeded",
            "job": rt.job.metadata.name,
            "strategy": spec.strategy,
            "step": step,
            "totalSteps": total,
            "epoch": spec.epochs,
            "metrics": metrics,
            "model": {k: card[k] for k in ("name", "version", "uri", "sha256")}
            | {"metrics": metrics},
            "lastCheckpoint": None
            if last is None
            else {
                "step": last[0],
                "uri": str(last[1]),
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
            "restarts": rt.env.restart_count,
            "worldSize": rt.env.world_size,
            "durationSeconds": round(time.time() - rt.started, 3),
            "progressLog": str(rt.env.output_dir / "progress.jsonl"),
        }
        write_result(rt.env.result_file, result)
        rt.metrics.event("end", status="Succeeded", metrics=metrics, model=result["model"])
    if dist.get_world_size() > 1:
        dist.barrier()
    return result


def setup_data(rt: Runtime) -> Dataset:
    return load_dataset(rt.spec.data, rt.spec.seed, rt.env.pvc_root, rt.env.output_dir / "cache")
