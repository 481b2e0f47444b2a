"""The phase/condition state machine of TrainingJob and CompressionJob — pure.

``decide(view, observed)`` takes what the operator knows about one job (its manifest and
status, the batch Job of the current attempt, the worker pods when they matter, the
referenced TrainingJob of a CompressionJob, the current time) and returns a
:class:`Decision`: the new status, the Kubernetes Events to post and the actions to take.
The reconciler does the I/O; everything here is data in, data out, so the whole lifecycle
is unit-tested without a cluster (tests/unit/test_status.py).

Lifecycle (DESIGN §2-3)::

    (Waiting) -> Pending -> Running -> Succeeded
                    |          |
                    |          +-> Restarting -> Pending/Running   (retryable failure,
                    |                                               restarts < backoffLimit)
                    +-> Suspended -> Pending ...                    (runPolicy.suspend)
    any non-final phase -> Failed (permanent exit code, backoffLimit, deadline, invalid spec)

The batch Job of attempt ``n`` carries ``torchyard.io/restart-count: n``; ``status.restarts``
is the attempt the job should be on. A whole-group restart first writes ``restarts + 1``
(so a crash can never lose the count) and then deletes the failed Job; a Job whose attempt is
older than ``status.restarts`` is deleted and a new one created. That makes every step
idempotent and safe to re-run after the operator is killed at any point.

:func:`decide` is a sequence of steps (``_keep_finished`` … ``_track_workers``): each reads
the draft and the observation and either settles the decision (returns it) or leaves it to
the next step (returns None).
"""

from __future__ import annotations

from datetime import datetime

from torchyard.api import CompressionJob, TrainingJob
from torchyard.api.constants import ConditionType, Phase, Reason
from torchyard.state import startup
from torchyard.state.conditions import condition_true, get_condition
from torchyard.state.decision import Action, ActionKind, Decision
from torchyard.state.disruption import (
    counted_restarts,
    describe_attempt_disruption,
    preemptions,
)
from torchyard.state.draft import StatusDraft, worker_counts
from torchyard.state.kueue import (
    job_queue,
    kueue_label_conflict,
    kueue_queue,
    suspend_action,
    workload_action,
)
from torchyard.state.lifetime import deadline_at
from torchyard.state.modelversion_source import wait_for_version
from torchyard.state.observed import JobInfo, JobView, Observed, PodInfo, rfc3339
from torchyard.state.results import (
    attempt_is_retryable,
    describe_pod_failure,
    failed_pod,
    result_of,
)
from torchyard.state.stall import StepTiming, attempt_started, judge_stall, note_stall


def decide(
    view: JobView,
    obs: Observed,
    timing: StepTiming | None = None,
    default_storage: str | None = None,
) -> Decision:
    """The next step for one job. Pure: same inputs, same decision.

    The steps run in order; the first that returns a Decision settles it (a Decision is
    always truthy, so ``or`` moves on only past a step that returned None). ``timing``: rank
    0's step reports, for stall detection (:mod:`torchyard.state.stall`); None: not judged.
    ``default_storage``: the operator's output store for jobs that set none (``status.logs``).
    """
    draft = StatusDraft(view, obs.now, default_storage)
    job = obs.job
    if draft.old_phase in Phase.FINISHED:
        return _keep_finished(draft, job)
    if view.parsed is None:
        return _refuse_invalid_spec(draft, job)
    if draft.old_phase is None:
        draft.phase(Phase.PENDING, "accepted")
    settled = (
        _wait_for_source(draft, obs)
        or _enforce_deadline(draft, job)
        or _replace_older_attempt(draft, job)
    )
    if settled is not None:
        return settled
    if job is None:
        return _refuse_queue_conflict(draft) or _create_attempt(draft)
    if job.deleting:
        return _wait_for_deletion(draft)
    draft.status["workers"] = worker_counts(job)
    _say_created(draft, job.created)
    return (
        _apply_suspend_policy(draft, job)
        or _succeed_if_complete(draft, job, obs.pods)
        or _handle_failed_attempt(draft, job, obs.pods)
        or _wait_for_admission(draft, job)
        or _watch_for_stall(draft, job, timing)
        or _track_workers(draft, job, obs)
    )


