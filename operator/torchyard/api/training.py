"""TrainingJob: DDP, pipeline-parallel or knowledge-distillation training on N worker pods."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from torchyard.api.base import KubeModel, Rule, dump, sub
from torchyard.api.common import (
    ENV_RULE,
    Condition,
    DataSpec,
    EnvVar,
    ModelSpec,
    ModelVersionRef,
    ModelVersionStatus,
    ObjectMeta,
    OptimizerSpec,
    OutputSpec,
    PodMetadata,
    ResourceSpec,
    RunPolicy,
    SchedulingSpec,
    StorageUri,
)
from torchyard.api.constants import TRAINING_JOB_KIND
from torchyard.api.logarchive import DEFAULT_MAX_BYTES_PER_RANK
from torchyard.api.modelversion import VersionRefString
from torchyard.api.podtemplate import POD_TEMPLATE_DESCRIPTION, PodTemplateOverride

# On the teacher and on the trained model alike (both have a `model`).
NO_HUGGINGFACE_MODEL = Rule(
    cel="!has(self.model) || !has(self.model.huggingface)",
    message="a TrainingJob does not run huggingface models yet: compress or distill one with a "
    "CompressionJob (source.model.huggingface)",
    field_path=".model.huggingface",
    check=lambda owner: owner.model is None or owner.model.huggingface is None,
)


class LRScheduleSpec(KubeModel):
    """Learning-rate schedule, stepped once per optimizer step."""

    kind: Literal["constant", "step", "exponential", "cosine", "warmRestarts"] = "constant"
    """constant, step (×gamma every stepSize steps), exponential (×gamma every step),
    cosine (to minLr over the run) or warmRestarts (cosine restarted every restartPeriod)."""
    warmup_steps: int = Field(default=0, ge=0)
    """Linear warm-up from 0 to the peak lr over this many steps, before the schedule."""
    step_size: int | None = Field(default=None, ge=1)
    """Steps between decays (kind step)."""
    gamma: float = Field(default=0.1, gt=0.0, le=1.0)
    """Decay factor (kinds step and exponential)."""
    min_lr: float = Field(default=0.0, ge=0.0)
    """Floor of the cosine schedules."""
    restart_period: int | None = Field(default=None, ge=1)
    """Steps of the first cosine cycle (kind warmRestarts)."""
    period_multiplier: int = Field(default=1, ge=1, le=10)
    """Each warm-restart cycle is this many times longer than the previous one."""

    rules = (
        Rule(
            cel="self.kind != 'step' || has(self.stepSize)",
            message="kind step needs stepSize",
            field_path=".stepSize",
            check=lambda s: s.kind != "step" or s.step_size is not None,
        ),
        Rule(
            cel="self.kind != 'warmRestarts' || has(self.restartPeriod)",
            message="kind warmRestarts needs restartPeriod",
            field_path=".restartPeriod",
            check=lambda s: s.kind != "warmRestarts" or s.restart_period is not None,
        ),
    )


class PipelineSpec(KubeModel):
    """Pipeline parallelism with torch.distributed.pipelining."""

    stages: int = Field(ge=2, le=64)
    """Pipeline degree: ranks per pipeline. Must divide workers × procsPerWorker; the
    remaining factor is data parallelism across pipeline replicas."""
    microbatches: int = Field(default=4, ge=1, le=1024)
    """Microbatches each pipeline replica splits its batch into."""
    schedule: Literal["GPipe", "1F1B", "Interleaved1F1B"] = "1F1B"
    """Pipeline schedule."""
    virtual_stages_per_rank: int = Field(default=1, ge=1, le=8)
    """Model chunks per rank; at least 2 for Interleaved1F1B, exactly 1 otherwise."""

    rules = (
        Rule(
            cel="(self.schedule == 'Interleaved1F1B') == (self.virtualStagesPerRank >= 2)",
            message="Interleaved1F1B needs virtualStagesPerRank >= 2; other schedules need 1",
            field_path=".virtualStagesPerRank",
            check=lambda p: (p.schedule == "Interleaved1F1B") == (p.virtual_stages_per_rank >= 2),
        ),
        Rule(
            cel="self.schedule == 'GPipe' || self.microbatches >= self.stages",
            message="1F1B schedules need at least as many microbatches as stages",
            field_path=".microbatches",
            check=lambda p: p.schedule == "GPipe" or p.microbatches >= p.stages,
        ),
    )


class TeacherSpec(KubeModel):
    """The teacher of a distillation: a stored model version, a TrainingJob's output, or a
    model definition with weights."""

    model_ref: ModelVersionRef | None = None
    """A model version in the model store."""
    training_job_ref: str | None = Field(default=None, max_length=253)
    """Name of a TrainingJob (same namespace) whose produced model is the teacher."""
    model: ModelSpec | None = None
    """A model definition; its checkpoint is required."""

    rules = (
        Rule(
            cel="[has(self.modelRef), has(self.trainingJobRef), has(self.model)]"
            ".filter(x, x).size() == 1",
            message="set exactly one of modelRef, trainingJobRef or model",
            check=lambda t: (
                sum(x is not None for x in (t.model_ref, t.training_job_ref, t.model)) == 1
            ),
        ),
        Rule(
            cel="!has(self.model) || has(self.model.checkpoint)",
            message="a teacher model needs checkpoint (its trained weights)",
            field_path=".model.checkpoint",
            check=lambda t: t.model is None or t.model.checkpoint is not None,
        ),
        NO_HUGGINGFACE_MODEL,
    )


class DistillationSpec(KubeModel):
    """Knowledge distillation: the job's model is the student."""

    teacher: TeacherSpec
    """The teacher model (kept in eval mode, no gradients)."""
    temperature: float = Field(default=4.0, gt=0.0, le=100.0)
    """Softmax temperature T of the soft targets."""
    alpha: float = Field(default=0.7, ge=0.0, le=1.0)
    """Weight of the soft loss: alpha·T²·KL(soft) + (1 − alpha)·CE(hard)."""
    transfer_set: Literal["labeled", "unlabeled"] = "labeled"
    """labeled: only labeled samples; unlabeled: the soft loss also uses the unlabeled rest."""


