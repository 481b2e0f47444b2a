"""Workers that cannot start — pure: a worker pod whose container waits on something that will
not pass by itself (an image that cannot be pulled, a missing Secret or ConfigMap).

Kubernetes keeps such a pod Pending for ever (the kubelet retries the pull with backoff), and
its batch Job does not change, so nothing would tell the job. While not every worker is up the
operator looks at the pods (and looks again every :data:`RECHECK_SECONDS`), once a pod has
waited :data:`RECHECK_SECONDS`: before that its pods are still being created, scheduled and
pulled, and every change of the Job's counts would look again (about five lists per job in a
burst, each a label-selected list over the whole namespace). The controller answers a look
from one list of the namespace's scheduled Pending worker pods that every job shares for a few
seconds (:mod:`torchyard.controller.waiting_pods`); a pod stuck this way
gives the job's ``Running`` condition False with reason ``ImagePullFailed`` or
``WorkerStartFailed`` and a message naming the worker, the kubelet's reason and its message
(which names the image), plus one Warning Event. The job stays Pending: a pull can succeed once
the image is pushed or the pull secret fixed, and ``activeDeadlineSeconds`` bounds the wait.
"""

from __future__ import annotations

from typing import Final

from torchyard.api.constants import ConditionType, Reason
from torchyard.state.conditions import get_condition
from torchyard.state.draft import StatusDraft
from torchyard.state.observed import JobInfo, Observed, PodInfo

RECHECK_SECONDS: Final = 10.0
"""How old an attempt is when its pods are first looked at, and the shortest wait between
two looks while its workers are not all up."""
MAX_RECHECK_SECONDS: Final = 60.0
"""The longest wait between two looks: a third of the attempt's age, at most this. Workers
waiting long (for GPUs, for a queue) are not listed every 10 s: with hundreds of such jobs that
was dozens of namespace-wide pod lists a second."""
IMAGE_REASONS: Final = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
)
"""The kubelet's waiting reasons for an image it cannot get."""
CONFIG_REASONS: Final = frozenset({"CreateContainerConfigError", "CreateContainerError"})
"""The kubelet's waiting reasons for a container it cannot create (a missing Secret...)."""


def stuck_pod(pods: tuple[PodInfo, ...]) -> PodInfo | None:
    """The lowest-rank pod whose container waits for a reason that does not pass by itself."""
    stuck = [p for p in pods if p.waiting_reason in IMAGE_REASONS | CONFIG_REASONS]
    return min(stuck, key=lambda p: (p.index is None, p.index or 0)) if stuck else None


def stuck_reason(pod: PodInfo) -> str:
    """The job's condition reason for ``pod``."""
    return (
        Reason.IMAGE_PULL_FAILED
        if pod.waiting_reason in IMAGE_REASONS
        else (Reason.WORKER_START_FAILED)
    )


def describe_stuck(pod: PodInfo) -> str:
    """ "worker N cannot start: ImagePullBackOff: Back-off pulling image "x"" """
    rank = f"worker {pod.index}" if pod.index is not None else f"pod {pod.name}"
    detail = f": {pod.waiting_message.strip()[:300]}" if pod.waiting_message else ""
    return f"{rank} cannot start: {pod.waiting_reason}{detail}"


def note_stuck_worker(draft: StatusDraft, job: JobInfo, obs: Observed, message: str) -> str:
    """``message`` (the job's, while not every worker is up), with the stuck worker's cause
    added and put in the Running condition when one is stuck. Without pods listed the
    decision asks for them once a pod has waited :data:`RECHECK_SECONDS` and the last look is
    an interval ago — a third of the wait, from :data:`RECHECK_SECONDS` to
    :data:`MAX_RECHECK_SECONDS` — and the job is looked at again when the next one is due:
    the Job's own events (its counts changing as pods are created) do not list them.

    Only while one of the Job's active pods is not ready (``active > ready``), and the clock
    runs from when that began (``Observed.unready_since``) when it is later than the Job's
    creation: a pod not yet created cannot be stuck, and in a burst the Job controller creates
    the pods many seconds after their Job — looking then found nothing, or pods a moment old,
    and cost a namespace-wide pod list per job."""
    if obs.pods is None and job.active <= job.ready:
        return message
    waiting_from = max((t for t in (job.created, obs.unready_since) if t), default=None)
    age = (draft.now - waiting_from).total_seconds() if waiting_from else RECHECK_SECONDS
    interval = min(max(RECHECK_SECONDS, age / 3), MAX_RECHECK_SECONDS)
    draft.decision.recheck_after = interval
    pods = obs.pods
    if pods is None:
        since = (draft.now - obs.pods_listed_at).total_seconds() if obs.pods_listed_at else None
        if age < RECHECK_SECONDS:
            draft.decision.recheck_after = RECHECK_SECONDS - age
        elif since is not None and since < interval:
            draft.decision.recheck_after = interval - since
        else:
            draft.decision.needs_pods = True
        return message
    stuck = stuck_pod(pods)
    if stuck is None:
        return message
    message += f"; {describe_stuck(stuck)}"
    reason = stuck_reason(stuck)
    before = get_condition(draft.status, ConditionType.RUNNING) or {}
    draft.cond(ConditionType.RUNNING, False, reason, message)
    if before.get("reason") != reason:  # one Event per cause, not one per look
        draft.event(reason, message, warning=True)
    return message


__all__ = [
    "MAX_RECHECK_SECONDS",
    "RECHECK_SECONDS",
    "describe_stuck",
    "note_stuck_worker",
    "stuck_pod",
    "stuck_reason",
]