def decide_failure(view: JobView, obs: Observed, reason: str, message: str) -> Decision:
    """Fail the job at once (e.g. the API server refused to create its worker Job)."""
    return StatusDraft(view, obs.now).fail(reason, message, obs.job)


def decide_blocked(view: JobView, obs: Observed, reason: str, message: str) -> Decision:
    """A child could not be created for a reason that may pass (see :func:`classify_refusal`).

    The job keeps its phase (a new or Waiting one becomes Pending), its message says why, the
    ``Created`` condition is False with ``reason``, and a Warning Event is posted when that
    reason is new. Nothing else changes — no ``startTime``, so an ``activeDeadlineSeconds``
    does not run down while a quota holds the job back; the reconciler retries with backoff.
    """
    draft = StatusDraft(view, obs.now)
    status = draft.status
    if status.get("phase") in (None, Phase.WAITING):
        draft.phase(Phase.PENDING, message)
    else:
        status["message"] = message
    before = get_condition(status, ConditionType.CREATED)
    draft.cond(ConditionType.CREATED, False, reason, message)
    if before is None or before.get("status") != "False" or before.get("reason") != reason:
        draft.event(reason, message, warning=True)
    status["workers"] = worker_counts(None)
    return draft.done()


# --------------------------------------------------------------------------- the steps


def _parsed(draft: StatusDraft) -> TrainingJob | CompressionJob:
    assert draft.view.parsed is not None  # decide() refuses an unparsed job first
    return draft.view.parsed


def _keep_finished(draft: StatusDraft, job: JobInfo | None) -> Decision:
    """Final phases are sticky. Only make sure nothing keeps running (a deadline hit while
    the operator was down, a crash between the status write and the stop)."""
    if job is not None and not job.finished and not job.deleting and not job.suspended:
        draft.before(suspend_action(draft.view, job))
    if job is not None:
        draft.status["workers"] = worker_counts(job)
    # A job that finished before the operator cleared Stalled on the way out: the reason
    # of its final condition (Succeeded or Failed, named as its phase).
    final = get_condition(draft.status, str(draft.old_phase)) or {}
    draft.end_stall(str(final.get("reason") or Reason.COMPLETED))
    return draft.done()


def _refuse_invalid_spec(draft: StatusDraft, job: JobInfo | None) -> Decision:
    """An object the API server should have rejected (created before a rule existed, or with
    validation off): refuse it with a clear condition, create nothing."""
    message = "invalid spec: " + "; ".join(draft.view.invalid)
    return draft.fail(Reason.INVALID_SPEC, message[:1000], job)


def _wait_for_source(draft: StatusDraft, obs: Observed) -> Decision | None:
    """A CompressionJob with ``source.trainingJobRef`` waits (Waiting) for that TrainingJob's
    model version before its worker Job is created; it fails if that TrainingJob fails. A job
    starting from a model version (source.modelVersion, initFrom.modelVersion) waits for it."""
    parsed = _parsed(draft)
    if isinstance(parsed, CompressionJob) and parsed.spec.source.model_version:
        return wait_for_version(draft, obs, parsed.spec.source.model_version)
    if isinstance(parsed, TrainingJob) and parsed.spec.init_from is not None:
        ref, field = parsed.spec.init_from.model_version, "spec.initFrom.modelVersion"
        return wait_for_version(draft, obs, ref, field)
    if not isinstance(parsed, CompressionJob) or not parsed.spec.source.training_job_ref:
        return None
    ref = parsed.spec.source.training_job_ref
    if obs.job is not None or condition_true(draft.status, ConditionType.CREATED):
        return None
    if obs.source is None:
        return draft.need_source()
    src = obs.source
    if src.found and src.model:
        draft.cond(
            ConditionType.WAITING,
            False,
            Reason.SOURCE_READY,
            f"TrainingJob {ref} produced model {src.model.get('name')} "
            f"version {src.model.get('version')}",
        )
        if draft.old_phase == Phase.WAITING:
            draft.event(Reason.SOURCE_READY, f"source TrainingJob {ref} has its model")
        return None
    if src.found and src.phase == Phase.FAILED:
        return draft.fail(Reason.SOURCE_FAILED, f"source TrainingJob {ref} failed", None)
    why = (
        f"waiting for TrainingJob {ref} to produce its model"
        if src.found
        else f"waiting for TrainingJob {ref} (not found yet)"
    )
    draft.phase(Phase.WAITING, why)
    if draft.cond(ConditionType.WAITING, True, Reason.WAITING_FOR_SOURCE, why):
        draft.event(Reason.WAITING_FOR_SOURCE, why)
    return draft.done()


