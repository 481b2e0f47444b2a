"""The phase/condition state machine of TrainingJob and CompressionJob — pure.

``decide(view, observed)`` takes what the operator knows about one job (its manifest and
status, the batch Job of the current attempt, the worker pods when they matter, the
referenced TrainingJob of a CompressionJob, the current time) and returns a
:class:`Decision`: the new status, the Kubernetes Events to post and the actions to take.
The handlers do the I/O; everything here is data in, data out, so the whole lifecycle is
unit-tested without a cluster (tests/unit/test_status.py).

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
"""

from __future__ import annotations

import contextlib
import enum
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from torchyard.api import CompressionJob, TrainingJob, contract
from torchyard.api.common import ModelVersionStatus
from torchyard.api.compression import CompressionReport, Trial
from torchyard.api.constants import (
    COMPRESSION_CHILD_SUFFIX,
    COMPRESSION_JOB_KIND,
    TRAINING_JOB_KIND,
    ConditionType,
    Phase,
    Reason,
)
from torchyard.api.contract import Annotation, Label
from torchyard.api.manifest import format_validation_error
from torchyard.api.training import CheckpointStatus, Progress

Status = dict[str, Any]


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


# --------------------------------------------------------------------------- observed state


@dataclass(frozen=True)
class PodInfo:
    """One worker pod, as far as the state machine cares."""

    name: str
    index: int | None
    phase: str
    exit_code: int | None = None
    reason: str | None = None
    message: str | None = None

    @classmethod
    def from_dict(cls, pod: dict[str, Any]) -> PodInfo:
        meta = pod.get("metadata") or {}
        ann = meta.get("annotations") or {}
        status = pod.get("status") or {}
        index: int | None
        try:
            index = int(ann[Annotation.COMPLETION_INDEX])
        except (KeyError, TypeError, ValueError):
            index = None
        exit_code = reason = message = None
        for cs in status.get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated")
            if term and (cs.get("name") == "worker" or exit_code is None):
                exit_code = term.get("exitCode")
                reason = term.get("reason")
                message = term.get("message")
        return cls(
            name=str(meta.get("name", "")),
            index=index,
            phase=str(status.get("phase") or "Pending"),
            exit_code=exit_code,
            reason=reason,
            message=message,
        )


@dataclass(frozen=True)
class JobInfo:
    """The batch/v1 Job of the current attempt."""

    name: str
    uid: str
    restart_count: int
    deleting: bool = False
    suspended: bool = False
    active: int = 0
    ready: int = 0
    succeeded: int = 0
    failed: int = 0
    complete: bool = False
    failed_reason: str | None = None
    failed_message: str | None = None
    queue: str | None = None
    """Kueue's LocalQueue (the Job's ``kueue.x-k8s.io/queue-name`` label): Kueue owns its
    ``spec.suspend``."""
    owned: bool = True
    """False: a Job with this job's labels whose controller is another object (an earlier job
    of the same name, deleted and not yet garbage-collected): waited out, never touched."""

    @property
    def finished(self) -> bool:
        return self.complete or self.failed_reason is not None

    @classmethod
    def from_dict(cls, job: dict[str, Any]) -> JobInfo:
        meta = job.get("metadata") or {}
        spec = job.get("spec") or {}
        status = job.get("status") or {}
        try:
            restart = int((meta.get("annotations") or {}).get(Annotation.RESTART_COUNT, "0"))
        except ValueError:
            restart = 0
        complete = False
        failed_reason = failed_message = None
        for c in status.get("conditions") or []:
            if c.get("status") != "True":
                continue
            if c.get("type") == "Complete":
                complete = True
            elif c.get("type") == "Failed":
                failed_reason = c.get("reason") or "Failed"
                failed_message = c.get("message")
        return cls(
            name=str(meta.get("name", "")),
            uid=str(meta.get("uid", "")),
            restart_count=restart,
            deleting=bool(meta.get("deletionTimestamp")),
            suspended=bool(spec.get("suspend")),
            active=int(status.get("active") or 0),
            ready=int(status.get("ready") or 0),
            succeeded=int(status.get("succeeded") or 0),
            failed=int(status.get("failed") or 0),
            complete=complete,
            failed_reason=failed_reason,
            failed_message=failed_message,
            queue=(meta.get("labels") or {}).get(Label.KUEUE_QUEUE_NAME) or None,
        )


@dataclass(frozen=True)
class SourceInfo:
    """The TrainingJob a CompressionJob's ``source.trainingJobRef`` names."""

    found: bool
    phase: str | None = None
    model: dict[str, Any] | None = None


@dataclass(frozen=True)
class Observed:
    """Everything observed about one job's children at ``now``."""

    now: datetime
    job: JobInfo | None = None
    pods: tuple[PodInfo, ...] | None = None
    """Worker pods of the current attempt; None when not listed (see Decision.needs_pods)."""
    source: SourceInfo | None = None


