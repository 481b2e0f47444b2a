"""CompressionJob: prune, distill and/or quantize a model under an accuracy gate."""

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
)
from torchyard.api.constants import COMPRESSION_JOB_KIND
from torchyard.api.modelversion import VersionRefString
from torchyard.api.podtemplate import POD_TEMPLATE_DESCRIPTION, PodTemplateOverride


class CompressionSource(KubeModel):
    """The model to compress: a TrainingJob's output, a stored model version, or a model
    definition with weights."""

    training_job_ref: str | None = Field(default=None, max_length=253)
    """Name of a TrainingJob (same namespace); the CompressionJob waits until it has
    produced its model."""
    model_ref: ModelVersionRef | None = None
    """A model version in the model store."""
    model: ModelSpec | None = None
    """A model definition; its checkpoint is required."""
    model_version: VersionRefString | None = None
    """A ModelVersion of this namespace as <model>@<alias> (e.g. digits-mlp@production) or
    <model>/v<N>; resolved when the job starts (it waits until the version exists) and
    recorded in status.sourceVersion and the new version's lineage."""

    rules = (
        Rule(
            cel="[has(self.trainingJobRef), has(self.modelRef), has(self.model), "
            "has(self.modelVersion)].filter(x, x).size() == 1",
            message="set exactly one of trainingJobRef, modelRef, model or modelVersion",
            check=lambda s: (
                sum(
                    x is not None
                    for x in (s.training_job_ref, s.model_ref, s.model, s.model_version)
                )
                == 1
            ),
        ),
        Rule(
            cel="!has(self.model) || has(self.model.checkpoint) || has(self.model.huggingface)",
            message="a source model needs checkpoint (the weights to compress); a huggingface "
            "model brings its own",
            field_path=".model.checkpoint",
            check=lambda s: (
                s.model is None or s.model.checkpoint is not None or s.model.huggingface is not None
            ),
        ),
    )


class PruneStep(KubeModel):
    """Pruning."""

    method: Literal["magnitude", "l1Threshold", "structured"]
    """magnitude: smallest weights zeroed (iteratively, with fine-tuning); l1Threshold:
    L1-regularised fine-tune, then weights under a threshold zeroed; structured: whole
    channels/neurons removed by norm (the model physically shrinks)."""
    sparsity: float = Field(ge=0.0, lt=1.0)
    """Target fraction of weights (magnitude, l1Threshold) or channels (structured) removed."""
    scope: Literal["layer", "global"] = "layer"
    """layer: each layer pruned to the target; global: one threshold over all layers."""
    iterations: int = Field(default=1, ge=1, le=100)
    """Prune in this many rounds, sparsity rising geometrically, fine-tuning after each."""
    fine_tune_epochs: int = Field(default=1, ge=0, le=1000)
    """Fine-tuning epochs after each pruning round."""
    l1_lambda: float = Field(default=1e-4, ge=0.0)
    """L1 penalty weight during the l1Threshold fine-tune."""
    threshold: float | None = Field(default=None, gt=0.0)
    """Absolute weight threshold of l1Threshold; derived from sparsity when omitted."""
    physical_shrink: bool = True
    """structured: rebuild smaller layers instead of masking (real size and speed gains)."""
    candidates: list[float] = Field(default_factory=list, max_length=16)
    """Other sparsities the accuracy-aware search may try (each in [0, 1))."""

    rules = (
        Rule(
            # has(): a step written without candidates has no list for CEL to walk.
            cel="!has(self.candidates) || self.candidates.all(c, c >= 0.0 && c < 1.0)",
            message="every candidate sparsity must be in [0, 1)",
            field_path=".candidates",
            check=lambda p: all(0.0 <= c < 1.0 for c in p.candidates),
        ),
    )


class DistillStep(KubeModel):
    """Distillation into a smaller student; the current model is the teacher."""

    student: ModelSpec
    """The student architecture."""
    temperature: float = Field(default=4.0, gt=0.0, le=100.0)
    """Softmax temperature T."""
    alpha: float = Field(default=0.7, ge=0.0, le=1.0)
    """Weight of the soft loss: alpha·T²·KL(soft) + (1 − alpha)·CE(hard)."""
    transfer_set: Literal["labeled", "unlabeled"] = "labeled"
    """labeled: labeled samples only; unlabeled: the soft loss also uses unlabeled data."""
    epochs: int = Field(default=10, ge=1, le=10000)
    """Training epochs of the student."""