def _enforce_deadline(draft: StatusDraft, job: JobInfo | None) -> Decision | None:
    """activeDeadlineSeconds: counted from startTime (reset on resume), not while suspended."""
    policy = _parsed(draft).spec.run_policy
    if policy.suspend or draft.old_phase == Phase.SUSPENDED:
        return None
    at = deadline_at(draft.status, policy.active_deadline_seconds)
    if at is None or draft.now < at:
        return None
    return draft.fail(
        Reason.DEADLINE_EXCEEDED,
        f"the job ran longer than activeDeadlineSeconds={policy.active_deadline_seconds}",
        job,
    )


def _replace_older_attempt(draft: StatusDraft, job: JobInfo | None) -> Decision | None:
    """A Job of an older attempt (the previous group, being replaced) is removed first; a Job
    of a newer one means the count write was lost but the attempt exists: trust the Job."""
    if job is None:
        return None
    if job.restart_count < draft.restarts:
        if not job.deleting:
            draft.before(Action(ActionKind.DELETE_JOB, job_uid=job.uid))
        draft.status["workers"] = worker_counts(None)
        return draft.done()
    if job.restart_count > draft.restarts:
        draft.status["restarts"] = job.restart_count
    return None


def _refuse_queue_conflict(draft: StatusDraft) -> Decision | None:
    """The queue-name label and spec.scheduling.queue name different queues: fail before a
    worker Job is created (an invalid job, as the API server cannot see labels from the
    spec's rules). Checked per attempt: a running attempt keeps the queue its Job has."""
    conflict = kueue_label_conflict(_parsed(draft))
    if conflict is None:
        return None
    return draft.fail(Reason.INVALID_SPEC, f"invalid spec: {conflict}", None)


def _create_attempt(draft: StatusDraft) -> Decision:
    """No batch Job for the current attempt: create it (the children are idempotent)."""
    spec = _parsed(draft).spec
    status = draft.status
    draft.before(Action(ActionKind.CREATE, restart_count=draft.restarts))
    status["workers"] = worker_counts(None)
    _say_created(draft)
    if spec.run_policy.suspend:
        if status.get("phase") != Phase.SUSPENDED:
            draft.phase(Phase.SUSPENDED, "created suspended (runPolicy.suspend)")
            draft.cond(ConditionType.SUSPENDED, True, Reason.SUSPENDED, "runPolicy.suspend is true")
            draft.event(Reason.SUSPENDED, "job created suspended")
    elif status.get("phase") == Phase.SUSPENDED:
        return _resume(draft, None)
    elif status.get("phase") in (None, Phase.PENDING, Phase.WAITING):
        # Already what the first look at the new Job would write (its start, no worker
        # ready yet), so creating a Job costs one status write, not two.
        draft.phase(Phase.PENDING, f"0/{spec.workers} workers ready")
        if job_queue(_parsed(draft)) is None:  # Kueue may hold it: starts on admission
            status.setdefault("startTime", rfc3339(draft.now))
    return draft.done()


def _say_created(draft: StatusDraft, since: datetime | None = None) -> None:
    """``Created`` True (and its Event) once the attempt's Job is being created or exists: also
    on the path that finds the Job already there, where the status did not say so yet (the
    write was held for the workers to start — controller/status_writer.py — or lost when the
    operator stopped). ``since``: that Job's creation time."""
    status = draft.status
    if condition_true(status, ConditionType.CREATED):
        return
    if get_condition(status, ConditionType.CREATED) is not None:
        # It was blocked (decide_blocked): the message said why, and no longer applies.
        status["message"] = "worker Job created"
    draft.cond(ConditionType.CREATED, True, Reason.JOB_CREATED, "worker Job created", since)
    workers = _parsed(draft).spec.workers
    draft.event(Reason.JOB_CREATED, f"created the worker Job ({workers} workers)")


