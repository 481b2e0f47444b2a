"""The state machine of TrainingJob and CompressionJob — PURE: no Kubernetes client, no Kopf,
no I/O; it imports ``torchyard.api`` only.

``decide(view, observed)`` (:mod:`.machine`) answers, for one job, what its status should be
and what the reconciler must do. The package by concern:

- :mod:`.observed` — what is read: ``JobView`` (the job), ``Observed`` (``JobInfo``,
  ``PodInfo``, ``SourceInfo``), RFC 3339 times;
- :mod:`.decision` — what is answered: ``Decision``, ``Action``/``ActionKind``, ``Event``,
  ``status_patch``;
- :mod:`.draft` — ``StatusDraft``, the decision being written (phase, conditions, events,
  actions; ``fail``/``succeed``);
- :mod:`.machine` — ``decide`` as a sequence of named steps, ``decide_blocked``,
  ``decide_failure``;
- :mod:`.conditions`, :mod:`.results` (worker results and failures), :mod:`.lifetime`
  (deadline, TTL), :mod:`.kueue` (Workload activation), :mod:`.ownership` (whose child,
  refused creates).

The names below are re-exported so that ``from torchyard.state import X`` works for all of
them.
"""

from torchyard.state.conditions import (
    clear_condition,
    condition_true,
    get_condition,
    set_condition,
)
from torchyard.state.decision import Action, ActionKind, Decision, Event, status_patch
from torchyard.state.draft import StatusDraft, worker_counts, worker_selector
from torchyard.state.kueue import WorkloadStep, workload_step
from torchyard.state.lifetime import deadline_at, lifetime_due, lifetime_next, ttl_at
from torchyard.state.machine import decide, decide_blocked, decide_failure
from torchyard.state.observed import (
    JobInfo,
    JobView,
    Observed,
    PodInfo,
    SourceInfo,
    Status,
    parse_time,
    rfc3339,
    slim_job,
)
from torchyard.state.ownership import (
    CHILD_WHAT,
    GANG_SCHEDULER_OF_GROUP,
    Refusal,
    classify_existing,
    classify_refusal,
    controlled_by,
    controller_ref,
)
from torchyard.state.podsecurity import pod_security_refusal
from torchyard.state.results import attempt_is_retryable, parse_result, result_status

__all__ = [
    "CHILD_WHAT",
    "GANG_SCHEDULER_OF_GROUP",
    "Action",
    "ActionKind",
    "Decision",
    "Event",
    "JobInfo",
    "JobView",
    "Observed",
    "PodInfo",
    "Refusal",
    "SourceInfo",
    "Status",
    "StatusDraft",
    "WorkloadStep",
    "attempt_is_retryable",
    "classify_existing",
    "classify_refusal",
    "clear_condition",
    "condition_true",
    "controlled_by",
    "controller_ref",
    "deadline_at",
    "decide",
    "decide_blocked",
    "decide_failure",
    "get_condition",
    "lifetime_due",
    "lifetime_next",
    "parse_result",
    "parse_time",
    "pod_security_refusal",
    "result_status",
    "rfc3339",
    "set_condition",
    "slim_job",
    "status_patch",
    "ttl_at",
    "worker_counts",
    "worker_selector",
    "workload_step",
]
