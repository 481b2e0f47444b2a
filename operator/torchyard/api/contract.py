"""The operator ↔ worker contract (DESIGN §3), spelled once.

Everything the operator, ``torchyard run`` and the worker must agree on lives here and nowhere
else: the labels and annotations on what the operator creates, the environment every worker
gets, the exit codes a worker ends with and what each means (permanent or worth a group
restart), the retry classification, where storage URIs point inside a pod and where a
TrainingJob keeps its checkpoints. Torch-free and Kubernetes-client-free: the operator image
imports it, so does the trainer image.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Final, Protocol

# --------------------------------------------------------------------------- labels


class Label:
    """Labels the operator puts on what it creates (and selects them by)."""

    JOB_NAME: Final = "torchyard.io/job-name"
    JOB_KIND: Final = "torchyard.io/job-kind"
    ROLE: Final = "torchyard.io/role"
    MANAGED_BY: Final = "app.kubernetes.io/managed-by"
    MANAGED_BY_VALUE: Final = "torchyard"
    """The value of MANAGED_BY on everything the operator creates."""
    # Gang scheduling: the pod-group label coscheduling (scheduler-plugins) reads.
    COSCHEDULING_POD_GROUP: Final = "scheduling.x-k8s.io/pod-group"
    # Kueue: the queue a Job is submitted to, and the label Kueue puts on the Workload it makes
    # for a Job (the Job's uid; a server-side filter, the ownerReference decides).
    KUEUE_QUEUE_NAME: Final = "kueue.x-k8s.io/queue-name"
    KUEUE_JOB_UID: Final = "kueue.x-k8s.io/job-uid"
    # Kueue: the WorkloadPriorityClass of a Job's Workload (Kueue reads it from the Job; a
    # user puts it, like the queue name, on the TrainingJob/CompressionJob and the operator
    # copies it to the worker Job).
    KUEUE_PRIORITY_CLASS: Final = "kueue.x-k8s.io/priority-class"
    # Set by the Job controller on the pods of a batch Job: which Job made them (its uid).
    JOB_CONTROLLER_UID: Final = "batch.kubernetes.io/controller-uid"


class Annotation:
    """Annotations the operator writes or reads."""

    # Whole-group restarts before the attempt a batch Job runs (the worker sees it as
    # Env.RESTART_COUNT).
    RESTART_COUNT: Final = "torchyard.io/restart-count"
    # Set by the Job controller on every pod of an Indexed Job: the pod's node rank (as an
    # annotation, and since Kubernetes 1.28 as a label of the same name too).
    COMPLETION_INDEX: Final = "batch.kubernetes.io/job-completion-index"
    # Volcano's pod-group annotation.
    VOLCANO_GROUP_NAME: Final = "scheduling.k8s.io/group-name"


#: API groups of the gang schedulers the operator works with: Kueue's objects (Workload,
#: LocalQueue, WorkloadPriorityClass), Volcano's PodGroup, scheduler-plugins' PodGroup.
KUEUE_GROUP: Final = "kueue.x-k8s.io"
VOLCANO_GROUP: Final = "scheduling.volcano.sh"
COSCHEDULING_GROUP: Final = "scheduling.x-k8s.io"


# --------------------------------------------------------------------------- environment


class Env:
    """Environment variables of the operator↔worker contract (DESIGN §3)."""

    # torchrun's node-level settings (Kubeflow Trainer's PET_* names).
    NNODES: Final = "PET_NNODES"
    NPROC_PER_NODE: Final = "PET_NPROC_PER_NODE"
    NODE_RANK: Final = "PET_NODE_RANK"
    MASTER_ADDR: Final = "PET_MASTER_ADDR"
    MASTER_PORT: Final = "PET_MASTER_PORT"
    # What torchrun sets for every process it starts (read by the worker).
    RANK: Final = "RANK"
    WORLD_SIZE: Final = "WORLD_SIZE"
    LOCAL_RANK: Final = "LOCAL_RANK"
    LOCAL_WORLD_SIZE: Final = "LOCAL_WORLD_SIZE"
    TORCHRUN_MASTER_ADDR: Final = "MASTER_ADDR"
    TORCHRUN_MASTER_PORT: Final = "MASTER_PORT"
    # torchyard's own.
    SPEC: Final = "TORCHYARD_SPEC"
    METRICS_PORT: Final = "TORCHYARD_METRICS_PORT"
    JOB_NAME: Final = "TORCHYARD_JOB_NAME"
    NAMESPACE: Final = "TORCHYARD_NAMESPACE"
    OUTPUT_DIR: Final = "TORCHYARD_OUTPUT_DIR"
    RESULT_FILE: Final = "TORCHYARD_RESULT_FILE"
    RESTART_COUNT: Final = "TORCHYARD_RESTART_COUNT"
    PVC_ROOT: Final = "TORCHYARD_PVC_ROOT"
    LOG_LEVEL: Final = "TORCHYARD_LOG_LEVEL"
    COLLECTIVE_TIMEOUT_SECONDS: Final = "TORCHYARD_COLLECTIVE_TIMEOUT_SECONDS"
    PEAK_FLOPS: Final = "TORCHYARD_PEAK_FLOPS"
    # Live progress (docs/architecture.md, "Live progress"): where rank 0 POSTs its progress
    # (absent: the worker does not post), the projected service-account token that
    # authenticates the pod, and the PEM of the CA that signed the endpoint's certificate.
    PROGRESS_URL: Final = "TORCHYARD_PROGRESS_URL"
    PROGRESS_TOKEN_FILE: Final = "TORCHYARD_PROGRESS_TOKEN_FILE"
    PROGRESS_CA: Final = "TORCHYARD_PROGRESS_CA"
    # Preemption (docs/operator.md, "Preemption and node loss"): how long the launcher waits
    # for its ranks after SIGTERM before torchrun's agent SIGKILLs them (its
    # --shutdown-timeout, which is 30 s when unset); set from runPolicy.gracePeriodSeconds.
    SHUTDOWN_TIMEOUT_SECONDS: Final = "TORCHYARD_SHUTDOWN_TIMEOUT_SECONDS"
    # Fault injection for the restart tests (never set by the operator).
    FAULT_KILL_AT_STEP: Final = "TORCHYARD_FAULT_KILL_AT_STEP"
    FAULT_KILL_RANK: Final = "TORCHYARD_FAULT_KILL_RANK"


# Names the operator sets on every worker; a user `env` entry that sets one is rejected.
RESERVED_ENV_NAMES: Final = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "NODE_RANK",
)
RESERVED_ENV_PREFIXES: Final = ("PET_", "TORCHYARD_")

DEFAULT_MASTER_PORT: Final = 29500
LOOPBACK_HOST: Final = "127.0.0.1"
"""Rank 0's address where every process shares one host: a one-worker job's pod, and every
job under ``torchyard run``. No Service, no DNS record to wait for."""

# The worker pod's parts a pod template override may not take over (api/podtemplate.py).
WORKER_CONTAINER: Final = "worker"
"""The name of the training container in every worker pod."""
SPEC_MOUNT_DIR: Final = "/etc/torchyard"
"""Where the worker container mounts the job's spec ConfigMap."""
SHM_MOUNT_PATH: Final = "/dev/shm"
PROGRESS_TOKEN_DIR: Final = "/var/run/secrets/torchyard.io/progress"
"""Where the worker container mounts its projected progress token (file ``token``)."""
PROGRESS_TOKEN_AUDIENCE: Final = "torchyard.io/progress"
"""The audience of that token: the progress endpoint accepts no other (a pod's API token is
refused there, and this token is refused by the API server)."""
PROGRESS_VOLUME: Final = "progress-token"
OPERATOR_MOUNT_PATHS: Final = (SPEC_MOUNT_DIR, SHM_MOUNT_PATH, PROGRESS_TOKEN_DIR)
OPERATOR_VOLUME_NAMES: Final = ("spec", "dshm", PROGRESS_VOLUME)
OPERATOR_VOLUME_PREFIX: Final = "storage-"
"""The operator's volume of the n-th pvc:// claim is storage-<n>."""
DEFAULT_METRICS_PORT: Final = 9400