def _wait_for_deletion(draft: StatusDraft) -> Decision:
    """The current attempt's Job is being deleted: no workers; decide again once it is gone."""
    draft.status["workers"] = worker_counts(None)
    return draft.done()


def _apply_suspend_policy(draft: StatusDraft, job: JobInfo) -> Decision | None:
    """runPolicy.suspend: pods removed, state kept; resumed when it turns false."""
    queue = kueue_queue(draft.view, job)
    if _parsed(draft).spec.run_policy.suspend:
        return _hold_suspended(draft, job, queue)
    if draft.old_phase == Phase.SUSPENDED:
        return _resume(draft, job)
    if job.suspended and not job.finished and queue is None:
        # Level-based: the Job must not stay suspended when the job is not (a Job created
        # suspended while runPolicy.suspend flipped). Under Kueue (also when gang `auto`
        # chose it: the Job has Kueue's queue label), Kueue un-suspends it.
        draft.before(Action(ActionKind.RESUME_JOB, job_uid=job.uid))
    return None


def _hold_suspended(draft: StatusDraft, job: JobInfo, queue: str | None) -> Decision | None:
    """Suspend the attempt's Job (or deactivate its Kueue Workload) and say so; a Job that
    already finished is left to the outcome steps."""
    if job.finished:
        return None
    if queue is not None:
        # Kueue owns the Job's spec.suspend (it would un-suspend an admitted Job): its
        # Workload is deactivated instead. Level-based: also a Job Kueue still holds
        # (suspended, not admitted) must not be admitted; the reconciler patches only
        # a Workload that is still active.
        draft.before(workload_action(job, active=False))
    elif not job.suspended:
        draft.before(Action(ActionKind.SUSPEND_JOB, job_uid=job.uid))
    reason, message = Reason.SUSPENDED, "runPolicy.suspend is true"
    if queue is not None:
        reason = Reason.WORKLOAD_DEACTIVATED
        message = (
            f"runPolicy.suspend is true: the Kueue Workload of the worker Job is "
            f"deactivated (spec.active: false); Kueue evicts and suspends the Job and "
            f"releases its quota in LocalQueue {queue}"
        )
    if draft.old_phase != Phase.SUSPENDED:
        draft.phase(Phase.SUSPENDED, "suspended: worker pods removed, state kept")
        draft.cond(ConditionType.SUSPENDED, True, reason, message)
        draft.clear(ConditionType.RUNNING, Reason.SUSPENDED, "the job is suspended")
        draft.event(reason, "job suspended: worker pods are removed")
        return draft.done()
    draft.cond(ConditionType.SUSPENDED, True, reason, message)  # e.g. created suspended
    return draft.done()


def _resume(draft: StatusDraft, job: JobInfo | None) -> Decision:
    """runPolicy.suspend turned false on a Suspended job (with its Job, or none yet): the
    workers start again and startTime is reset."""
    if job is not None:
        queue = kueue_queue(draft.view, job)
        if queue is not None and not job.finished:
            # Kueue queues the Job again; it is un-suspended on admission (QueuedByKueue,
            # then AdmittedByKueue, as for a new job).
            draft.before(workload_action(job, active=True))
        elif queue is None and job.suspended:
            draft.before(Action(ActionKind.RESUME_JOB, job_uid=job.uid))
    draft.phase(Phase.PENDING, "resumed: waiting for workers")
    draft.cond(ConditionType.SUSPENDED, False, Reason.RESUMED, "runPolicy.suspend is false")
    draft.status["startTime"] = rfc3339(draft.now)
    draft.event(Reason.RESUMED, "job resumed: workers start again (startTime reset)")
    return draft.done()


