"""Kueue: which Jobs it manages, and how a job's suspension reaches them — pure.

Kueue owns the ``spec.suspend`` of a Job it manages (the Job's queue label, or
``scheduling.gang: kueue``): it would un-suspend an admitted Job. So a job is suspended and
resumed through the ``spec.active`` of the Workload Kueue made for its Job
(:class:`ActionKind.SET_WORKLOAD_ACTIVE`; the reconciler applies :func:`workload_step`).

A job names its LocalQueue in ``spec.scheduling.queue`` or, as Kueue users label every
workload, with the ``kueue.x-k8s.io/queue-name`` label on the TrainingJob/CompressionJob
itself (:func:`job_queue`); both set and different is an error naming both
(:func:`kueue_label_conflict`), never a silent pick: the wrong queue spends another team's quota.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torchyard.api import CompressionJob, TrainingJob
from torchyard.api.contract import Label
from torchyard.state.decision import Action, ActionKind
from torchyard.state.observed import JobInfo, JobView

LABEL_FIELD = f"metadata.labels['{Label.KUEUE_QUEUE_NAME}']"
SPEC_FIELD = "spec.scheduling.queue"


def job_queue(job: TrainingJob | CompressionJob) -> str | None:
    """The LocalQueue a job names: ``spec.scheduling.queue``, else its own queue-name label.
    The builders read it the same way (:func:`torchyard.builders.kueue_queue_of`)."""
    return job.spec.scheduling.queue or job.metadata.labels.get(Label.KUEUE_QUEUE_NAME) or None


def kueue_label_conflict(job: TrainingJob | CompressionJob) -> str | None:
    """Why the job's queue-name label and ``spec.scheduling.queue`` cannot both hold (they
    name different queues), else None. The same value in both is fine."""
    label = job.metadata.labels.get(Label.KUEUE_QUEUE_NAME)
    spec = job.spec.scheduling.queue
    if not label or not spec or label == spec:
        return None
    return (
        f"{LABEL_FIELD} is {label!r} but {SPEC_FIELD} is {spec!r}: they name different "
        "queues; remove one or make them equal"
    )


def kueue_queue(view: JobView, job: JobInfo) -> str | None:
    """The LocalQueue when Kueue manages this Job's suspension, else None."""
    if job.queue:
        return job.queue
    if view.parsed is not None and view.parsed.spec.scheduling.gang == "kueue":
        return job_queue(view.parsed)
    return None


def suspend_action(view: JobView, job: JobInfo) -> Action:
    """The action that stops a Job's pods: its Workload deactivated when Kueue manages it
    (Kueue would un-suspend the Job again), else the Job suspended."""
    if kueue_queue(view, job) is not None:
        return workload_action(job, active=False)
    return Action(ActionKind.SUSPEND_JOB, job_uid=job.uid)


def workload_action(job: JobInfo, *, active: bool) -> Action:
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
