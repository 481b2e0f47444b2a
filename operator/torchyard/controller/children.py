"""The actions of :func:`torchyard.state.decide`, done against the API server.

Create the children (a 409 means "exists": this job's own is used, anything else is a name
conflict and never adopted), delete the batch Job with a ``uid`` precondition, suspend or
resume it with its ``uid`` in the patch, (de)activate Kueue's Workload of a Kueue-managed
Job, and delete worker pods by ``cleanPodPolicy``. Only this job's own objects are changed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

import kopf
from kubernetes import client

from torchyard.api.constants import Reason
from torchyard.api.contract import KUEUE_GROUP, Label, pvc_claim
from torchyard.builders import build_children, kueue_queue_of
from torchyard.builders.podtemplate import PodTemplateConflict
from torchyard.controller.cache import Cache
from torchyard.controller.gang import GangResolver
from torchyard.controller.kube import (
    RAW,
    Blocked,
    Conflict,
    Key,
    Kube,
    Refused,
    Retry,
    reason,
)
from torchyard.controller.settings import Settings
from torchyard.state import (
    Action,
    ActionKind,
    JobView,
    Refusal,
    classify_existing,
    classify_refusal,
    pod_security_refusal,
    workload_step,
)
from torchyard.state.modelversion_source import with_resolved_source
from torchyard.state.storage import claim_refusal, pod_claims, storage_refusal

log = logging.getLogger("torchyard.operator")


class Children:
    """Does a job's actions; the batch Jobs it creates or finds go into the cache."""

    def __init__(self, kube: Kube, cache: Cache, gang: GangResolver, settings: Settings) -> None:
        self.kube = kube
        self.cache = cache
        self.gang = gang
        self.settings = settings

    def run(self, key: Key, body: dict[str, Any], view: JobView, actions: list[Action]) -> None:
        """Do ``actions`` in order. :class:`Retry` of one waits until the others ran (e.g.
        cleanPodPolicy); :class:`Blocked`, :class:`Refused`, :class:`Conflict` stop."""
        retry: Retry | None = None
        for action in actions:
            try:
                self._run_one(key, body, view, action)
            except Retry as exc:
                retry = exc
        if retry is not None:
            raise retry

    def _run_one(self, key: Key, body: dict[str, Any], view: JobView, action: Action) -> None:
        if action.kind is ActionKind.CREATE:
            self.create(key, body, view, action.restart_count)
        elif action.kind is ActionKind.DELETE_JOB:
            self.delete_job(key, action.job_uid)
        elif action.kind is ActionKind.SUSPEND_JOB:
            self.suspend_job(key, True, action.job_uid)
        elif action.kind is ActionKind.RESUME_JOB:
            self.suspend_job(key, False, action.job_uid)
        elif action.kind is ActionKind.SET_WORKLOAD_ACTIVE:
            self.set_workload_active(key, bool(action.active), action.job_uid)
        elif action.kind is ActionKind.CLEAN_PODS:
            self.clean_pods(key, str(action.pod_policy), action.job_uid)

    # ------------------------------------------------------------------ create

    def create(self, key: Key, body: dict[str, Any], view: JobView, restart_count: int) -> None:
        """Create the children of attempt ``restart_count`` (those that exist are kept)."""
        assert view.parsed is not None
        job_model = view.parsed
        own_storage = job_model.spec.output.storage
        refusal = storage_refusal(view.kind, own_storage, self.settings.default_storage)
        if refusal is not None:
            raise Blocked(refusal)  # before any child: no pod may write into its container
        if own_storage is None:
            # The operator's default model store, written into the resolved spec the
            # workers read (and mounted when it is a pvc:// URI).
            job_model = job_model.model_copy(deep=True)
            job_model.spec.output.storage = self.settings.default_storage
        # source.modelVersion: the version it resolved to at start, as workers read it.
        job_model = with_resolved_source(job_model, body.get("status") or {})
        requested = job_model.spec.scheduling.gang
        gang = self.gang.resolve(job_model.spec.scheduling, kueue_queue_of(job_model))
        gang_text = requested if requested == gang else f"{requested} (resolved to {gang})"
        try:
            children = build_children(
                job_model,
                namespace=view.namespace,
                gang=gang,
                restart_count=restart_count,
                default_image=self.settings.default_image,
                progress=self.settings.progress,
            )
        except PodTemplateConflict as exc:
            # The API's rules refuse these overrides first; this is the merge's second check.
            raise Refused(Refusal(Reason.INVALID_SPEC, str(exc), temporary=False)) from exc
        default_claim = pvc_claim(self.settings.default_storage or "") if not own_storage else None
        self._check_claims(view.namespace, children.job["spec"]["template"]["spec"], default_claim)
        objs = children.all()
        kopf.adopt(objs, owner=body)  # type: ignore[arg-type]
        uid = str((body.get("metadata") or {}).get("uid") or "")
        for obj in objs:
            self._create_child(key, view.namespace, uid, obj, gang_text)

    def _check_claims(self, ns: str, pod_spec: dict[str, Any], default_claim: str | None) -> None:
        """Every claim the worker pods mount exists (else :class:`Blocked`,
        ``StorageClaimNotFound``): a pod with a missing claim would stay Pending, unscheduled,
        with nothing on the job to say why. Without the permission to read claims (an older
        chart's RBAC) the check is skipped: the pods then say it themselves."""
        core = self.kube.core
        for claim in pod_claims(pod_spec):
            try:
                pvc = self.kube.call(
                    "get",
                    "persistentvolumeclaims",
                    partial(core.read_namespaced_persistent_volume_claim, claim, ns, **RAW),
                )
                found: dict[str, Any] | None = json.loads(pvc.data)
            except client.ApiException as exc:
                if exc.status == 403:
                    log.warning("cannot check claim %s/%s: %s", ns, claim, reason(exc))
                    continue
                if exc.status != 404:
                    raise
                found = None
            refusal = claim_refusal(ns, claim, found, from_default=claim == default_claim)
            if refusal is not None:
                raise Blocked(refusal)

    def _create_child(
        self, key: Key, ns: str, uid: str, obj: dict[str, Any], gang_text: str
    ) -> None:
        kind = obj["kind"]
        name = obj["metadata"]["name"]
        core, batch, custom = self.kube.core, self.kube.batch, self.kube.custom
        if kind == "ConfigMap":
            self._create_or_exists(
                key,
                uid,
                obj,
                "configmaps",
                partial(core.create_namespaced_config_map, ns, obj, **RAW),
                read=partial(core.read_namespaced_config_map, name, ns, **RAW),
                patch=partial(core.patch_namespaced_config_map, name, ns, **RAW),
                data={"data": obj["data"]},
            )
        elif kind == "Service":
            self._create_or_exists(
                key,
                uid,
                obj,
                "services",
                partial(core.create_namespaced_service, ns, obj, **RAW),
                read=partial(core.read_namespaced_service, name, ns, **RAW),
            )
        elif kind == "PodGroup":
            group, version = obj["apiVersion"].split("/")
            where = (group, version, ns, "podgroups")
            self._create_or_exists(
                key,
                uid,
                obj,
                "podgroups",
                partial(custom.create_namespaced_custom_object, *where, obj, **RAW),
                read=partial(custom.get_namespaced_custom_object, *where, name, **RAW),
                gang=gang_text,
            )
        elif kind == "Job":
            created = self._create_or_exists(
                key,
                uid,
                obj,
                "jobs",
                partial(batch.create_namespaced_job, ns, obj, **RAW),
                read=partial(batch.read_namespaced_job, name, ns, **RAW),
            )
            if created is not None:
                self._refuse_if_pod_security_forbids(ns, name, created)
                self.cache.observe_job(json.loads(created.data), "ADDED")

    def _refuse_if_pod_security_forbids(self, ns: str, name: str, created: Any) -> None:
        """A Job whose pods the namespace's enforced Pod Security level refuses (the API
        server's warning on the Job says so) is deleted and the job refused: otherwise the Job
        controller retries the pods forever and the job sits Pending (state.podsecurity)."""
        warnings = list(created.headers.getlist("Warning")) if created.headers else []
        if not any("PodSecurity" in w for w in warnings):
            return
        namespaces = self.kube.call(
            "list",
            "namespaces",
            self.kube.core.list_namespace,
            field_selector=f"metadata.name={ns}",
            **RAW,
        )
        items = json.loads(namespaces.data).get("items") or [{}]
        labels = (items[0].get("metadata") or {}).get("labels") or {}
        refusal = pod_security_refusal(warnings, ns, labels)
        if refusal is None:
            return
        delete = client.V1DeleteOptions(propagation_policy="Background")
        self.kube.call(
            "delete", "jobs", self.kube.batch.delete_namespaced_job, name, ns, body=delete, **RAW
        )
        raise Refused(refusal)

    def _create_or_exists(
        self,
        key: Key,
        uid: str,
        obj: dict[str, Any],
        resource: str,
        create: Callable[[], Any],
        read: Callable[[], Any],
        patch: Callable[[dict[str, Any]], Any] | None = None,
        data: dict[str, Any] | None = None,
        gang: str = "",
    ) -> Any:
        """Create one child. Returns the created object's raw response, or None when the
        child already exists and is this job's own (then ``data`` is patched in, if given).
        A name taken by an object this job does not own raises :class:`Blocked`
        (``NameConflict``): that object is never adopted, patched or deleted."""
        try:
            return self.kube.call("create", resource, create)
        except client.ApiException as exc:
            if exc.status == 409:
                self._check_existing(key, uid, obj, resource, read, patch, data)
                return None
            refusal = classify_refusal(
                str(obj.get("kind")), str(obj.get("apiVersion")), exc.status, reason(exc), gang
            )
            if refusal is None:
                raise
            if refusal.temporary:
                raise Blocked(refusal) from exc
            raise Refused(refusal) from exc

    def _check_existing(
        self,
        key: Key,
        uid: str,
        obj: dict[str, Any],
        resource: str,
        read: Callable[[], Any],
        patch: Callable[[dict[str, Any]], Any] | None,
        data: dict[str, Any] | None,
    ) -> None:
        """The child's name is taken: by this job's own child (go on), or not (blocked)."""
        try:
            existing: dict[str, Any] = json.loads(self.kube.call("get", resource, read).data)
        except client.ApiException as exc:
            if exc.status == 404:  # gone meanwhile: create it on the next pass
                raise Conflict() from exc
            raise
        refusal = classify_existing(str(obj.get("kind")), existing, key[0], key[2], uid)
        if refusal is not None:
            raise Blocked(refusal)
        if obj.get("kind") == "Job":
            existing.setdefault("apiVersion", "batch/v1")
            existing.setdefault("kind", "Job")
            self.cache.observe_job(existing, None)
        if patch is None or data is None:
            return
        meta = existing.get("metadata") or {}
        # Guarded: only the object just checked (uid) in the version just read.
        guard = {"uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion")}
        try:
            self.kube.call("patch", resource, patch, {"metadata": guard, **data})
        except client.ApiException as exc:
            if exc.status in (404, 409):
                raise Conflict() from exc
            raise

    # ------------------------------------------------------------------ the batch Job

    def delete_job(self, key: Key, uid: str | None) -> None:
        if not uid:
            return  # never delete by name alone: only the Job this job owns (its uid)
        opts = client.V1DeleteOptions(
            propagation_policy="Foreground", preconditions=client.V1Preconditions(uid=uid)
        )
        try:
            self.kube.call(
                "delete",
                "jobs",
                self.kube.batch.delete_namespaced_job,
                self.cache.job_name(key),
                key[1],
                body=opts,
            )
        except client.ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def suspend_job(self, key: Key, suspend: bool, uid: str | None) -> None:
        if not uid:
            return
        try:
            self.kube.call(
                "patch",
                "jobs",
                self.kube.batch.patch_namespaced_job,
                self.cache.job_name(key),
                key[1],
                # The uid makes the patch fail (422: uid is immutable) on any other Job that
                # took the name meanwhile: only the observed Job (this job's own) is changed.
                {"metadata": {"uid": uid}, "spec": {"suspend": suspend}},
            )
        except client.ApiException as exc:
            if exc.status == 404 or (exc.status == 422 and "uid" in reason(exc)):
                return
            raise

    def set_workload_active(self, key: Key, active: bool, uid: str | None) -> None:
        """Set ``spec.active`` of the Workload Kueue made for the Job ``uid`` (Kueue owns a
        managed Job's spec.suspend); what to patch is :func:`workload_step`'s decision."""
        if not uid:
            return
        version = self.gang.preferred_version(KUEUE_GROUP) or "v1beta1"
        where = (KUEUE_GROUP, version, key[1], "workloads")
        try:
            listed = self.kube.call(
                "list",
                "workloads",
                self.kube.custom.list_namespaced_custom_object,
                *where,
                label_selector=f"{Label.KUEUE_JOB_UID}={uid}",
            )
        except client.ApiException as exc:
            if exc.status != 404:  # 404: Kueue's API is not served (no Workload to find)
                raise
            listed = {}
        step = workload_step(list(listed.get("items") or []), uid, active)
        if step.retry is not None:
            raise Retry(step.retry)
        if step.name is None or step.patch is None:
            return
        try:
            self.kube.call(
                "patch",
                "workloads",
                self.kube.custom.patch_namespaced_custom_object,
                *where,
                step.name,
                step.patch,
                **RAW,
            )
        except client.ApiException as exc:
            if exc.status == 404 or (exc.status == 422 and "uid" in reason(exc)):
                raise Conflict() from exc  # replaced meanwhile: decide again
            raise

    def clean_pods(self, key: Key, policy: str, uid: str | None) -> None:
        if not uid:
            return
        # The pods of this job's own Job (its uid), never pods that only carry our labels.
        selector = (
            f"{Label.JOB_NAME}={key[2]},{Label.JOB_KIND}={key[0].lower()},"
            f"{Label.JOB_CONTROLLER_UID}={uid}"
        )
        core = self.kube.core
        pods = self.kube.list_items(
            "pods", core.list_namespaced_pod, key[1], label_selector=selector
        )
        for pod in pods:
            meta = pod.get("metadata") or {}
            if meta.get("deletionTimestamp") is not None:
                continue
            phase = (pod.get("status") or {}).get("phase")
            if policy == "Running" and phase not in ("Pending", "Running"):
                continue
            try:
                self.kube.call(
                    "delete", "pods", core.delete_namespaced_pod, meta.get("name"), key[1], **RAW
                )
            except client.ApiException as exc:
                if exc.status != 404:
                    raise


__all__ = ["Children"]