def _succeed_if_complete(
    draft: StatusDraft, job: JobInfo, pods: tuple[PodInfo, ...] | None
) -> Decision | None:
    """The Job completed: the job succeeded, with rank 0's result in its status."""
    if not job.complete:
        return None
    if pods is None:
        return draft.need_pods()
    for key, value in result_of(draft.view.kind, pods).items():
        draft.status[key] = value
    return draft.succeed(f"all {_parsed(draft).spec.workers} workers succeeded", job)


def _handle_failed_attempt(
    draft: StatusDraft, job: JobInfo, pods: tuple[PodInfo, ...] | None
) -> Decision | None:
    """The Job failed: fail the job (permanent exit code, backoffLimit reached) or restart
    the whole group."""
    if job.failed_reason is None:
        return None
    if pods is None:
        return draft.need_pods()
    policy = _parsed(draft).spec.run_policy
    disrupted = describe_attempt_disruption(job, pods)
    if disrupted is not None:  # preemption, eviction, node loss: not the workload's failure
        draft.status["preemptions"] = preemptions(draft.status) + 1
        return _restart_group(draft, job, disrupted, Reason.PREEMPTED)
    pod = failed_pod(pods)
    what = describe_pod_failure(pod)
    if job.failed_reason not in ("PodFailurePolicy", "BackoffLimitExceeded") and pod is None:
        what = f"{what} ({job.failed_reason}: {job.failed_message or ''})".strip()
    if not attempt_is_retryable(draft.view, job, pod):
        return draft.fail(Reason.PERMANENT_FAILURE, f"{what}; not retryable", job)
    restarts = counted_restarts(draft.status)
    if restarts >= policy.backoff_limit:
        return draft.fail(
            Reason.BACKOFF_LIMIT_EXCEEDED,
            f"{what}; backoffLimit {policy.backoff_limit} reached after {restarts} restart(s)",
            job,
        )
    return _restart_group(draft, job, what)


def _watch_for_stall(
    draft: StatusDraft, job: JobInfo, timing: StepTiming | None
) -> Decision | None:
    """A running job whose rank 0 stopped reporting steps: the Stalled condition (and, with
    ``stallAction: Restart``, a group restart from the newest checkpoint, counted against
    backoffLimit like a retryable failure)."""
    if draft.old_phase != Phase.RUNNING or job.finished:
        return None
    policy = _parsed(draft).spec.run_policy
    started = attempt_started(draft.status)
    verdict = judge_stall(timing, policy.stall_timeout_seconds, started, draft.now)
    note_stall(draft, verdict)
    if verdict is None or not verdict.stalled or policy.stall_action != "Restart":
        return None
    what = f"{Reason.STALLED}: {verdict.message}"
    if counted_restarts(draft.status) >= policy.backoff_limit:
        return draft.fail(
            Reason.BACKOFF_LIMIT_EXCEEDED,
            f"{what}; backoffLimit {policy.backoff_limit} reached after "
            f"{counted_restarts(draft.status)} "
            "restart(s)",
            job,
        )
    return _restart_group(draft, job, what, Reason.STALLED)


def _restart_group(
    draft: StatusDraft, job: JobInfo, what: str, reason: str = Reason.RETRYABLE_FAILURE
) -> Decision:
    """Count the restart first (written before the failed Job is deleted), then delete it.
    A disruption's restart (``reason`` Preempted) is counted in status.preemptions by the
    caller and not against backoffLimit."""
    restarts, limit = draft.restarts, _parsed(draft).spec.run_policy.backoff_limit
    draft.status["restarts"] = restarts + 1
    counted = f"restart {counted_restarts(draft.status)}/{limit}"
    if reason == Reason.PREEMPTED:
        counted = f"preemption {preemptions(draft.status)}, not counted against backoffLimit"
    message = f"{what}; restarting the whole group from the newest checkpoint ({counted})"
    queue = kueue_queue(draft.view, job)
    if queue is not None:
        # The failed Job's Workload finished with it and Kueue released its quota; the next
        # attempt is a new Job, so a new Workload that is admitted anew (docs/operator.md).
        message += f"; the new worker Job queues again in LocalQueue {queue}"
    draft.phase(Phase.RESTARTING, message)
    draft.cond(ConditionType.RESTARTING, True, reason, message)
    draft.clear(ConditionType.RUNNING, reason, "the worker group is restarting")
    draft.event(reason, message, warning=True)
    draft.after(Action(ActionKind.DELETE_JOB, job_uid=job.uid))
    draft.status["workers"] = worker_counts(None)
    return draft.done()