# --------------------------------------------------------------------------- the decision


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
    """Decide again with ``Observed.pods`` filled in (the Job finished: exit codes/results)."""
    needs_source: bool = False
    """Decide again with ``Observed.source`` filled in (CompressionJob trainingJobRef)."""

    @property
    def actions(self) -> list[Action]:
        return [*self.before_status, *self.after_status]


@dataclass(frozen=True)
class JobView:
    """A TrainingJob/CompressionJob as the operator sees it: raw parts plus the parsed model."""

    kind: str
    name: str
    namespace: str
    generation: int
    status: Status
    parsed: TrainingJob | CompressionJob | None
    invalid: list[str] = field(default_factory=list)
    """Validation errors ("field.path: message") when the object does not parse."""

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> JobView:
        meta = dict(body.get("metadata") or {})
        kind = str(body.get("kind") or "TrainingJob")
        parsed: TrainingJob | CompressionJob | None = None
        invalid: list[str] = []
        # Only the parts the API models know: server-managed metadata is not ours to check.
        clean = {
            "apiVersion": body.get("apiVersion"),
            "kind": kind,
            "metadata": {
                k: meta[k] for k in ("name", "namespace", "labels", "annotations") if k in meta
            },
            "spec": body.get("spec") or {},
        }
        model: type[TrainingJob] | type[CompressionJob] = (
            CompressionJob if kind == "CompressionJob" else TrainingJob
        )
        try:
            parsed = model.model_validate(clean)
        except ValidationError as exc:
            invalid = format_validation_error(exc)
        return cls(
            kind=kind,
            name=str(meta.get("name", "")),
            namespace=str(meta.get("namespace", "default")),
            generation=int(meta.get("generation") or 0),
            status=dict(body.get("status") or {}),
            parsed=parsed,
            invalid=invalid,
        )


# --------------------------------------------------------------------------- conditions


def set_condition(
    status: Status,
    ctype: str,
    value: bool,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None = None,
) -> bool:
    """Set one condition; lastTransitionTime moves only when its status changes.
    Returns True when the status value changed (or the condition is new)."""
    conds: list[dict[str, Any]] = [dict(c) for c in status.get("conditions") or []]
    want = "True" if value else "False"
    for c in conds:
        if c.get("type") == ctype:
            changed = c.get("status") != want
            c["status"] = want
            c["reason"] = reason
            c["message"] = message
            if changed or not c.get("lastTransitionTime"):
                c["lastTransitionTime"] = rfc3339(now)
            if generation is not None:
                c["observedGeneration"] = generation
            status["conditions"] = conds
            return changed
    new: dict[str, Any] = {
        "type": ctype,
        "status": want,
        "reason": reason,
        "message": message,
        "lastTransitionTime": rfc3339(now),
    }
    if generation is not None:
        new["observedGeneration"] = generation
    conds.append(new)
    status["conditions"] = conds
    return True


def get_condition(status: Status, ctype: str) -> dict[str, Any] | None:
    for c in status.get("conditions") or []:
        if c.get("type") == ctype:
            return dict(c)
    return None


def condition_true(status: Status, ctype: str) -> bool:
    c = get_condition(status, ctype)
    return c is not None and c.get("status") == "True"


def clear_condition(
    status: Status, ctype: str, reason: str, message: str, now: datetime, gen: int
) -> None:
    """Set a condition False, but only if it exists (absent means never happened)."""
    if get_condition(status, ctype) is not None:
        set_condition(status, ctype, False, reason, message, now, gen)


# --------------------------------------------------------------------------- results


def parse_result(message: str | None) -> dict[str, Any] | None:
    """The worker's result JSON from a termination message (None if it is not one)."""
    if not message:
        return None
    text = message.strip()
    start = text.find("{")
    if start < 0:
        return None
    try:
        value = json.loads(text[start:])
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _dump(model: Any) -> dict[str, Any]:
    out: dict[str, Any] = model.model_dump(by_alias=True, exclude_none=True, mode="json")
    return out


def result_status(kind: str, result: dict[str, Any]) -> Status:
    """The status fields a successful worker's result fills in (validated, unknown keys off)."""
    out: Status = {}

    def take(key: str, model: Any, target: str | None = None) -> None:
        value = result.get(key)
        if value is None:
            return
        with contextlib.suppress(ValidationError):
            out[target or key] = _dump(model.model_validate(value))

    take("model", ModelVersionStatus)
    if kind == "TrainingJob":
        take("lastCheckpoint", CheckpointStatus)
        progress: dict[str, Any] = {}
        for src, dst in (("epoch", "epoch"), ("step", "step"), ("totalSteps", "totalSteps")):
            if isinstance(result.get(src), int):
                progress[dst] = result[src]
        metrics = result.get("metrics") or {}
        if isinstance(metrics, dict):
            for src, dst in (("loss", "loss"), ("accuracy", "accuracy")):
                if isinstance(metrics.get(src), int | float):
                    progress[dst] = float(metrics[src])
        if progress:
            out["progress"] = _dump(Progress.model_validate(progress))
    else:
        take("report", CompressionReport)
        trials = result.get("trials")
        if isinstance(trials, list):
            valid = []
            for t in trials:
                try:
                    valid.append(_dump(Trial.model_validate(t)))
                except ValidationError:
                    continue
            out["trials"] = valid
    return out