class CheckpointSpec(KubeModel):
    """Checkpointing (torch.distributed.checkpoint, atomic, resumed after any restart)."""

    every_steps: int | None = Field(default=None, ge=1)
    """Checkpoint every N optimizer steps; at the end of every epoch when omitted."""
    keep: int = Field(default=3, ge=1, le=100)
    """Keep the newest N checkpoints."""
    storage: StorageUri | None = None
    """Checkpoint root URI; under the output store when omitted."""
    async_save: bool = True
    """Save asynchronously (training continues while the checkpoint is written)."""


class LogsSpec(KubeModel):
    """The worker log archive: each pod writes its output, as it runs, to
    `<output store>/.logs/<namespace>/<job>/attempt-<n>/rank-<r>.log` (file:// or pvc:// output
    stores only), so `torchyard logs --attempt N --rank R` reads it after the pods are gone."""

    max_bytes_per_rank: int = Field(default=DEFAULT_MAX_BYTES_PER_RANK, ge=0)
    """Bound of one pod's log per attempt; a longer log keeps its first half-bound (the head)
    and its newest quarter to half (the tail). 0 turns the archive off."""


class InitFromSpec(KubeModel):
    """Where the model's initial weights come from: fine-tuning a stored model version."""

    model_version: VersionRefString
    """A ModelVersion of this namespace as <model>@<alias> (e.g. digits-mlp@production) or
    <model>/v<N>; resolved when the job starts (it waits until the version exists and is not
    Missing), recorded in status.sourceVersion and as the parent of the version it produces.
    The weights must fit `model` (same architecture and args)."""