def _wait_for_admission(draft: StatusDraft, job: JobInfo) -> Decision | None:
    """A suspended Job of a job that is not suspended waits for its queue to admit it."""
    if not job.suspended:
        return None
    queue = kueue_queue(draft.view, job)
    if queue is None:
        draft.phase(Phase.PENDING, "waiting for admission (the Job is suspended by its queue)")
        return draft.done()
    # Kueue holds it (not admitted yet, or evicted/preempted): no pods, quota not given.
    message = (
        f"queued by Kueue in LocalQueue {queue}: waiting for admission "
        "(the worker Job stays suspended until Kueue admits it)"
    )
    if draft.old_phase == Phase.RESTARTING:
        # A group restart under Kueue: the new attempt's Job waits for admission like a new
        # job, and the job still says it is restarting (Restarting stays True until it runs).
        draft.status["message"] = f"restarting: {message}"
    else:
        draft.phase(Phase.PENDING, message)
    if draft.cond(ConditionType.SUSPENDED, True, Reason.QUEUED_BY_KUEUE, message):
        draft.event(Reason.QUEUED_BY_KUEUE, message)
    draft.clear(ConditionType.RUNNING, Reason.QUEUED_BY_KUEUE, "the worker Job is suspended")
    draft.status["workers"] = worker_counts(None)
    return draft.done()


def _note_kueue_admission(draft: StatusDraft, job: JobInfo) -> None:
    """Suspended True with reason QueuedByKueue: Kueue held the Job until now, so it was just
    admitted — startTime counts from admission, as on resume."""
    queue = kueue_queue(draft.view, job)
    held = get_condition(draft.status, ConditionType.SUSPENDED)
    if queue is not None and held and held.get("reason") == Reason.QUEUED_BY_KUEUE:
        message = f"admitted by Kueue (LocalQueue {queue}): workers start"
        draft.cond(ConditionType.SUSPENDED, False, Reason.ADMITTED_BY_KUEUE, message)
        draft.event(Reason.ADMITTED_BY_KUEUE, message)
        draft.status["startTime"] = rfc3339(draft.now)


def _track_workers(draft: StatusDraft, job: JobInfo, obs: Observed) -> Decision:
    """The attempt runs (or waits for its pods): Running once every worker is up; while one
    is not, its pods are looked at (:mod:`torchyard.state.startup`)."""
    _note_kueue_admission(draft, job)
    status, workers, restarts = draft.status, _parsed(draft).spec.workers, draft.restarts
    if not status.get("startTime"):  # the attempt started when its Job was created
        status["startTime"] = rfc3339(job.created or draft.now)
    up = job.ready + job.succeeded
    if up >= workers and job.active + job.succeeded >= workers:
        message = f"{workers}/{workers} workers running"
        if restarts:
            message += f" (after {restarts} restart(s))"
        was_restarting = condition_true(status, ConditionType.RESTARTING)
        draft.phase(Phase.RUNNING, message)
        if draft.cond(ConditionType.RUNNING, True, Reason.WORKERS_RUNNING, message):
            draft.event(Reason.WORKERS_RUNNING, message)
        if was_restarting:
            draft.cond(ConditionType.RESTARTING, False, Reason.WORKERS_RUNNING, "group restarted")
        return draft.done()
    message = startup.note_stuck_worker(draft, job, obs, f"{up}/{workers} workers ready")
    if status.get("phase") == Phase.RESTARTING:
        status["message"] = f"restarting: {message}"
    elif status.get("phase") == Phase.RUNNING:
        status["message"] = message  # a worker finished early or is not ready: still running
    else:
        draft.phase(Phase.PENDING, message)
    return draft.done()
