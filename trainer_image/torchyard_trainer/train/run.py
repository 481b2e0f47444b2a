"""The training run every strategy shares: the :class:`~torchyard_trainer.train.base.Runtime`
built once at start-up, the run on the shared loop (``torchyard_trainer.loop`` + the
components of ``train.components``), and the model version + result file at the end."""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

import torch.distributed as dist

from torchyard.api import contract
from torchyard_trainer.artifacts import spec_hash, write_model_version, write_result
from torchyard_trainer.checkpoint import CheckpointManager
from torchyard_trainer.data import Dataset, load_dataset
from torchyard_trainer.env import ConfigError, WorkerEnv
from torchyard_trainer.loop import run_loop
from torchyard_trainer.metrics import WorkerMetrics
from torchyard_trainer.optim import build_scheduler
from torchyard_trainer.parallel import ParallelDims
from torchyard_trainer.preempt import GracefulStop
from torchyard_trainer.runtime import init_distributed, use_cpu_threads
from torchyard_trainer.train.base import Runtime, Strategy
from torchyard_trainer.train.components import (
    Checkpointer,
    Evaluator,
    FaultInjector,
    StepBatches,
    StepLogger,
)

if TYPE_CHECKING:
    from torchyard.api.training import TrainingJob, TrainingJobSpec

log = logging.getLogger("torchyard_trainer")

def build_runtime(env: WorkerEnv, job: TrainingJob) -> Runtime:
    spec = job.spec
    if spec.init_from is not None:
        # The operator hands workers the version it resolved as model.checkpoint; a spec that
        # still names it was not resolved, and training from scratch instead would be silent.
        raise ConfigError(
            f"spec.initFrom.modelVersion {spec.init_from.model_version} is resolved only by "
            "the operator (aliases live in ModelVersion objects); run locally with "
            "model.checkpoint set to the version's URI"
        )
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
        use_cpu_threads(spec.resources.cpu, env.local_world_size)
    name = job.metadata.name
    store = spec.output.storage or f"file://{env.output_dir / 'models'}"
    model_name = spec.output.model_name or name
    ns = env.namespace or job.metadata.namespace or "default"
    shared_ckpt_root = contract.checkpoint_dir(
        checkpoint_storage=spec.checkpoint.storage,
        output_storage=store,
        namespace=ns,
        job_name=name,
        pvc_root=env.pvc_root,
    )
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


def total_steps(spec: TrainingJobSpec, steps_per_epoch: int) -> int:
    total = int(spec.epochs * steps_per_epoch)
    return total if spec.max_steps is None else min(total, spec.max_steps)


def run_training(rt: Runtime, ds: Dataset, strategy: Strategy) -> dict[str, Any]:
    """Train to the end (resuming from the newest checkpoint), export, write the result."""
    spec = rt.spec
    batches = StepBatches.build(rt, strategy.train_tensors(ds))
    total = total_steps(spec, batches.steps_per_epoch)
    sched = build_scheduler(strategy.optimizer, spec.lr_schedule, spec.optimizer.lr, total)
    checkpointer = Checkpointer(rt, strategy, sched, batches.steps_per_epoch)
    start = checkpointer.resume()
    stopper = GracefulStop(checkpointer)  # SIGTERM: all ranks checkpoint one step and exit
    logger = StepLogger(rt, ds, strategy, sched, total, checkpointer.manager)
    logger.start(start, batches.steps_per_epoch, checkpointer.resumed_from, ds)
    evaluator = Evaluator(rt, ds, strategy)
    state = run_loop(
        batches,
        strategy.train_step,
        sched,
        total,
        start_step=start,
        components=[logger, evaluator, checkpointer, FaultInjector(rt), stopper],
    )
    stopper.close()
    checkpointer.finish(state.step)
    evals = evaluator.final()
    ckpt = checkpointer.manager
    return finish(rt, ds, strategy, state.step, total, logger.last_loss, evals, ckpt)


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
                "initCheckpoint": rt.model_spec.checkpoint,
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
    return load_dataset(rt.data_spec, rt.spec.seed, rt.env.pvc_root, rt.env.output_dir / "cache")