class TrainingJobSpec(KubeModel):
    """Desired state of a TrainingJob."""

    strategy: Literal["ddp", "pipeline", "distillation"] = "ddp"
    """Parallelism/training strategy."""
    workers: int = Field(default=1, ge=1, le=1024)
    """Worker pods (torchrun nodes)."""
    procs_per_worker: int = Field(default=1, ge=1, le=64)
    """Processes per pod (torchrun nproc_per_node); one per GPU on GPU nodes."""
    resources: ResourceSpec = sub(ResourceSpec)
    """Per-pod resources."""
    image: str | None = Field(default=None, max_length=1024)
    """Worker image; the released trainer image when omitted."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    """Image pull policy of the worker container."""
    command: list[str] | None = Field(default=None, min_length=1, max_length=256)
    """Bring-your-own command (e.g. ["torchrun", "train.py"]); gets the same env contract.
    Default: torchrun (exit-code-preserving wrapper) -m torchyard_trainer."""
    env: list[EnvVar] = Field(default_factory=list, max_length=128)
    """Extra environment of the worker container."""
    pod_metadata: PodMetadata = sub(PodMetadata)
    """Extra labels and annotations of the worker pods."""
    pod_template: PodTemplateOverride | None = Field(
        default=None, description=POD_TEMPLATE_DESCRIPTION
    )
    model: ModelSpec | None = None
    """The model to train (the student for distillation). Required unless `command` is set:
    the built-in trainer needs it; a user's own script may leave it out."""
    init_from: InitFromSpec | None = None
    """Start from a model version's weights (instead of model.checkpoint or a fresh init)."""
    data: DataSpec | None = None
    """Training and evaluation data. Required unless `command` is set (as `model`)."""
    optimizer: OptimizerSpec = sub(OptimizerSpec)
    """Optimizer."""
    lr_schedule: LRScheduleSpec = sub(LRScheduleSpec)
    """Learning-rate schedule."""
    epochs: int = Field(default=1, ge=1, le=100000)
    """Passes over the training data."""
    max_steps: int | None = Field(default=None, ge=1)
    """Stop after this many optimizer steps even if epochs are left."""
    batch_size: int = Field(default=64, ge=1, le=1048576)
    """Global batch size (over all data-parallel ranks and accumulation steps)."""
    grad_accumulation_steps: int = Field(default=1, ge=1, le=1024)
    """Micro-steps accumulated per optimizer step."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Compute precision (autocast on GPU; bf16/fp16 fall back to fp32 on CPU)."""
    compile: bool = False
    """Compile the model with torch.compile."""
    seed: int = Field(default=0, ge=0)
    """Random seed (model init, data order, splits)."""
    pipeline: PipelineSpec | None = None
    """Pipeline settings; required for strategy pipeline."""
    distillation: DistillationSpec | None = None
    """Distillation settings; required for strategy distillation."""
    checkpoint: CheckpointSpec = sub(CheckpointSpec)
    """Checkpointing."""
    output: OutputSpec = sub(OutputSpec)
    """Where the trained model version goes."""
    logs: LogsSpec = sub(LogsSpec)
    """The worker log archive (outlives the pods)."""
    run_policy: RunPolicy = sub(RunPolicy)
    """Retries, deadlines, cleanup, suspension."""
    scheduling: SchedulingSpec = sub(SchedulingSpec)
    """Placement and gang scheduling."""

    rules = (
        NO_HUGGINGFACE_MODEL,
        Rule(
            cel="has(self.command) || has(self.model)",
            message="model is required unless command is set (the built-in trainer needs it)",
            field_path=".model",
            check=lambda s: s.command is not None or s.model is not None,
        ),
        Rule(
            cel="!has(self.initFrom) || has(self.model)",
            message="initFrom needs model (the architecture the version's weights load into)",
            field_path=".initFrom",
            check=lambda s: s.init_from is None or s.model is not None,
        ),
        Rule(
            # Both are the initial weights: two sources would leave one silently unused.
            cel="!has(self.initFrom) || !has(self.model) || !has(self.model.checkpoint)",
            message="set at most one of initFrom.modelVersion and model.checkpoint (both are "
            "the initial weights)",
            field_path=".initFrom.modelVersion",
            check=lambda s: s.init_from is None or s.model is None or s.model.checkpoint is None,
        ),
        Rule(
            cel="has(self.command) || has(self.data)",
            message="data is required unless command is set (the built-in trainer needs it)",
            field_path=".data",
            check=lambda s: s.command is not None or s.data is not None,
        ),
        Rule(
            cel="(self.strategy == 'pipeline') == has(self.pipeline)",
            message="pipeline is required for strategy pipeline and only allowed with it",
            field_path=".pipeline",
            check=lambda s: (s.strategy == "pipeline") == (s.pipeline is not None),
        ),
        Rule(
            cel="(self.strategy == 'distillation') == has(self.distillation)",
            message="distillation (with a teacher) is required for strategy distillation "
            "and only allowed with it",
            field_path=".distillation",
            check=lambda s: (s.strategy == "distillation") == (s.distillation is not None),
        ),
        Rule(
            cel="!has(self.pipeline) || "
            "(self.workers * self.procsPerWorker) % self.pipeline.stages == 0",
            message="pipeline.stages must divide the world size workers × procsPerWorker",
            field_path=".pipeline.stages",
            check=lambda s: (
                s.pipeline is None or (s.workers * s.procs_per_worker) % s.pipeline.stages == 0
            ),
        ),
        Rule(
            # Only the built-in trainer (which needs a model) splits batchSize; a command
            # without a model never reads it.
            cel="has(self.pipeline) || !has(self.model) || "
            "self.batchSize % (self.workers * self.procsPerWorker * self.gradAccumulationSteps)"
            " == 0",
            message="batchSize must be divisible by workers × procsPerWorker × "
            "gradAccumulationSteps (the global batch is split evenly)",
            field_path=".batchSize",
            check=lambda s: (
                s.pipeline is not None
                or s.model is None
                or s.batch_size % (s.workers * s.procs_per_worker * s.grad_accumulation_steps) == 0
            ),
        ),
        Rule(
            cel="!has(self.pipeline) || "
            "(self.workers * self.procsPerWorker) % self.pipeline.stages != 0 || "
            "self.batchSize % ((self.workers * self.procsPerWorker / self.pipeline.stages)"
            " * self.pipeline.microbatches) == 0",
            message="batchSize must be divisible by (world size / pipeline.stages) × "
            "pipeline.microbatches",
            field_path=".batchSize",
            check=lambda s: (
                s.pipeline is None
                or (s.workers * s.procs_per_worker) % s.pipeline.stages != 0
                or s.batch_size
                % ((s.workers * s.procs_per_worker // s.pipeline.stages) * s.pipeline.microbatches)
                == 0
            ),
        ),
        Rule(
            cel="self.resources.gpu == 0 || self.procsPerWorker <= self.resources.gpu",
            message="procsPerWorker must not exceed resources.gpu (one process per GPU)",
            field_path=".procsPerWorker",
            check=lambda s: s.resources.gpu == 0 or s.procs_per_worker <= s.resources.gpu,
        ),
        ENV_RULE,
    )


class WorkerCounts(KubeModel):
    """Worker pods by state."""

    active: int = 0
    """Pods running or pending."""
    ready: int = 0
    """Pods running and ready."""
    succeeded: int = 0
    """Pods that exited 0."""
    failed: int = 0
    """Pods that failed (this attempt)."""


class Progress(KubeModel):
    """Training progress as rank 0 last reported it: live while the job runs (at most one
    write per job every few seconds, see docs/architecture.md), from its result at the end."""

    epoch: int | None = None
    """Current epoch (0-based)."""
    step: int | None = None
    """Optimizer steps done."""
    total_steps: int | None = None
    """Optimizer steps of the whole run."""
    loss: float | None = None
    """Latest training loss."""
    accuracy: float | None = None
    """Latest evaluation accuracy (0-1)."""
    samples_per_second: float | None = None
    """Training throughput over all ranks."""
    percent: float | None = Field(default=None, ge=0, le=100)
    """Share of totalSteps done (0-100)."""
    eta_seconds: int | None = Field(default=None, ge=0)
    """Estimated seconds left, at the step rate measured since the attempt's first report."""
    estimated_completion_time: str | None = None
    """When the run should end at that rate (RFC 3339)."""
    metrics: dict[str, float] | None = None
    """The newest values of the job's other reported metrics (learning rate, MFU, ...)."""
    last_update_time: str | None = None
    """When the operator received the report shown here (RFC 3339)."""


class CheckpointStatus(KubeModel):
    """The newest complete checkpoint."""

    step: int
    """Optimizer step of the checkpoint."""
    uri: str
    """Where it lives."""
    time: str | None = None
    """When it was completed (RFC 3339)."""


class LogArchiveStatus(KubeModel):
    """Where the workers' logs are archived (see spec.logs)."""

    uri: str
    """Archive root: attempt-<n>/rank-<r>.log under it."""
    attempts: int = Field(default=0, ge=0)
    """Attempts started so far (each has its folder attempt-0 … attempt-<attempts-1>)."""


class TrainingJobStatus(KubeModel):
    """Observed state of a TrainingJob."""

    phase: (
        Literal["Pending", "Waiting", "Running", "Restarting", "Suspended", "Succeeded", "Failed"]
        | None
    ) = None
    """Lifecycle phase."""
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """Conditions: Created, Running, Restarting, Suspended, Succeeded, Failed."""
    observed_generation: int | None = None
    """The spec generation the status reflects."""
    start_time: str | None = None
    """When the workers were (last) started (RFC 3339); reset on resume."""
    completion_time: str | None = None
    """When the job finished (RFC 3339)."""
    restarts: int = 0
    """Whole-group restarts so far."""
    preemptions: int = 0
    """Of those restarts, the ones caused by a disruption (a worker pod preempted, evicted or
    lost with its node: condition DisruptionTarget); backoffLimit bounds the others."""
    selector: str | None = None
    """Label selector of the worker pods (for the scale subresource)."""
    workers: WorkerCounts | None = None
    """Worker pods by state."""
    progress: Progress | None = None
    """Training progress."""
    last_checkpoint: CheckpointStatus | None = None
    """The newest complete checkpoint."""
    logs: LogArchiveStatus | None = None
    """Where the workers' logs are archived."""
    model: ModelVersionStatus | None = None
    """The model version the job produced."""
    source_version: ModelVersionStatus | None = None
    """The model version spec.initFrom.modelVersion resolved to when the job started."""
    message: str | None = None
    """Human summary of the current state."""


# Fields a running job cannot change: a change would silently mean a different run. They can
# change while the job is Pending or Suspended (as Kueue and Kubeflow Trainer allow).
IMMUTABLE_WHILE_RUNNING = ("strategy", "workers", "procsPerWorker", "batchSize", "precision")


def _immutability_rule() -> Rule:
    same = " && ".join(f"self.spec.{f} == oldSelf.spec.{f}" for f in IMMUTABLE_WHILE_RUNNING)
    return Rule(
        cel="!has(oldSelf.status) || !has(oldSelf.status.phase) || "
        f"oldSelf.status.phase in ['Pending', 'Waiting', 'Suspended'] || ({same})",
        message="spec." + ", spec.".join(IMMUTABLE_WHILE_RUNNING) + " cannot change once the "
        "job has started (suspend it first, or create a new job)",
        field_path=".spec",
    )


class TrainingJob(KubeModel):
    """A TrainingJob: train a model on `workers` pods with DDP, pipeline parallelism or
    knowledge distillation, checkpointing as it goes, and store the result as a model version."""

    api_version: Literal["torchyard.io/v1alpha1"] = Field(
        default="torchyard.io/v1alpha1", alias="apiVersion"
    )
    """torchyard.io/v1alpha1"""
    kind: Literal["TrainingJob"] = TRAINING_JOB_KIND
    """TrainingJob"""
    metadata: ObjectMeta
    """Standard object metadata."""
    spec: TrainingJobSpec
    """Desired state."""
    status: TrainingJobStatus | None = None
    """Observed state (written by the operator)."""

    rules = (_immutability_rule(),)

    def to_dict(self) -> dict[str, Any]:
        return dump(self)
