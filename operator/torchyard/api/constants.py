"""Names that are part of the API contract: group/version, phases, condition types and reasons,
the worker environment, and labels. Kept in one place so builders, the status machine, the
worker and the tests agree by construction."""

from typing import Final

GROUP: Final = "torchyard.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
TRAINING_JOB_KIND: Final = "TrainingJob"
COMPRESSION_JOB_KIND: Final = "CompressionJob"
TRAINING_JOB_PLURAL: Final = "trainingjobs"
COMPRESSION_JOB_PLURAL: Final = "compressionjobs"

# Longest job name whose derived names still fit Kubernetes' 63-character label/DNS limits:
# the Indexed Job's pod hostname is "<child>-<index>" and the Service is "<child>", where
# <child> is the name itself for a TrainingJob and "<name>-cj" for a CompressionJob
# (COMPRESSION_CHILD_SUFFIX, so that a TrainingJob and a CompressionJob of the same name do not
# collide). Longest hostnames: 52 + "-1023" = 57 (TrainingJob, <= 1024 workers) and
# 52 + "-cj" + "-63" = 58 (CompressionJob, <= 64 workers).
MAX_JOB_NAME_LENGTH: Final = 52
COMPRESSION_CHILD_SUFFIX: Final = "-cj"
DNS_1035_LABEL: Final = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"


class Phase:
    """Values of ``status.phase``."""

    PENDING: Final = "Pending"
    WAITING: Final = "Waiting"
    RUNNING: Final = "Running"
    RESTARTING: Final = "Restarting"
    SUSPENDED: Final = "Suspended"
    SUCCEEDED: Final = "Succeeded"
    FAILED: Final = "Failed"

    FINISHED: Final = (SUCCEEDED, FAILED)


class ConditionType:
    """Values of ``status.conditions[].type``."""

    CREATED: Final = "Created"
    WAITING: Final = "Waiting"
    RUNNING: Final = "Running"
    RESTARTING: Final = "Restarting"
    SUSPENDED: Final = "Suspended"
    SUCCEEDED: Final = "Succeeded"
    FAILED: Final = "Failed"
    # Rank 0 reported no step for longer than the stall window (state/stall.py).
    STALLED: Final = "Stalled"


class Reason:
    """Values of ``status.conditions[].reason`` (CamelCase, as Kubernetes expects)."""

    JOB_CREATED: Final = "JobCreated"
    WAITING_FOR_SOURCE: Final = "WaitingForSourceModel"
    SOURCE_READY: Final = "SourceModelReady"
    SOURCE_FAILED: Final = "SourceJobFailed"
    WORKERS_RUNNING: Final = "WorkersRunning"
    WORKERS_PENDING: Final = "WorkersPending"
    RETRYABLE_FAILURE: Final = "RetryableFailure"
    PERMANENT_FAILURE: Final = "PermanentFailure"
    BACKOFF_LIMIT_EXCEEDED: Final = "BackoffLimitExceeded"
    DEADLINE_EXCEEDED: Final = "DeadlineExceeded"
    SUSPENDED: Final = "JobSuspended"
    RESUMED: Final = "JobResumed"
    # Kueue holds the batch Job suspended until its Workload is admitted (phase Pending,
    # Suspended condition True), then un-suspends it (Suspended False).
    QUEUED_BY_KUEUE: Final = "QueuedByKueue"
    ADMITTED_BY_KUEUE: Final = "AdmittedByKueue"
    # runPolicy.suspend on a Job Kueue manages: Kueue owns Job.spec.suspend (it un-suspends an
    # admitted Job), so the operator deactivates the Job's Workload (spec.active: false) and
    # Kueue evicts the Job, suspends it and releases its quota (phase Suspended, Suspended
    # condition True with this reason, distinct from QueuedByKueue).
    WORKLOAD_DEACTIVATED: Final = "WorkloadDeactivated"
    COMPLETED: Final = "JobCompleted"
    INVALID_SPEC: Final = "InvalidSpec"
    # A child could not be created for a reason that may pass; the job keeps its phase, says
    # why in the Created condition (False) and is retried with backoff (docs/operator.md).
    QUOTA_EXCEEDED: Final = "QuotaExceeded"
    GANG_SCHEDULER_MISSING: Final = "GangSchedulerMissing"
    CREATE_FORBIDDEN: Final = "CreateForbidden"
    # A child's name is taken by an object this job does not own (another job's child, an
    # earlier job of the same name still being garbage-collected, a user's object): never
    # adopted, changed or deleted; retried with backoff until the name is free.
    NAME_CONFLICT: Final = "NameConflict"
    ACCURACY_GATE_FAILED: Final = "AccuracyGateFailed"
    # The namespace's enforced Pod Security level refuses the worker pods (a privileged or
    # hostPath pod template in a restricted namespace): the job fails, naming the fields.
    POD_SECURITY_REJECTED: Final = "PodSecurityRejected"
    # Stall detection (state/stall.py): the Stalled condition turns True with NoProgress and
    # False with ProgressResumed; a group restart for runPolicy.stallAction Restart says
    # Stalled (Restarting condition, Event, status message).
    NO_PROGRESS: Final = "NoProgress"
    PROGRESS_RESUMED: Final = "ProgressResumed"
    STALLED: Final = "Stalled"
    # A worker pod was disrupted (DisruptionTarget: preemption, eviction, node loss): the whole
    # group restarts without counting against backoffLimit (status.preemptions).
    PREEMPTED: Final = "Preempted"
    # No model store (spec.output.storage, the operator's --default-storage), or a pvc://
    # claim missing from the job's namespace: the job waits Pending (Created False), no pod
    # is created, retried with backoff (state/storage.py, docs/storage.md).
    STORAGE_NOT_CONFIGURED: Final = "StorageNotConfigured"
    STORAGE_CLAIM_NOT_FOUND: Final = "StorageClaimNotFound"
    # A worker pod waits on something that does not pass by itself (state/startup.py): the
    # image cannot be pulled, or the container cannot be created (a missing Secret...). The
    # job stays Pending with Running False and this reason, naming the worker and the cause.
    IMAGE_PULL_FAILED: Final = "ImagePullFailed"
    WORKER_START_FAILED: Final = "WorkerStartFailed"


DEFAULT_TRAINER_IMAGE: Final = "ghcr.io/torchyard/trainer:0.1.0"
TRAINER_GID: Final = 1000
"""The trainer image's group (trainer_image/Dockerfile ``USER 1000:1000``): the worker pods'
``fsGroup``, so that its non-root user can write the claims they mount (docs/storage.md)."""