# --------------------------------------------------------------------------- helpers


def _failed_pod(pods: tuple[PodInfo, ...]) -> PodInfo | None:
    failed = [p for p in pods if p.phase == "Failed" and p.exit_code not in (None, 0)]
    if not failed:
        failed = [p for p in pods if p.phase == "Failed"]
    return min(failed, key=lambda p: (p.index is None, p.index or 0)) if failed else None


def _describe_pod_failure(pod: PodInfo | None) -> str:
    if pod is None:
        return "a worker failed"
    rank = f"worker {pod.index}" if pod.index is not None else f"pod {pod.name}"
    text = f"{rank} exited with code {pod.exit_code}"
    if pod.reason and pod.reason not in ("Error",):
        text += f" ({pod.reason})"
    result = parse_result(pod.message)
    if result and result.get("message"):
        text += f": {str(result['message'])[:300]}"
    elif pod.message and not result:
        text += f": {pod.message.strip()[-300:]}"
    return text


def is_retryable(view: JobView, job: JobInfo, pod: PodInfo | None) -> bool:
    """Whether a failed attempt may restart the group (before counting backoffLimit)."""
    assert view.parsed is not None
    policy = view.parsed.spec.run_policy
    if job.failed_reason == "PodFailurePolicy":
        return False  # a FailJob rule matched: the exit code means "user error"
    return contract.is_retryable(pod.exit_code if pod is not None else None, policy)


def deadline_at(status: Status, active_deadline_seconds: int | None) -> datetime | None:
    start = parse_time(status.get("startTime"))
    if start is None or active_deadline_seconds is None:
        return None
    return start + timedelta(seconds=active_deadline_seconds)


def ttl_at(status: Status, ttl_seconds: int | None) -> datetime | None:
    done = parse_time(status.get("completionTime"))
    if done is None or ttl_seconds is None or status.get("phase") not in Phase.FINISHED:
        return None
    return done + timedelta(seconds=ttl_seconds)


def lifetime_due(body: dict[str, Any], now: datetime) -> str | None:
    """What a lifetime timer must do now: "deadline" (reconcile: the job fails), "ttl"
    (delete the finished job) or None."""
    spec = body.get("spec") or {}
    policy = spec.get("runPolicy") or {}
    status = body.get("status") or {}
    phase = status.get("phase")
    if phase in Phase.FINISHED:
        at = ttl_at(status, policy.get("ttlSecondsAfterFinished"))
        return "ttl" if at is not None and now >= at else None
    if phase == Phase.SUSPENDED or policy.get("suspend"):
        return None
    at = deadline_at(status, policy.get("activeDeadlineSeconds"))
    return "deadline" if at is not None and now >= at else None


def _worker_counts(job: JobInfo | None) -> dict[str, int]:
    if job is None:
        return {"active": 0, "ready": 0, "succeeded": 0, "failed": 0}
    return {
        "active": job.active,
        "ready": job.ready,
        "succeeded": job.succeeded,
        "failed": job.failed,
    }


# --------------------------------------------------------------------------- the machine


class _Builder:
    """Accumulates one decision: status edits, events, actions."""

    def __init__(self, view: JobView, now: datetime) -> None:
        self.view = view
        self.now = now
        self.gen = view.generation
        self.old_phase = view.status.get("phase")
        self.status: Status = json.loads(json.dumps(view.status))  # deep copy
        self.status.setdefault("restarts", 0)
        self.decision = Decision(status=self.status)

    def cond(self, ctype: str, value: bool, reason: str, message: str) -> bool:
        return set_condition(self.status, ctype, value, reason, message, self.now, self.gen)

    def clear(self, ctype: str, reason: str, message: str) -> None:
        clear_condition(self.status, ctype, reason, message, self.now, self.gen)

    def phase(self, phase: str, message: str) -> None:
        self.status["phase"] = phase
        self.status["message"] = message

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.decision.events.append(Event("Warning" if warning else "Normal", reason, message))

    def before(self, action: Action) -> None:
        self.decision.before_status.append(action)

    def after(self, action: Action) -> None:
        self.decision.after_status.append(action)

    def fail(self, reason: str, message: str, job: JobInfo | None) -> Decision:
        """Move to Failed (sticky), stopping whatever still runs."""
        self.phase(Phase.FAILED, message)
        self.cond(ConditionType.FAILED, True, reason, message)
        self.clear(ConditionType.RUNNING, reason, "the job failed")
        self.clear(ConditionType.RESTARTING, reason, "the job failed")
        self.status.setdefault("completionTime", rfc3339(self.now))
        self.event(reason, message, warning=True)
        self._stop_workers(job)
        return self.done()

    def succeed(self, message: str, job: JobInfo | None) -> Decision:
        self.phase(Phase.SUCCEEDED, message)
        self.cond(ConditionType.SUCCEEDED, True, Reason.COMPLETED, message)
        self.cond(ConditionType.RUNNING, False, Reason.COMPLETED, "all workers finished")
        self.clear(ConditionType.RESTARTING, Reason.COMPLETED, "all workers finished")
        self.status.setdefault("completionTime", rfc3339(self.now))
        self.event(Reason.COMPLETED, message)
        self._stop_workers(job)
        return self.done()

    def _stop_workers(self, job: JobInfo | None) -> None:
        policy = (
            self.view.parsed.spec.run_policy.clean_pod_policy
            if self.view.parsed is not None
            else "Running"
        )
        if job is not None and not job.finished and not job.deleting and not job.suspended:
            # Deadline or a lost race: workers still run; suspending the Job removes its
            # active pods and keeps the Job (and the finished pods) for inspection.
            self.before(_suspend_action(self.view, job))
        if job is not None and job.owned and policy in ("Running", "All"):
            # Only the pods of this job's own Job (by its uid), never another's.
            self.before(Action(ActionKind.CLEAN_PODS, job_uid=job.uid, pod_policy=policy))

    def done(self) -> Decision:
        self.status["observedGeneration"] = self.gen
        if self.view.kind == "TrainingJob":
            self.status["selector"] = worker_selector(self.view.kind, self.view.name)
        return self.decision


