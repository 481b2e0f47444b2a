"""What the state machine answers: a :class:`Decision` — the new status, the Events to post
and the :class:`Action` s the reconciler takes around the status write — pure data."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from torchyard.state.observed import Status


class ActionKind(enum.Enum):
    CREATE = "create"
    """Create ConfigMap, Service, (PodGroup) and the batch Job of attempt ``restart_count``."""
    DELETE_JOB = "delete-job"
    """Delete the batch Job ``job_uid`` (foreground: its pods go first)."""
    SUSPEND_JOB = "suspend-job"
    """Set the batch Job's spec.suspend (its active pods are removed, it is kept)."""
    RESUME_JOB = "resume-job"
    """Clear the batch Job's spec.suspend."""
    SET_WORKLOAD_ACTIVE = "set-workload-active"
    """A Job Kueue manages (its queue label): Kueue owns its spec.suspend, so suspend/resume
    sets ``spec.active`` (``active``) of the Workload Kueue made for the Job ``job_uid``:
    false makes Kueue evict and suspend the Job and release its quota, true queues it again
    (:func:`workload_step`)."""
    CLEAN_PODS = "clean-pods"
    """Delete the worker pods of the batch Job ``job_uid`` per cleanPodPolicy (``pod_policy``:
    Running or All)."""


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    restart_count: int = 0
    job_uid: str | None = None
    pod_policy: str | None = None
    active: bool | None = None
    """SET_WORKLOAD_ACTIVE: the Workload's ``spec.active`` to set."""


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Decision:
    status: Status
    """The complete new status (camelCase); the handler patches what differs."""
    events: list[Event] = field(default_factory=list)
    before_status: list[Action] = field(default_factory=list)
    """Actions to take before the status is written (re-done if the status write is lost)."""
    after_status: list[Action] = field(default_factory=list)
    """Actions to take once the status is written (a restart: the count is persisted first)."""
    needs_pods: bool = False
    """Decide again with ``Observed.pods`` filled in (the Job finished: exit codes/results;
    workers not all up: a stuck one, :mod:`torchyard.state.startup`)."""
    needs_source: bool = False
    """Decide again with ``Observed.source`` filled in (CompressionJob trainingJobRef)."""
    recheck_after: float | None = None
    """Reconcile again after this many seconds though nothing changes (pods not started)."""

    @property
    def actions(self) -> list[Action]:
        return [*self.before_status, *self.after_status]


def status_patch(old: Status, new: Status) -> Status:
    """The top-level status keys that differ (a JSON merge patch body for ``status``)."""
    patch: Status = {}
    for key, value in new.items():
        if old.get(key) != value:
            patch[key] = value
    for key in old:
        if key not in new:
            patch[key] = None
    return patch