class QuantizeStep(KubeModel):
    """Quantization."""

    method: Literal["dynamicInt8", "staticInt8", "qat", "weightOnlyInt4", "binarize"]
    """dynamicInt8 (weights int8, activations quantized on the fly), staticInt8 (calibrated),
    qat (quantization-aware fine-tune), weightOnlyInt4, binarize (sign × per-row scale)."""
    granularity: Literal["perTensor", "perChannel", "auto"] = "perChannel"
    """Weight scale granularity; auto lets the search try both."""
    calibration_samples: int = Field(default=256, ge=1, le=1000000)
    """Samples used to calibrate activation ranges (staticInt8, qat)."""
    backend: Literal["auto", "torchao", "torch.ao"] = "auto"
    """Implementation; auto picks the faster available one for the platform."""
    keep_float: list[str] = Field(default_factory=list, max_length=256)
    """Module names left in floating point."""
    qat_epochs: int = Field(default=1, ge=0, le=1000)
    """Straight-through fine-tuning epochs before quantizing: qat's fake-quant fine-tune (at
    least 1: qat without it is dynamicInt8) and binarize's sign fine-tune (0: binarize the
    weights as they are)."""

    rules = (
        Rule(
            cel="self.method != 'qat' || self.qatEpochs >= 1",
            message="qat needs qatEpochs >= 1 (without its fine-tune it is dynamicInt8: use "
            "method: dynamicInt8)",
            field_path=".qatEpochs",
            check=lambda q: q.method != "qat" or q.qat_epochs >= 1,
        ),
    )


class CompressionStep(KubeModel):
    """One step; set exactly one of prune, distill or quantize."""

    prune: PruneStep | None = None
    """Pruning step."""
    distill: DistillStep | None = None
    """Distillation step."""
    quantize: QuantizeStep | None = None
    """Quantization step."""

    rules = (
        Rule(
            cel="[has(self.prune), has(self.distill), has(self.quantize)].filter(x, x).size() == 1",
            message="each step sets exactly one of prune, distill or quantize",
            check=lambda s: sum(x is not None for x in (s.prune, s.distill, s.quantize)) == 1,
        ),
    )


# Metrics compared with the original model's outputs: they need no labels.
FIDELITY_METRICS = ("cosine", "top1Agreement", "perplexity", "kl")
# Metrics where lower is better (the gate bounds a rise instead of a drop).
LOWER_IS_BETTER = ("perplexity", "kl")


class AccuracyCriterion(KubeModel):
    """The gate every candidate must pass: a labelled metric (accuracy, f1) or, with no labels
    needed, how close the candidate's outputs stay to the original model's."""

    metric: Literal["accuracy", "f1", "cosine", "top1Agreement", "perplexity", "kl"] = "accuracy"
    """Metric on the held-out data. Labelled: accuracy, f1. Fidelity to the original model
    (no labels): cosine (mean cosine similarity of outputs/embeddings; the original scores 1),
    top1Agreement (share of samples whose top class is unchanged), perplexity (causal LMs:
    the candidate's perplexity on the text), kl (causal LMs and classifiers: mean
    KL(original ‖ candidate) of the output distributions; the original scores 0)."""
    mode: Literal["relative", "absolute"] = "relative"
    """relative: loss as a fraction of the baseline; absolute: loss in metric units (points
    0-1 for accuracy, f1, cosine and top1Agreement; perplexity or nats for the others)."""
    tolerable_loss: float = Field(default=0.01, ge=0.0, le=1000.0)
    """Largest allowed worsening of the metric: a drop for accuracy, f1, cosine and
    top1Agreement, a rise for perplexity and kl."""
    percentile: int = Field(default=5, ge=1, le=50)
    """cosine: the worst-case percentile reported beside the mean (p5: 95% of samples stay
    at least this close). Reported, not gated."""
    max_trials: int = Field(default=8, ge=1, le=1000)
    """Most candidates the search evaluates."""

    rules = (
        Rule(
            cel="self.metric != 'kl' || self.mode == 'absolute'",
            message="kl is 0 for the original model, so a relative loss has no meaning: use "
            "mode: absolute (tolerableLoss in nats)",
            field_path=".mode",
            check=lambda a: a.metric != "kl" or a.mode == "absolute",
        ),
        Rule(
            cel="self.metric in ['perplexity', 'kl'] || self.tolerableLoss <= 1.0",
            message="accuracy, f1, cosine and top1Agreement lie in [0, 1]: tolerableLoss is at "
            "most 1.0",
            field_path=".tolerableLoss",
            check=lambda a: a.metric in LOWER_IS_BETTER or a.tolerable_loss <= 1.0,
        ),
    )


