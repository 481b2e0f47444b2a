"""What the state machine reads: one job as the operator sees it (:class:`JobView`) and what
is observed of its children (:class:`Observed`: the batch Job of the current attempt, its
worker pods, a CompressionJob's source TrainingJob), each parsed from the dicts the API
server returns. Pure: data in, data out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from torchyard.api import CompressionJob, TrainingJob
from torchyard.api.contract import POD_DISRUPTION_CONDITION, Annotation, Label
from torchyard.api.manifest import format_validation_error

Status = dict[str, Any]
"""A job's status as the API server holds it (camelCase keys)."""


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def disruption_of(pod_status: dict[str, Any]) -> str | None:
    """ "reason: message" of a pod's DisruptionTarget=True condition, else None."""
    for c in pod_status.get("conditions") or []:
        if c.get("type") == POD_DISRUPTION_CONDITION and c.get("status") == "True":
            return f"{c.get('reason') or 'Disrupted'}: {c.get('message') or ''}".strip(": ")
    return None


@dataclass(frozen=True)
class PodInfo:
    """One worker pod, as far as the state machine cares."""

    name: str
    index: int | None
    phase: str
    exit_code: int | None = None
    reason: str | None = None
    message: str | None = None
    disruption: str | None = None
    """Why Kubernetes removed the pod ("reason: message" of its DisruptionTarget condition),
    None when it was not disrupted."""
    waiting_reason: str | None = None
    """Why the worker container has not started (the kubelet's reason: ImagePullBackOff...)."""
    waiting_message: str | None = None

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
        waiting: dict[str, Any] = {}
        for cs in status.get("containerStatuses") or []:
            if cs.get("name") == "worker":
                waiting = (cs.get("state") or {}).get("waiting") or {}
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
            disruption=disruption_of(status),
            waiting_reason=waiting.get("reason"),
            waiting_message=waiting.get("message"),
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
    created: datetime | None = None
    """The Job's creationTimestamp: when this attempt's pods could first exist."""

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
            created=parse_time(meta.get("creationTimestamp")),
        )


def slim_job(body: dict[str, Any]) -> dict[str, Any]:
    """What the reconciler reads of a batch Job (:meth:`JobInfo.from_dict` above — keep the
    two together — controlled_by, names, uids, resourceVersion): metadata without
    managedFields, ``spec.suspend`` and the status; the controller's Job cache holds these.
    The pod template (defaults filled in by the API server) and managedFields were most of
    each cached Job — ~20 KiB as Python objects, held for every live job (2,000 jobs: the
    operator's peak RSS was 355 MiB)."""
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"}
    spec = body.get("spec") or {}
    slim: dict[str, Any] = {"metadata": meta, "spec": {"suspend": spec.get("suspend")}}
    if "status" in body:
        slim["status"] = body["status"]
    return slim


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
    """Worker pods of the current attempt; None when not listed (see Decision.needs_pods). Of
    a finished Job all of them; of a running one only those waiting on a node (phase
    Pending, scheduled), the only ones that can be stuck (:mod:`torchyard.state.startup`)."""
    source: SourceInfo | None = None
    pods_listed_at: datetime | None = None
    """When this job's worker pods were last looked at (the controller's memory; None: not
    since it started): looks for a stuck worker are spaced by the clock, not by the Job's events."""
    unready_since: datetime | None = None
    """Since when the current attempt's Job has had an active pod that is not ready (the
    controller's memory; None: none such, or not known): a stuck worker is looked for once a pod
    has waited :data:`~torchyard.state.startup.RECHECK_SECONDS`, not once the Job is that old
    (in a burst the Job controller creates the pods long after their Job)."""


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