# Where the operator mounts every PersistentVolumeClaim a job names (pvc://<claim>/… is
# <PVC_ROOT>/<claim>/…); the worker reads the root from Env.PVC_ROOT, this is its default.
DEFAULT_PVC_ROOT: Final = "/mnt/torchyard"
# The worker writes its result JSON here; Kubernetes copies it into the pod status
# (state.terminated.message, 4 KiB max), which is how the operator reads it without storage
# access.
TERMINATION_MESSAGE_PATH: Final = "/dev/termination-log"


# --------------------------------------------------------------------------- exit codes


class ExitCode:
    """Exit codes of a worker pod and what each means.

    Kubeflow's convention (DESIGN §3): 1–127 are the workload's own verdict and permanent (a
    bad spec fails the job at once); from 128 on they are signals (OOM kill 137, SIGTERM 143)
    and worth a whole-group restart. ``runPolicy.retryableExitCodes`` moves codes below 128 to
    the retryable side.
    """

    OK: Final = 0
    ERROR: Final = 1
    """An unexpected error in the worker (a traceback in its log)."""
    CONFIG: Final = 2
    """Invalid spec or environment: retrying cannot fix it."""
    GATE: Final = 3
    """A CompressionJob whose candidates all missed the accuracy gate."""
    SIGNALS_FROM: Final = 128
    """128 + N: killed by signal N (OOM kill 137, SIGKILL 137, SIGTERM 143)."""
    INTERRUPTED: Final = 130
    """SIGINT / Ctrl-C (128 + 2)."""
    PEER_LOST: Final = 200
    """A peer rank vanished mid-collective: the group restarts from its last checkpoint."""
    PREEMPTED: Final = 143
    """Stopped on SIGTERM (preemption, eviction, node drain): every rank finished the same
    step and checkpointed it first. The code a SIGTERM kill gives anyway (128 + 15), so
    scripts and podFailurePolicy rules that know 143 keep working; retryable."""


