"""Disruptions — pure: a failed attempt one of whose pods Kubernetes removed for a reason that
is not the workload's (its ``DisruptionTarget`` condition: scheduler preemption, the eviction
API, taint-based eviction from a lost node, pod GC).

The worker Job's podFailurePolicy fails the Job at once on such a pod
(builders/workers.py), and the operator restarts the whole group from the newest checkpoint —
the ranks checkpointed their current step on SIGTERM — without counting the restart against
``backoffLimit``: ``status.restarts`` counts every group restart (it numbers the attempts),
``status.preemptions`` those caused by a disruption, and ``backoffLimit`` bounds the
difference (docs/operator.md, "Preemption and node loss").
"""

from __future__ import annotations

import re

from torchyard.api.contract import POD_DISRUPTION_CONDITION
from torchyard.state.observed import JobInfo, PodInfo, Status

# The Job controller's message when a podFailurePolicy rule on a pod condition fails the Job
# (pkg/controller/job/pod_failure_policy.go): "Pod <ns>/<name> has condition <type> matching
# FailJob rule at index <i>".
_JOB_MESSAGE = re.compile(
    rf"Pod (?:[^/\s]+)/(?P<pod>\S+) has condition {POD_DISRUPTION_CONDITION} matching"
)


def disrupted_pod(pods: tuple[PodInfo, ...]) -> PodInfo | None:
    """The disrupted pod of the lowest rank (None: no pod of the attempt was disrupted)."""
    hit = [p for p in pods if p.disruption is not None]
    return min(hit, key=lambda p: (p.index is None, p.index or 0)) if hit else None


def describe_disruption(pod: PodInfo) -> str:
    """ "worker N was disrupted (PreemptionByScheduler: …)" — status, Restarting condition,
    Event."""
    who = f"worker {pod.index}" if pod.index is not None else f"pod {pod.name}"
    return f"{who} was disrupted ({pod.disruption})"


def describe_job_disruption(job: JobInfo) -> str | None:
    """The disruption the Job's own Failed condition names, for when the disrupted pod is
    already gone (pod GC deletes the pods of a lost node once it marked them Failed)."""
    if job.failed_reason != "PodFailurePolicy":
        return None
    found = _JOB_MESSAGE.search(job.failed_message or "")
    return None if found is None else f"pod {found['pod']} was disrupted (DisruptionTarget)"


def describe_attempt_disruption(job: JobInfo, pods: tuple[PodInfo, ...]) -> str | None:
    """Why the failed attempt was disrupted: its disrupted pod, else the Job's message;
    None when it was not."""
    pod = disrupted_pod(pods)
    return describe_disruption(pod) if pod is not None else describe_job_disruption(job)


def preemptions(status: Status) -> int:
    """``status.preemptions``: group restarts caused by a disruption."""
    return int(status.get("preemptions") or 0)


def counted_restarts(status: Status) -> int:
    """The restarts ``backoffLimit`` bounds: every group restart but the disruptions'."""
    return max(0, int(status.get("restarts") or 0) - preemptions(status))