def _cel_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def _metric_needs_task(metrics: tuple[str, ...], tasks: tuple[str, ...], message: str) -> Rule:
    """A gate metric that only some huggingface tasks can be scored on (checked when the
    source is a huggingface model; other sources are checked by the worker)."""

    def check(s: CompressionJobSpec) -> bool:
        hf = s.source.model.huggingface if s.source.model is not None else None
        return hf is None or s.accuracy_criterion.metric not in metrics or hf.task in tasks

    return Rule(
        cel="!has(self.source.model) || !has(self.source.model.huggingface) || "
        f"!(self.accuracyCriterion.metric in {_cel_list(metrics)}) || "
        f"self.source.model.huggingface.task in {_cel_list(tasks)}",
        message=message,
        field_path=".accuracyCriterion.metric",
        check=check,
    )


class CompressionJobSpec(KubeModel):
    """Desired state of a CompressionJob."""

    source: CompressionSource
    """The model to compress."""
    data: DataSpec
    """Calibration, fine-tuning and evaluation data."""
    steps: list[CompressionStep] = Field(min_length=1, max_length=16)
    """Steps applied in order, e.g. prune, then distill, then quantize."""
    accuracy_criterion: AccuracyCriterion = sub(AccuracyCriterion)
    """The accuracy gate."""
    objective: Literal["size", "latency"] = "size"
    """Which passing candidate wins: the smallest or the fastest."""
    output: OutputSpec = sub(OutputSpec)
    """Where the compressed model version goes."""
    optimizer: OptimizerSpec = sub(OptimizerSpec)
    """Optimizer of the fine-tuning phases."""
    batch_size: int = Field(default=64, ge=1, le=1048576)
    """Batch size of fine-tuning and evaluation."""
    seed: int = Field(default=0, ge=0)
    """Random seed."""
    workers: int = Field(default=1, ge=1, le=64)
    """Worker pods; more than one runs the distill steps' fine-tune data-parallel (needs a
    distill step; everything else runs on the first worker)."""
    resources: ResourceSpec = sub(ResourceSpec)
    """Per-pod resources."""
    image: str | None = Field(default=None, max_length=1024)
    """Worker image; the released trainer image when omitted."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    """Image pull policy of the worker container."""
    env: list[EnvVar] = Field(default_factory=list, max_length=128)
    """Extra environment of the worker container."""
    pod_metadata: PodMetadata = sub(PodMetadata)
    """Extra labels and annotations of the worker pods."""
    pod_template: PodTemplateOverride | None = Field(
        default=None, description=POD_TEMPLATE_DESCRIPTION
    )
    run_policy: RunPolicy = sub(RunPolicy)
    """Retries, deadlines, cleanup, suspension."""
    scheduling: SchedulingSpec = sub(SchedulingSpec)
    """Placement and gang scheduling."""

    rules = (
        ENV_RULE,
        _metric_needs_task(
            ("perplexity", "kl"),
            ("sequence-classification", "causal-lm"),
            "perplexity and kl compare output distributions: a feature-extraction model has "
            "none (use metric: cosine)",
        ),
        _metric_needs_task(
            ("perplexity",),
            ("causal-lm",),
            "perplexity needs a causal-lm model (use kl or top1Agreement for a classifier)",
        ),
        _metric_needs_task(
            ("top1Agreement",),
            ("sequence-classification", "causal-lm"),
            "top1Agreement compares predicted classes: a feature-extraction model has none "
            "(use metric: cosine)",
        ),
        Rule(
            cel="self.workers <= 1 || self.steps.exists(s, has(s.distill))",
            message=(
                "more than one worker needs a distill step: only the distillation fine-tune "
                "runs data-parallel (prune and quantize run on one worker); set workers: 1"
            ),
            field_path=".workers",
            check=lambda s: s.workers <= 1 or any(st.distill is not None for st in s.steps),
        ),
    )


class ModelStats(KubeModel):
    """Measured properties of one model."""

    accuracy: float | None = None
    """The gate's metric on the held-out data (accuracyCriterion.metric: accuracy, f1,
    cosine mean, top1Agreement, perplexity or kl)."""
    fidelity_mean: float | None = None
    """Mean cosine similarity of the outputs to the original model's (1 for the original)."""
    fidelity_worst: float | None = None
    """The worst-percentile cosine similarity (accuracyCriterion.percentile, p5 by default)."""
    top1_agreement: float | None = None
    """Share of held-out samples whose top class matches the original model's."""
    perplexity: float | None = None
    """Perplexity on the held-out text (causal LMs)."""
    kl: float | None = None
    """Mean KL(original ‖ this model) of the output distributions, nats."""
    params: int | None = None
    """Parameter count."""
    non_zero_params: int | None = None
    """Non-zero parameters."""
    bytes: int | None = None
    """Size of the saved weights on disk."""
    latency_ms: float | None = None
    """CPU latency p50 per batch, milliseconds."""