def worker_selector(kind: str, name: str) -> str:
    """Label selector of a job's worker pods (all attempts)."""
    return f"{Label.JOB_NAME}={name},{Label.JOB_KIND}={kind.lower()}"


def decide_failure(view: JobView, obs: Observed, reason: str, message: str) -> Decision:
    """Fail the job at once (e.g. the API server refused to create its worker Job)."""
    return _Builder(view, obs.now).fail(reason, message, obs.job)


def decide_blocked(view: JobView, obs: Observed, reason: str, message: str) -> Decision:
    """A child could not be created for a reason that may pass (see :func:`classify_refusal`).

    The job keeps its phase (a new or Waiting one becomes Pending), its message says why, the
    ``Created`` condition is False with ``reason``, and a Warning Event is posted when that
    reason is new. Nothing else changes — no ``startTime``, so an ``activeDeadlineSeconds``
    does not run down while a quota holds the job back; the reconciler retries with backoff.
    """
    b = _Builder(view, obs.now)
    status = b.status
    if status.get("phase") in (None, Phase.WAITING):
        b.phase(Phase.PENDING, message)
    else:
        status["message"] = message
    before = get_condition(status, ConditionType.CREATED)
    b.cond(ConditionType.CREATED, False, reason, message)
    if before is None or before.get("status") != "False" or before.get("reason") != reason:
        b.event(reason, message, warning=True)
    status["workers"] = _worker_counts(None)
    return b.done()


@dataclass(frozen=True)
class Refusal:
    """What the API server's refusal to create one of a job's children means for the job."""

    reason: str
    message: str
    temporary: bool
    """True: the cause may pass (a quota is raised or other jobs finish, a gang scheduler is
    installed, the operator's RBAC is fixed) — keep the job, say why, retry with backoff
    (:func:`decide_blocked`). False: the job cannot run as written — fail it
    (:func:`decide_failure`)."""


CHILD_WHAT = {
    "Job": "worker Job",
    "ConfigMap": "spec ConfigMap",
    "Service": "headless Service",
    "PodGroup": "PodGroup",
}
GANG_SCHEDULER_OF_GROUP = {  # PodGroup API group -> (gang mode, who serves it)
    "scheduling.volcano.sh": ("volcano", "Volcano"),
    "scheduling.x-k8s.io": ("coscheduling", "the scheduler-plugins coscheduling plugin"),
}


def classify_refusal(
    child_kind: str, api_version: str, code: int, api_message: str, gang: str = ""
) -> Refusal | None:
    """The meaning of an error status on creating a child (``child_kind`` at ``api_version``),
    or None for an ordinary error (retried a bounded number of times, no status change).

    - 403 "exceeded quota" (a ResourceQuota on the object count; also "status unknown for
      quota", a quota the quota controller has not counted yet): temporary, ``QuotaExceeded``;
    - 404 on a PodGroup (the cluster does not serve that API: no gang scheduler installed):
      temporary, ``GangSchedulerMissing``, naming ``spec.scheduling.gang`` (``gang``);
    - 403 "admission webhook ... denied": a policy judged the object as written — like 400
      and 422 (invalid), the job fails: ``InvalidSpec``;
    - any other 403 (RBAC: the operator's ServiceAccount lacks the permission; a namespace
      being deleted): temporary, ``CreateForbidden`` — the job is fine, the operator's
      permissions are not, and fixing them lets the job proceed.
    """
    what = CHILD_WHAT.get(child_kind, child_kind)
    group, _, version = api_version.rpartition("/")
    if code == 403 and ("exceeded quota" in api_message or "unknown for quota" in api_message):
        return Refusal(
            Reason.QUOTA_EXCEEDED,
            f"the {what} cannot be created: {api_message} — waiting for the namespace's "
            "ResourceQuota to allow it (retried with backoff)",
            temporary=True,
        )
    if code == 404 and child_kind == "PodGroup":
        _, who = GANG_SCHEDULER_OF_GROUP.get(group, ("", "its gang scheduler"))
        return Refusal(
            Reason.GANG_SCHEDULER_MISSING,
            f"spec.scheduling.gang is {gang or '?'}, but this cluster does not serve the "
            f"{group}/{version} PodGroup API ({who} is not installed): install it, or set "
            "spec.scheduling.gang to auto or none; retrying until the API exists",
            temporary=True,
        )
    if code == 403 and "admission webhook" not in api_message:
        mode, _ = GANG_SCHEDULER_OF_GROUP.get(group, ("", ""))
        chart = f"; the Helm chart grants it with rbac.podGroups.{mode}=true" if mode else ""
        return Refusal(
            Reason.CREATE_FORBIDDEN,
            f"the operator may not create the {what}: {api_message} — grant the operator's "
            f"ServiceAccount this permission (docs/operator.md, RBAC{chart}); retrying with "
            "backoff",
            temporary=True,
        )
    if code in (400, 403, 422):
        return Refusal(
            Reason.INVALID_SPEC, f"the API server refused the {what}: {api_message}", False
        )
    return None