EXIT_CODE_MEANINGS: Final[dict[int, str]] = {
    ExitCode.OK: "succeeded",
    ExitCode.ERROR: "unexpected error (permanent)",
    ExitCode.CONFIG: "invalid spec or environment (permanent)",
    ExitCode.GATE: "no candidate passed the accuracy gate (permanent)",
    ExitCode.INTERRUPTED: "interrupted (SIGINT)",
    ExitCode.PEER_LOST: "a peer rank was lost (retryable: the group restarts)",
    ExitCode.PREEMPTED: "stopped on SIGTERM after checkpointing (retryable)",
}


# --------------------------------------------------------------------------- preemption

DEFAULT_GRACE_PERIOD_SECONDS: Final = 30
"""runPolicy.gracePeriodSeconds when unset: Kubernetes' own default grace period."""
POD_DISRUPTION_CONDITION: Final = "DisruptionTarget"
"""The pod condition Kubernetes sets before it removes a pod for a reason that is not the
workload's (scheduler preemption, eviction API, taint-based eviction of a lost node, pod GC)."""


def shutdown_timeout_seconds(grace_period_seconds: int) -> int:
    """The launcher's shutdown timeout for a pod grace period: the rule is grace > shutdown
    timeout > checkpoint time. The margin (a fifth of the grace, 2-10 s) leaves the launcher
    time to reap its ranks, archive their logs and exit before the kubelet's SIGKILL."""
    margin = min(10, max(2, grace_period_seconds // 5))
    return max(1, grace_period_seconds - margin)


def checkpoint_budget_seconds(shutdown_timeout: float) -> float:
    """How long a rank may spend on its SIGTERM checkpoint within the launcher's shutdown
    timeout: a tenth (at least 1 s) is kept for writing the result and exiting."""
    return max(0.0, shutdown_timeout - max(1.0, shutdown_timeout / 10))


def exit_code_of_returncode(returncode: int) -> int:
    """A process's return code as a pod's exit code: killed by signal N (Popen's -N) → 128+N."""
    return ExitCode.SIGNALS_FROM - returncode if returncode < 0 else returncode


class RetryPolicy(Protocol):
    """What the retry classification reads of a job's ``runPolicy``
    (:class:`torchyard.api.common.RunPolicy`)."""

    @property
    def retry_policy(self) -> str: ...

    @property
    def retryable_exit_codes(self) -> Sequence[int]: ...


def permanent_exit_codes(policy: RetryPolicy) -> list[int]:
    """The exit codes that fail the job at once under ``retryPolicy: ExitCode``."""
    retryable = set(policy.retryable_exit_codes)
    return [c for c in range(1, ExitCode.SIGNALS_FROM) if c not in retryable]


def is_retryable(code: int | None, policy: RetryPolicy) -> bool:
    """Whether a failed attempt that ended with exit ``code`` may restart the group (before
    counting ``backoffLimit``). ``None`` or 0 on a failed attempt means the pod did not end
    by itself (evicted, deleted, node lost): not the workload's verdict, so retryable."""
    if policy.retry_policy == "Never":
        return False
    if policy.retry_policy == "OnFailure" or code is None or code == 0:
        return True
    return code >= ExitCode.SIGNALS_FROM or code in set(policy.retryable_exit_codes)


# --------------------------------------------------------------------------- storage

REMOTE_SCHEMES: Final = ("s3", "gs")


class SpecError(ValueError):
    """A job spec (or worker environment) that retrying cannot fix: a worker that raises one
    exits with ``ExitCode.CONFIG``."""


class StorageURIError(SpecError):
    """A storage URI that does not name a path inside the pod."""


def split_uri(uri: str) -> tuple[str, str]:
    """``scheme://rest`` → (scheme, rest); a bare path is ``file``."""
    if "://" not in uri:
        return "file", uri
    scheme, rest = uri.split("://", 1)
    return scheme, rest


def is_remote(uri: str) -> bool:
    """Whether ``uri`` is an object store (s3://, gs://) rather than a path in the pod."""
    return split_uri(uri)[0] in REMOTE_SCHEMES


def local_path(uri: str, pvc_root: Path) -> Path:
    """The path a file:// or pvc://<claim>/<path> URI names inside a worker.

    ``pvc://claim/sub/dir`` is ``<pvc_root>/claim/sub/dir``: the operator mounts every claim a
    job names at ``<pvc_root>/<claim>``.
    """
    scheme, rest = split_uri(uri)
    if scheme == "file":
        return Path(rest)
    if scheme == "pvc":
        return pvc_root / rest.lstrip("/")
    raise StorageURIError(f"{uri}: not a local storage URI (file:// or pvc://)")


def pvc_claim(uri: str) -> str | None:
    """The claim a pvc:// URI names (None for other schemes)."""
    scheme, rest = split_uri(uri)
    if scheme != "pvc":
        return None
    parts = PurePosixPath(rest.lstrip("/")).parts
    return parts[0] if parts else None


CHECKPOINTS_SUBDIR: Final = ".checkpoints"


def checkpoint_dir(
    *,
    checkpoint_storage: str | None,
    output_storage: str | None,
    namespace: str,
    job_name: str,
    pvc_root: Path,
) -> Path | None:
    """Where the workers of a TrainingJob keep its checkpoints, shared by every attempt.

    ``checkpoint.storage`` when set (it must be a shared mount: file:// or pvc://); else
    ``<output store>/.checkpoints/<namespace>/<job>`` when the output store is one. ``None``
    when the output store is an object store: the worker then keeps checkpoints in its own
    output directory, which only the same pod sees.
    """
    if checkpoint_storage:
        if is_remote(checkpoint_storage):
            raise StorageURIError(
                "checkpoint.storage must be file:// or pvc:// (a mount every worker shares)"
            )
        return local_path(checkpoint_storage, pvc_root)
    if output_storage and not is_remote(output_storage):
        return local_path(output_storage, pvc_root) / CHECKPOINTS_SUBDIR / namespace / job_name
    return None