class Trial(KubeModel):
    """One candidate of the accuracy-aware search."""

    name: str
    """Candidate label, e.g. sparsity=0.9,granularity=perChannel."""
    params: dict[str, Any] = Field(default_factory=dict)
    """The candidate's settings."""
    stats: ModelStats | None = None
    """Its measured properties."""
    passed: bool = False
    """Whether it passed the accuracy gate."""


class CompressionRatios(KubeModel):
    """Baseline ÷ compressed."""

    size: float | None = None
    """Bytes on disk, baseline over compressed."""
    params: float | None = None
    """Parameters (non-zero), baseline over compressed."""
    speedup: float | None = None
    """Latency, baseline over compressed."""


class CompressionReport(KubeModel):
    """Before/after report."""

    baseline: ModelStats | None = None
    """The source model."""
    compressed: ModelStats | None = None
    """The winning candidate."""
    ratios: CompressionRatios | None = None
    """Baseline ÷ compressed."""
    metric: str | None = None
    """The gate's metric (accuracyCriterion.metric)."""
    accuracy_delta: float | None = None
    """Compressed minus baseline metric."""
    summary: str | None = None
    """One line: size, speed and the gate's metric before and after (mean and worst case
    for cosine)."""
    passed: bool | None = None
    """Whether the winner passed the accuracy gate."""
    backend: str | None = None
    """Backends and versions that ran."""
    threads: int | None = None
    """CPU threads used for latency measurements."""
    warnings: list[str] = Field(default_factory=list)
    """Things the user should know (e.g. a method fell back to another backend)."""


class CompressionJobStatus(KubeModel):
    """Observed state of a CompressionJob."""

    phase: (
        Literal["Pending", "Waiting", "Running", "Restarting", "Suspended", "Succeeded", "Failed"]
        | None
    ) = None
    """Lifecycle phase; Waiting while the source TrainingJob has not produced its model."""
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """Conditions: Created, Waiting, Running, Succeeded, Failed."""
    observed_generation: int | None = None
    """The spec generation the status reflects."""
    start_time: str | None = None
    """When the workers started (RFC 3339)."""
    completion_time: str | None = None
    """When the job finished (RFC 3339)."""
    restarts: int = 0
    """Restarts so far."""
    preemptions: int = 0
    """Of those restarts, the ones caused by a disruption (a worker pod preempted, evicted or
    lost with its node: condition DisruptionTarget); backoffLimit bounds the others."""
    trials: list[Trial] = Field(default_factory=list)
    """Candidates the search evaluated."""
    report: CompressionReport | None = None
    """Before/after report."""
    model: ModelVersionStatus | None = None
    """The compressed model version."""
    source_version: ModelVersionStatus | None = None
    """The model version spec.source.modelVersion resolved to when the job started."""
    message: str | None = None
    """Human summary of the current state."""


class CompressionJob(KubeModel):
    """A CompressionJob: prune, distill and/or quantize a model under an accuracy gate and
    report size, speed and accuracy before and after."""

    api_version: Literal["torchyard.io/v1alpha1"] = Field(
        default="torchyard.io/v1alpha1", alias="apiVersion"
    )
    """torchyard.io/v1alpha1"""
    kind: Literal["CompressionJob"] = COMPRESSION_JOB_KIND
    """CompressionJob"""
    metadata: ObjectMeta
    """Standard object metadata."""
    spec: CompressionJobSpec
    """Desired state."""
    status: CompressionJobStatus | None = None
    """Observed state (written by the operator)."""

    def to_dict(self) -> dict[str, Any]:
        return dump(self)