def controller_ref(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The ownerReference with ``controller: true`` of an object (a dict as the API returns
    it), or None."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return dict(ref)
    return None


def controlled_by(obj: dict[str, Any], owner_uid: str | None) -> bool:
    """True when the object's controller ownerReference names ``owner_uid`` — the only proof
    that an object (a child found by name) is this job's. Names and labels prove nothing:
    another job, an earlier job of the same name or a user may have made it."""
    ref = controller_ref(obj)
    return bool(owner_uid) and ref is not None and ref.get("uid") == owner_uid


def classify_existing(
    child_kind: str,
    existing: dict[str, Any],
    job_kind: str,
    job_name: str,
    job_uid: str,
) -> Refusal | None:
    """What an existing object that holds a child's name (a create answered 409) means.

    None when it is this job's own (its controller ownerReference has the job's uid): the
    child exists, go on. Otherwise the name is taken — by another job's child (a
    CompressionJob ``x`` and a TrainingJob ``x-cj`` both name theirs ``x-cj``), by what an
    earlier job of the same name left for the garbage collector, or by an object a user made:
    the job must not adopt, change or delete it. That may pass (the other object is deleted),
    so it is temporary (``NameConflict``, retried with backoff like :func:`classify_refusal`'s
    temporary refusals), and the message names the object, its owner and what to do.
    """
    if controlled_by(existing, job_uid):
        return None
    meta = existing.get("metadata") or {}
    what = f"{CHILD_WHAT.get(child_kind, child_kind)} {meta.get('name', '?')}"
    going = " (being deleted)" if meta.get("deletionTimestamp") else ""
    ref = controller_ref(existing)
    retry = "; retrying with backoff until the name is free"
    if ref is None:
        return Refusal(
            Reason.NAME_CONFLICT,
            f"the {what} already exists{going} and is not owned by any job (no controller "
            f"ownerReference): torchyard never adopts, changes or deletes it — delete or "
            f"rename that object, or rename this {job_kind}{retry}",
            temporary=True,
        )
    owner = f"{ref.get('kind', '?')} {ref.get('name', '?')}"
    if ref.get("kind") == job_kind and ref.get("name") == job_name:
        return Refusal(
            Reason.NAME_CONFLICT,
            f"the {what} still belongs to an earlier {owner} (uid {ref.get('uid')}), deleted "
            f"and not yet garbage-collected{going}: waiting for it to go{retry}",
            temporary=True,
        )
    hint = ""
    if ref.get("kind") in (TRAINING_JOB_KIND, COMPRESSION_JOB_KIND):
        hint = (
            f" (a {TRAINING_JOB_KIND}'s children are named after it, a "
            f"{COMPRESSION_JOB_KIND}'s <name>{COMPRESSION_CHILD_SUFFIX})"
        )
    return Refusal(
        Reason.NAME_CONFLICT,
        f"the {what} already exists{going} and belongs to {owner}, not to this {job_kind} "
        f"{job_name}: torchyard never adopts, changes or deletes it — rename this {job_kind} "
        f"or the {owner}{hint}, or delete the {owner}{retry}",
        temporary=True,
    )


def decide(view: JobView, obs: Observed) -> Decision:
    """The next step for one job. Pure: same inputs, same decision."""
    b = _Builder(view, obs.now)
    status = b.status
    job = obs.job
    phase = status.get("phase")

    if phase in Phase.FINISHED:
        # Final phases are sticky. Only make sure nothing keeps running (a deadline hit
        # while the operator was down, a crash between the status write and the stop).
        if job is not None and not job.finished and not job.deleting and not job.suspended:
            b.before(_suspend_action(view, job))
        if job is not None:
            status["workers"] = _worker_counts(job)
        return b.done()

    if view.parsed is None:
        # An object the API server should have rejected (created before a rule existed,
        # or with validation off): refuse it with a clear condition, create nothing.
        message = "invalid spec: " + "; ".join(view.invalid)
        return b.fail(Reason.INVALID_SPEC, message[:1000], job)

    spec = view.parsed.spec
    policy = spec.run_policy
    restarts = int(status.get("restarts") or 0)

    if phase is None:
        b.phase(Phase.PENDING, "accepted")

    # CompressionJob: wait for the referenced TrainingJob's model version.
    if isinstance(view.parsed, CompressionJob) and view.parsed.spec.source.training_job_ref:
        ref = view.parsed.spec.source.training_job_ref
        if job is None and not condition_true(status, ConditionType.CREATED):
            if obs.source is None:
                b.decision.needs_source = True
                return b.done()
            src = obs.source
            if src.found and src.model:
                b.cond(
                    ConditionType.WAITING,
                    False,
                    Reason.SOURCE_READY,
                    f"TrainingJob {ref} produced model {src.model.get('name')} "
                    f"version {src.model.get('version')}",
                )
                if b.old_phase == Phase.WAITING:
                    b.event(Reason.SOURCE_READY, f"source TrainingJob {ref} has its model")
            elif src.found and src.phase == Phase.FAILED:
                return b.fail(Reason.SOURCE_FAILED, f"source TrainingJob {ref} failed", None)
            else:
                why = (
                    f"waiting for TrainingJob {ref} to produce its model"
                    if src.found
                    else f"waiting for TrainingJob {ref} (not found yet)"
                )
                b.phase(Phase.WAITING, why)
                if b.cond(ConditionType.WAITING, True, Reason.WAITING_FOR_SOURCE, why):
                    b.event(Reason.WAITING_FOR_SOURCE, why)
                return b.done()

    # Deadline: counted from startTime (reset on resume), not while suspended.
    if not policy.suspend and phase != Phase.SUSPENDED:
        at = deadline_at(status, policy.active_deadline_seconds)
        if at is not None and obs.now >= at:
            return b.fail(
                Reason.DEADLINE_EXCEEDED,
                f"the job ran longer than activeDeadlineSeconds={policy.active_deadline_seconds}",
                job,
            )

    # A Job of an older attempt (the previous group, being replaced): remove it first.
    if job is not None and job.restart_count < restarts:
        if not job.deleting:
            b.before(Action(ActionKind.DELETE_JOB, job_uid=job.uid))
        status["workers"] = _worker_counts(None)
        return b.done()
    if job is not None and job.restart_count > restarts:
        # The count write was lost but the new attempt exists: trust the Job.
        restarts = status["restarts"] = job.restart_count

    if job is None:
        return _no_job(b, view, restarts)
    if job.deleting:
        status["workers"] = _worker_counts(None)
        return b.done()

    status["workers"] = _worker_counts(job)

    # Suspension (runPolicy.suspend): pods removed, state kept.
    queue = _kueue_queue(view, job)
    if policy.suspend:
        if queue is not None and not job.finished:
            # Kueue owns the Job's spec.suspend (it would un-suspend an admitted Job): its
            # Workload is deactivated instead. Level-based: also a Job Kueue still holds
            # (suspended, not admitted) must not be admitted; the reconciler patches only
            # a Workload that is still active.
            b.before(_workload_action(job, active=False))
        elif not job.suspended and not job.finished:
            b.before(Action(ActionKind.SUSPEND_JOB, job_uid=job.uid))
        reason, message = Reason.SUSPENDED, "runPolicy.suspend is true"
        if queue is not None:
            reason = Reason.WORKLOAD_DEACTIVATED
            message = (
                f"runPolicy.suspend is true: the Kueue Workload of the worker Job is "
                f"deactivated (spec.active: false); Kueue evicts and suspends the Job and "
                f"releases its quota in LocalQueue {queue}"
            )
        if phase != Phase.SUSPENDED and not job.finished:
            b.phase(Phase.SUSPENDED, "suspended: worker pods removed, state kept")
            b.cond(ConditionType.SUSPENDED, True, reason, message)
            b.clear(ConditionType.RUNNING, Reason.SUSPENDED, "the job is suspended")
            b.event(reason, "job suspended: worker pods are removed")
            return b.done()
        if not job.finished:
            b.cond(ConditionType.SUSPENDED, True, reason, message)  # e.g. created suspended
            return b.done()
    elif phase == Phase.SUSPENDED:
        if queue is not None and not job.finished:
            # Kueue queues the Job again; it is un-suspended on admission (QueuedByKueue,
            # then AdmittedByKueue, as for a new job).
            b.before(_workload_action(job, active=True))
        elif queue is None and job.suspended:
            b.before(Action(ActionKind.RESUME_JOB, job_uid=job.uid))
        b.phase(Phase.PENDING, "resumed: waiting for workers")
        b.cond(ConditionType.SUSPENDED, False, Reason.RESUMED, "runPolicy.suspend is false")
        status["startTime"] = rfc3339(obs.now)
        b.event(Reason.RESUMED, "job resumed: workers start again (startTime reset)")
        return b.done()
    elif job.suspended and not job.finished and queue is None:
        # Level-based: the Job must not stay suspended when the job is not (a Job created
        # suspended while runPolicy.suspend flipped). Under Kueue (also when gang `auto`
        # chose it: the Job has Kueue's queue label), Kueue un-suspends it.
        b.before(Action(ActionKind.RESUME_JOB, job_uid=job.uid))

    if job.complete:
        if obs.pods is None:
            b.decision.needs_pods = True
            return b.done()
        for key, value in _result_of(view.kind, obs.pods).items():
            status[key] = value
        return b.succeed(f"all {spec.workers} workers succeeded", job)

    if job.failed_reason is not None:
        if obs.pods is None:
            b.decision.needs_pods = True
            return b.done()
        pod = _failed_pod(obs.pods)
        what = _describe_pod_failure(pod)
        if job.failed_reason not in ("PodFailurePolicy", "BackoffLimitExceeded") and pod is None:
            what = f"{what} ({job.failed_reason}: {job.failed_message or ''})".strip()
        if not is_retryable(view, job, pod):
            return b.fail(Reason.PERMANENT_FAILURE, f"{what}; not retryable", job)
        if restarts >= policy.backoff_limit:
            return b.fail(
                Reason.BACKOFF_LIMIT_EXCEEDED,
                f"{what}; backoffLimit {policy.backoff_limit} reached after {restarts} restart(s)",
                job,
            )
        status["restarts"] = restarts + 1
        message = (
            f"{what}; restarting the whole group from the newest checkpoint "
            f"(restart {restarts + 1}/{policy.backoff_limit})"
        )
        b.phase(Phase.RESTARTING, message)
        b.cond(ConditionType.RESTARTING, True, Reason.RETRYABLE_FAILURE, message)
        b.clear(ConditionType.RUNNING, Reason.RETRYABLE_FAILURE, "the worker group is restarting")
        b.event(Reason.RETRYABLE_FAILURE, message, warning=True)
        b.after(Action(ActionKind.DELETE_JOB, job_uid=job.uid))
        status["workers"] = _worker_counts(None)
        return b.done()

    # The attempt runs (or waits for its pods).
    if job.suspended:
        if queue is None:
            b.phase(Phase.PENDING, "waiting for admission (the Job is suspended by its queue)")
            return b.done()
        # Kueue holds it (not admitted yet, or evicted/preempted): no pods, quota not given.
        message = (
            f"queued by Kueue in LocalQueue {queue}: waiting for admission "
            "(the worker Job stays suspended until Kueue admits it)"
        )
        b.phase(Phase.PENDING, message)
        if b.cond(ConditionType.SUSPENDED, True, Reason.QUEUED_BY_KUEUE, message):
            b.event(Reason.QUEUED_BY_KUEUE, message)
        b.clear(ConditionType.RUNNING, Reason.QUEUED_BY_KUEUE, "the worker Job is suspended")
        status["workers"] = _worker_counts(None)
        return b.done()
    held = get_condition(status, ConditionType.SUSPENDED)
    if queue is not None and held and held.get("reason") == Reason.QUEUED_BY_KUEUE:
        # Suspended True with this reason: Kueue held it until now, so it was just admitted.
        message = f"admitted by Kueue (LocalQueue {queue}): workers start"
        b.cond(ConditionType.SUSPENDED, False, Reason.ADMITTED_BY_KUEUE, message)
        b.event(Reason.ADMITTED_BY_KUEUE, message)
        status["startTime"] = rfc3339(obs.now)  # counted from admission, as on resume
    if not status.get("startTime"):
        status["startTime"] = rfc3339(obs.now)
    up = job.ready + job.succeeded
    if up >= spec.workers and job.active + job.succeeded >= spec.workers:
        message = f"{spec.workers}/{spec.workers} workers running"
        if restarts:
            message += f" (after {restarts} restart(s))"
        was_restarting = condition_true(status, ConditionType.RESTARTING)
        b.phase(Phase.RUNNING, message)
        if b.cond(ConditionType.RUNNING, True, Reason.WORKERS_RUNNING, message):
            b.event(Reason.WORKERS_RUNNING, message)
        if was_restarting:
            b.cond(ConditionType.RESTARTING, False, Reason.WORKERS_RUNNING, "group restarted")
        return b.done()
    message = f"{up}/{spec.workers} workers ready"
    if status.get("phase") == Phase.RESTARTING:
        status["message"] = f"restarting: {message}"
    elif status.get("phase") == Phase.RUNNING:
        status["message"] = message  # a worker finished early or is not ready: still running
    else:
        b.phase(Phase.PENDING, message)
    return b.done()


def _kueue_queue(view: JobView, job: JobInfo) -> str | None:
    """The LocalQueue when Kueue manages this Job's suspension, else None."""
    if job.queue:
        return job.queue
    if view.parsed is not None and view.parsed.spec.scheduling.gang == "kueue":
        return view.parsed.spec.scheduling.queue
    return None


def _suspend_action(view: JobView, job: JobInfo) -> Action:
    """The action that stops a Job's pods: its Workload deactivated when Kueue manages it
    (Kueue would un-suspend the Job again), else the Job suspended."""
    if _kueue_queue(view, job) is not None:
        return _workload_action(job, active=False)
    return Action(ActionKind.SUSPEND_JOB, job_uid=job.uid)


def _workload_action(job: JobInfo, *, active: bool) -> Action:
    return Action(ActionKind.SET_WORKLOAD_ACTIVE, job_uid=job.uid, active=active)


@dataclass(frozen=True)
class WorkloadStep:
    """What setting a Kueue Workload's ``spec.active`` takes (:func:`workload_step`)."""

    name: str | None = None
    """The Workload to patch with ``patch``; None: nothing to patch."""
    patch: dict[str, Any] | None = None
    retry: str | None = None
    """Why the step must be tried again later (the Workload does not exist yet), else None."""


def workload_step(workloads: list[dict[str, Any]], job_uid: str, active: bool) -> WorkloadStep:
    """How to set ``spec.active`` to ``active`` on the Workload Kueue made for the batch Job
    ``job_uid``, given the Workloads listed in the Job's namespace (dicts as the API returns
    them).

    The Job's Workload is the one whose ownerReference names the Job's uid; a finished or
    deleted one is past changing (nothing to do). Already as wanted (``spec.active`` defaults
    to true): nothing. None yet (Kueue makes it shortly after the Job): nothing when
    activating (a new Workload starts active), a retry when deactivating — until then Kueue
    could admit the Job.
    The patch carries the Workload's uid, so it changes only the Workload just read.
    """
    past = False
    for wl in workloads:
        meta = wl.get("metadata") or {}
        owners = meta.get("ownerReferences") or []
        if not any(o.get("kind") == "Job" and o.get("uid") == job_uid for o in owners):
            continue
        finished = any(
            c.get("type") == "Finished" and c.get("status") == "True"
            for c in (wl.get("status") or {}).get("conditions") or []
        )
        if meta.get("deletionTimestamp") or finished:
            past = True
            continue
        if bool((wl.get("spec") or {}).get("active", True)) == active:
            return WorkloadStep()
        return WorkloadStep(
            name=str(meta.get("name")),
            patch={"metadata": {"uid": meta.get("uid")}, "spec": {"active": active}},
        )
    if active or past:
        return WorkloadStep()
    return WorkloadStep(
        retry=f"Kueue has no Workload for the worker Job (uid {job_uid}) yet: its "
        "deactivation (runPolicy.suspend) is retried"
    )


def _no_job(b: _Builder, view: JobView, restarts: int) -> Decision:
    """No batch Job for the current attempt: create it (the children are idempotent)."""
    assert view.parsed is not None
    status = b.status
    policy = view.parsed.spec.run_policy
    b.before(Action(ActionKind.CREATE, restart_count=restarts))
    status["workers"] = _worker_counts(None)
    if not condition_true(status, ConditionType.CREATED):
        if get_condition(status, ConditionType.CREATED) is not None:
            # It was blocked (decide_blocked): the message said why, and no longer applies.
            status["message"] = "worker Job created"
        b.cond(ConditionType.CREATED, True, Reason.JOB_CREATED, "worker Job created")
        b.event(Reason.JOB_CREATED, f"created the worker Job ({view.parsed.spec.workers} workers)")
    if policy.suspend:
        if status.get("phase") != Phase.SUSPENDED:
            b.phase(Phase.SUSPENDED, "created suspended (runPolicy.suspend)")
            b.cond(ConditionType.SUSPENDED, True, Reason.SUSPENDED, "runPolicy.suspend is true")
            b.event(Reason.SUSPENDED, "job created suspended")
    elif status.get("phase") == Phase.SUSPENDED:
        b.phase(Phase.PENDING, "resumed: waiting for workers")
        b.cond(ConditionType.SUSPENDED, False, Reason.RESUMED, "runPolicy.suspend is false")
        status["startTime"] = rfc3339(b.now)
        b.event(Reason.RESUMED, "job resumed: workers start again (startTime reset)")
    elif status.get("phase") in (None, Phase.PENDING, Phase.WAITING):
        # Already what the first look at the new Job would write (its start, no worker
        # ready yet), so creating a Job costs one status write, not two.
        b.phase(Phase.PENDING, f"0/{view.parsed.spec.workers} workers ready")
        if view.parsed.spec.scheduling.queue is None:  # Kueue may hold it: starts on admission
            status.setdefault("startTime", rfc3339(b.now))
    return b.done()


def _result_of(kind: str, pods: tuple[PodInfo, ...]) -> Status:
    """Status fields from rank 0's result (termination message); empty when there is none."""
    ranked = sorted(pods, key=lambda p: (p.index is None, p.index or 0))
    for pod in ranked:
        result = parse_result(pod.message)
        if result is not None:
            return result_status(kind, result)
    return {}


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
