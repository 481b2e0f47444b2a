"""Whose child is it, and what a refused create means — pure.

Only the controller ownerReference's uid proves that an object is a job's child
(:func:`controlled_by`); names and labels prove nothing. :func:`classify_refusal` reads the
API server's refusal to create a child, :func:`classify_existing` an object that already
holds a child's name; both answer with a :class:`Refusal` (temporary: the job waits, see
``decide_blocked``; permanent: it fails, see ``decide_failure``) or None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torchyard.api.constants import (
    COMPRESSION_CHILD_SUFFIX,
    COMPRESSION_JOB_KIND,
    TRAINING_JOB_KIND,
    Reason,
)
from torchyard.api.contract import COSCHEDULING_GROUP, VOLCANO_GROUP


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
    VOLCANO_GROUP: ("volcano", "Volcano"),
    COSCHEDULING_GROUP: ("coscheduling", "the scheduler-plugins coscheduling plugin"),
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
