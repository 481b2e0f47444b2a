"""The reconciler: the I/O around :func:`torchyard.state.decide`.

Kopf's watch streams (TrainingJobs, CompressionJobs, and the batch Jobs we create) feed two
in-memory caches and a small work queue keyed by job. One reconcile of one job at a time
(a lock per key), bursts of events coalesced into one reconcile, failures retried with capped
exponential backoff a bounded number of times. A reconcile reads the caches (no GETs), asks
the pure state machine what to do, creates/deletes/patches children, writes the status with
an optimistic-concurrency precondition (``metadata.resourceVersion``: a stale cache can never
double-count a restart) and posts Kubernetes Events.

The API calls are the synchronous ``kubernetes`` client, run in worker threads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any

import kopf
import urllib3
from kubernetes import client

from torchyard.api.constants import (
    COMPRESSION_JOB_PLURAL,
    DEFAULT_TRAINER_IMAGE,
    GROUP,
    TRAINING_JOB_PLURAL,
    VERSION,
    Phase,
)
from torchyard.api.contract import KUEUE_GROUP, Label
from torchyard.builders import build_children, worker_job_name
from torchyard.controller.gang import GangResolver
from torchyard.metrics import OperatorMetrics
from torchyard.state import (
    Action,
    ActionKind,
    Decision,
    Event,
    JobInfo,
    JobView,
    Observed,
    PodInfo,
    Refusal,
    SourceInfo,
    classify_existing,
    classify_refusal,
    controlled_by,
    decide,
    decide_blocked,
    decide_failure,
    rfc3339,
    status_patch,
    workload_step,
)

log = logging.getLogger("torchyard.operator")

Key = tuple[str, str, str]  # (kind, namespace, name)
PLURALS = {"TrainingJob": TRAINING_JOB_PLURAL, "CompressionJob": COMPRESSION_JOB_PLURAL}
KIND_OF_LABEL = {"trainingjob": "TrainingJob", "compressionjob": "CompressionJob"}
MAX_ATTEMPTS = 12
BLOCKED_MAX_DELAY = 30.0
COUNT_KEYS = frozenset({"workers", "message"})
# Responses we do not read (or read as JSON): skip the client's typed deserialization,
# which costs more CPU than the request itself.
RAW: dict[str, Any] = {"_preload_content": False}
COMPONENT = "torchyard-operator"


class Conflict(Exception):
    """The cached object was stale (409 on a guarded write): reconcile again."""


class Retry(Exception):
    """A step waits for something another controller makes (Kueue's Workload of a Job):
    reconcile again with capped backoff, without limit and without a status change."""


class Blocked(Exception):
    """A child could not be created for a reason that may pass (quota, no gang scheduler,
    the operator's RBAC): the status says why; reconcile again with backoff, without limit."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


def _rv(obj: dict[str, Any] | None) -> int:
    try:
        return int(((obj or {}).get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


@dataclass
class Settings:
    default_image: str = DEFAULT_TRAINER_IMAGE
    default_storage: str | None = None
    workers: int = 16
    """Reconciles running at once."""
    coalesce_seconds: float = 0.02
    """How long a queued key waits for more events before it is reconciled."""
    count_update_seconds: float = 3.0
    """Least time between two status writes that only refresh worker counts/message (phase
    and condition changes are written at once)."""
    child_coalesce_seconds: float = 0.25
    """The same for events of a job's batch Job: pods becoming ready one by one change its
    counts in bursts; one status write per burst, not one per pod."""


class Reconciler:
    def __init__(
        self,
        api: Any,
        metrics: OperatorMetrics,
        settings: Settings | None = None,
        gang: GangResolver | None = None,
    ) -> None:
        self.api = api
        # Typed as Any: the manifests are plain dicts, which the client accepts as bodies.
        self.core: Any = client.CoreV1Api(api)
        self.batch: Any = client.BatchV1Api(api)
        self.custom: Any = client.CustomObjectsApi(api)
        self.metrics = metrics
        self.settings = settings or Settings()
        self.gang = gang or GangResolver(api)
        self.objects: dict[Key, dict[str, Any]] = {}
        self.jobs: dict[Key, dict[str, Any]] = {}
        self.dependents: dict[tuple[str, str], set[Key]] = {}
        self._pending: set[Key] = set()
        self._locks: dict[Key, asyncio.Lock] = {}
        self._attempts: dict[Key, int] = {}
        self._blocked: dict[Key, int] = {}
        self._sem: asyncio.Semaphore | None = None
        # Own threads: the loop's default executor has only cpu+4 threads.
        self._pool = ThreadPoolExecutor(self.settings.workers, thread_name_prefix="reconcile")
        self._event_pool = ThreadPoolExecutor(2, thread_name_prefix="events")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._seen_pods_created: set[Key] = set()
        self._last_write: dict[Key, float] = {}
        self._views: dict[Key, tuple[tuple[str, int], JobView]] = {}
        self._seen_running: set[Key] = set()
        self.instance = socket.gethostname()

    # ------------------------------------------------------------------ cache + queue

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._sem = asyncio.Semaphore(self.settings.workers)

    def observe_object(self, kind: str, body: dict[str, Any], event_type: str | None) -> None:
        meta = body.get("metadata") or {}
        key: Key = (kind, str(meta.get("namespace")), str(meta.get("name")))
        if event_type == "DELETED":
            self.objects.pop(key, None)
            self._forget(key)
            return
        if _rv(body) >= _rv(self.objects.get(key)):
            self.objects[key] = body
        if kind == "CompressionJob":
            ref = ((body.get("spec") or {}).get("source") or {}).get("trainingJobRef")
            if ref:
                self.dependents.setdefault((key[1], ref), set()).add(key)
        else:
            for dep in self.dependents.get((key[1], key[2]), set()):
                self.enqueue(dep)
        self.enqueue(key)

    def observe_job(self, body: dict[str, Any], event_type: str | None) -> None:
        meta = body.get("metadata") or {}
        labels = meta.get("labels") or {}
        kind = KIND_OF_LABEL.get(str(labels.get(Label.JOB_KIND, "")))
        parent = labels.get(Label.JOB_NAME)
        if kind is None or parent is None:
            return
        key: Key = (kind, str(meta.get("namespace")), str(parent))
        if event_type == "DELETED":
            if self.jobs.get(key, {}).get("metadata", {}).get("uid") == meta.get("uid"):
                self.jobs.pop(key, None)
        elif _rv(body) >= _rv(self.jobs.get(key)) or self.jobs.get(key, {}).get("metadata", {}).get(
            "uid"
        ) != meta.get("uid"):
            self.jobs[key] = body
        self.enqueue(key, self.settings.child_coalesce_seconds)

    def relist_jobs(self, items: list[dict[str, Any]], namespace: str | None) -> None:
        """A fresh listing of our batch Jobs: forget those gone meanwhile, observe the rest."""
        present = {str((i.get("metadata") or {}).get("uid")) for i in items}
        for key, body in list(self.jobs.items()):
            if namespace is not None and key[1] != namespace:
                continue
            if str((body.get("metadata") or {}).get("uid")) not in present:
                self.observe_job(body, "DELETED")
        for item in items:
            self.observe_job(item, None)

    def _forget(self, key: Key) -> None:
        self.jobs.pop(key, None)
        self._attempts.pop(key, None)
        self._blocked.pop(key, None)
        self._last_write.pop(key, None)
        self._views.pop(key, None)
        self._seen_pods_created.discard(key)
        self._seen_running.discard(key)
        for deps in self.dependents.values():
            deps.discard(key)
        self.metrics.forget_job(*key)

    def enqueue(self, key: Key, delay: float | None = None) -> None:
        if key in self._pending or self._loop is None:
            return
        self._pending.add(key)
        self.metrics.queue_depth.set(len(self._pending))
        wait = self.settings.coalesce_seconds if delay is None else delay

        def start() -> None:
            task = asyncio.ensure_future(self._run(key))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        self._loop.call_soon_threadsafe(lambda: self._loop.call_later(wait, start))  # type: ignore[union-attr]

    async def _run(self, key: Key) -> None:
        assert self._sem is not None
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with self._sem, lock:
            self._pending.discard(key)
            self.metrics.queue_depth.set(len(self._pending))
            started = time.perf_counter()
            try:
                assert self._loop is not None
                await self._loop.run_in_executor(self._pool, self.reconcile, key)
            except Conflict:
                self.enqueue(key, 0.05)
            except Retry as exc:
                waited = self._blocked.get(key, 0) + 1
                self._blocked[key] = waited
                delay = min(0.5 * 2 ** min(waited - 1, 16), BLOCKED_MAX_DELAY)
                (log.info if waited == 1 else log.debug)(
                    "%s %s/%s: %s (retry in %.1fs)", *key, exc, delay
                )
                self.enqueue(key, delay)
            except Blocked as exc:
                # Counted as a reconcile error (it did not get the job where it should be),
                # retried with capped backoff for as long as it lasts: a raised quota or an
                # installed gang scheduler sends no event to wait for.
                self.metrics.reconcile_errors.labels(key[0]).inc()
                blocked = self._blocked.get(key, 0) + 1
                self._blocked[key] = blocked
                delay = min(0.5 * 2 ** min(blocked - 1, 16), BLOCKED_MAX_DELAY)
                (log.warning if blocked == 1 else log.debug)(
                    "%s %s/%s: blocked (%s), retry in %.1fs: %s",
                    *key,
                    exc.refusal.reason,
                    delay,
                    exc.refusal.message,
                )
                self.enqueue(key, delay)
            except Exception as exc:
                self.metrics.reconcile_errors.labels(key[0]).inc()
                attempt = self._attempts.get(key, 0) + 1
                self._attempts[key] = attempt
                if attempt >= MAX_ATTEMPTS:
                    log.error("%s %s/%s: giving up after %d attempts: %s", *key, attempt, exc)
                    self._attempts.pop(key, None)
                else:
                    delay = min(0.5 * 2 ** (attempt - 1), 30.0)
                    log.warning(
                        "%s %s/%s: reconcile failed (attempt %d, retry in %.1fs): %s",
                        *key,
                        attempt,
                        delay,
                        exc,
                    )
                    self.enqueue(key, delay)
            else:
                self._attempts.pop(key, None)
                self._blocked.pop(key, None)
            finally:
                self.metrics.reconcile_seconds.labels(key[0]).observe(time.perf_counter() - started)
            if not self._locks[key].locked() and key not in self._pending:
                self._locks.pop(key, None)

    @property
    def idle(self) -> bool:
        return not self._pending and not self._tasks

    # ------------------------------------------------------------------ one reconcile

    def reconcile(self, key: Key) -> None:
        body = self.objects.get(key)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            return
        view = self._view(key, body)
        now = datetime.now(UTC)
        job_body = self.jobs.get(key)
        job = JobInfo.from_dict(job_body) if job_body else None
        if (
            job is not None
            and job_body is not None
            and not controlled_by(job_body, (body.get("metadata") or {}).get("uid"))
        ):
            # A Job of an earlier object with the same name (deleted and re-created while
            # its children are still being garbage-collected): never ours, wait it out.
            job = replace(job, deleting=True, restart_count=-1, owned=False)
        obs = Observed(now=now, job=job)
        decision = decide(view, obs)
        if decision.needs_source:
            obs = Observed(now=now, job=obs.job, pods=obs.pods, source=self._source(view, body))
            decision = decide(view, obs)
        if decision.needs_pods and obs.job is not None:
            obs = Observed(now=now, job=obs.job, pods=self._pods(key, obs.job), source=obs.source)
            decision = decide(view, obs)
        blocked: Blocked | None = None
        retry: Retry | None = None
        try:
            self._act(key, body, view, decision.before_status)
        except _Refused as exc:
            decision = decide_failure(view, obs, exc.refusal.reason, exc.refusal.message)
            self._act(key, body, view, decision.before_status)
        except Blocked as exc:
            blocked = exc
            decision = decide_blocked(view, obs, exc.refusal.reason, exc.refusal.message)
        except Retry as exc:
            # Only level-based steps wait (a Workload to deactivate: re-decided on every
            # reconcile while the job is suspended or finished), so the status is written.
            retry = exc
        if blocked is None and self._throttled(key, body, decision):
            self._observe_metrics(key, body, view, decision, obs)
            return
        self._write_status(key, body, view, decision)
        self._act(key, body, view, decision.after_status)
        self._observe_metrics(key, body, view, decision, obs)
        if blocked is not None:
            raise blocked
        if retry is not None:
            raise retry

    def _view(self, key: Key, body: dict[str, Any]) -> JobView:
        """The parsed job; the spec is parsed once per generation (pydantic is not free)."""
        meta = body.get("metadata") or {}
        stamp = (str(meta.get("uid")), int(meta.get("generation") or 0))
        cached = self._views.get(key)
        if cached is not None and cached[0] == stamp:
            return replace(cached[1], status=dict(body.get("status") or {}))
        view = JobView.from_body(body)
        self._views[key] = (stamp, view)
        return view

    def _throttled(self, key: Key, body: dict[str, Any], decision: Decision) -> bool:
        """Defer a write that only refreshes counts, if the last write was recent."""
        patch = status_patch(dict(body.get("status") or {}), decision.status)
        if not patch or not set(patch) <= COUNT_KEYS or decision.actions or decision.events:
            return False
        wait = self.settings.count_update_seconds - (
            time.monotonic() - self._last_write.get(key, 0.0)
        )
        if wait <= 0:
            return False
        self.enqueue(key, wait)
        return True

    def _source(self, view: JobView, body: dict[str, Any]) -> SourceInfo:
        ref = ((body.get("spec") or {}).get("source") or {}).get("trainingJobRef")
        src = self.objects.get(("TrainingJob", view.namespace, str(ref)))
        if src is None:
            return SourceInfo(found=False)
        status = src.get("status") or {}
        return SourceInfo(found=True, phase=status.get("phase"), model=status.get("model"))

    def _pods(self, key: Key, job: JobInfo) -> tuple[PodInfo, ...]:
        selector = f"batch.kubernetes.io/controller-uid={job.uid}"
        pods = self._call(
            "list", "pods", self.core.list_namespaced_pod, key[1], label_selector=selector
        )
        return tuple(PodInfo.from_dict(self.api.sanitize_for_serialization(p)) for p in pods.items)

    # ------------------------------------------------------------------ actions

    def _act(self, key: Key, body: dict[str, Any], view: JobView, actions: list[Action]) -> None:
        retry: Retry | None = None
        for action in actions:
            try:
                self._act_one(key, body, view, action)
            except Retry as exc:  # the other actions still run (e.g. cleanPodPolicy)
                retry = exc
        if retry is not None:
            raise retry

    def _act_one(self, key: Key, body: dict[str, Any], view: JobView, action: Action) -> None:
        if action.kind is ActionKind.CREATE:
            self._create(key, body, view, action.restart_count)
        elif action.kind is ActionKind.DELETE_JOB:
            self._delete_job(key, action.job_uid)
        elif action.kind is ActionKind.SUSPEND_JOB:
            self._suspend_job(key, True, action.job_uid)
        elif action.kind is ActionKind.RESUME_JOB:
            self._suspend_job(key, False, action.job_uid)
        elif action.kind is ActionKind.SET_WORKLOAD_ACTIVE:
            self._set_workload_active(key, bool(action.active), action.job_uid)
        elif action.kind is ActionKind.CLEAN_PODS:
            self._clean_pods(key, str(action.pod_policy), action.job_uid)

    def _create(self, key: Key, body: dict[str, Any], view: JobView, restart_count: int) -> None:
        assert view.parsed is not None
        ns = view.namespace
        job_model = view.parsed
        if self.settings.default_storage and job_model.spec.output.storage is None:
            # The operator's default model store, written into the resolved spec the
            # workers read (and mounted when it is a pvc:// URI).
            job_model = job_model.model_copy(deep=True)
            job_model.spec.output.storage = self.settings.default_storage
        requested = job_model.spec.scheduling.gang
        gang = self.gang.resolve(job_model.spec.scheduling)
        gang_text = requested if requested == gang else f"{requested} (resolved to {gang})"
        children = build_children(
            job_model,
            namespace=ns,
            gang=gang,
            restart_count=restart_count,
            default_image=self.settings.default_image,
        )
        objs = children.all()
        kopf.adopt(objs, owner=body)  # type: ignore[arg-type]
        uid = str((body.get("metadata") or {}).get("uid") or "")
        for obj in objs:
            kind = obj["kind"]
            name = obj["metadata"]["name"]
            if kind == "ConfigMap":
                self._create_or_exists(
                    key,
                    uid,
                    obj,
                    "configmaps",
                    partial(self.core.create_namespaced_config_map, ns, obj, **RAW),
                    read=partial(self.core.read_namespaced_config_map, name, ns, **RAW),
                    patch=partial(self.core.patch_namespaced_config_map, name, ns, **RAW),
                    data={"data": obj["data"]},
                )
            elif kind == "Service":
                self._create_or_exists(
                    key,
                    uid,
                    obj,
                    "services",
                    partial(self.core.create_namespaced_service, ns, obj, **RAW),
                    read=partial(self.core.read_namespaced_service, name, ns, **RAW),
                )
            elif kind == "PodGroup":
                group, version = obj["apiVersion"].split("/")
                self._create_or_exists(
                    key,
                    uid,
                    obj,
                    "podgroups",
                    partial(
                        self.custom.create_namespaced_custom_object,
                        group,
                        version,
                        ns,
                        "podgroups",
                        obj,
                        **RAW,
                    ),
                    read=partial(
                        self.custom.get_namespaced_custom_object,
                        group,
                        version,
                        ns,
                        "podgroups",
                        name,
                        **RAW,
                    ),
                    gang=gang_text,
                )
            elif kind == "Job":
                created = self._create_or_exists(
                    key,
                    uid,
                    obj,
                    "jobs",
                    partial(self.batch.create_namespaced_job, ns, obj, **RAW),
                    read=partial(self.batch.read_namespaced_job, name, ns, **RAW),
                )
                if created is not None:
                    self.observe_job(json.loads(created.data), "ADDED")

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
            return self._call("create", resource, create)
        except client.ApiException as exc:
            if exc.status == 409:
                self._check_existing(key, uid, obj, resource, read, patch, data)
                return None
            refusal = classify_refusal(
                str(obj.get("kind")), str(obj.get("apiVersion")), exc.status, _reason(exc), gang
            )
            if refusal is None:
                raise
            if refusal.temporary:
                raise Blocked(refusal) from exc
            raise _Refused(refusal) from exc

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
            existing: dict[str, Any] = json.loads(self._call("get", resource, read).data)
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
            self.observe_job(existing, None)
        if patch is None or data is None:
            return
        meta = existing.get("metadata") or {}
        # Guarded: only the object just checked (uid) in the version just read.
        guard = {"uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion")}
        try:
            self._call("patch", resource, patch, {"metadata": guard, **data})
        except client.ApiException as exc:
            if exc.status in (404, 409):
                raise Conflict() from exc
            raise

    def _job_name(self, key: Key) -> str:
        """The name of the job's batch Job: as observed (a CompressionJob's Job made by an
        operator before the ``-cj`` suffix keeps its name), else as the builders name it."""
        name = ((self.jobs.get(key) or {}).get("metadata") or {}).get("name")
        return str(name) if name else worker_job_name(key[0], key[2])

    def _delete_job(self, key: Key, uid: str | None) -> None:
        if not uid:
            return  # never delete by name alone: only the Job this job owns (its uid)
        opts = client.V1DeleteOptions(
            propagation_policy="Foreground", preconditions=client.V1Preconditions(uid=uid)
        )
        try:
            self._call(
                "delete",
                "jobs",
                self.batch.delete_namespaced_job,
                self._job_name(key),
                key[1],
                body=opts,
            )
        except client.ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def _suspend_job(self, key: Key, suspend: bool, uid: str | None) -> None:
        if not uid:
            return
        try:
            self._call(
                "patch",
                "jobs",
                self.batch.patch_namespaced_job,
                self._job_name(key),
                key[1],
                # The uid makes the patch fail (422: uid is immutable) on any other Job that
                # took the name meanwhile: only the observed Job (this job's own) is changed.
                {"metadata": {"uid": uid}, "spec": {"suspend": suspend}},
            )
        except client.ApiException as exc:
            if exc.status == 404 or (exc.status == 422 and "uid" in _reason(exc)):
                return
            raise

    def _set_workload_active(self, key: Key, active: bool, uid: str | None) -> None:
        """Set ``spec.active`` of the Workload Kueue made for the Job ``uid`` (Kueue owns a
        managed Job's spec.suspend); what to patch is :func:`workload_step`'s decision."""
        if not uid:
            return
        version = self.gang.preferred_version(KUEUE_GROUP) or "v1beta1"
        try:
            listed = self._call(
                "list",
                "workloads",
                self.custom.list_namespaced_custom_object,
                KUEUE_GROUP,
                version,
                key[1],
                "workloads",
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
            self._call(
                "patch",
                "workloads",
                self.custom.patch_namespaced_custom_object,
                KUEUE_GROUP,
                version,
                key[1],
                "workloads",
                step.name,
                step.patch,
                **RAW,
            )
        except client.ApiException as exc:
            if exc.status == 404 or (exc.status == 422 and "uid" in _reason(exc)):
                raise Conflict() from exc  # replaced meanwhile: decide again
            raise

    def _clean_pods(self, key: Key, policy: str, uid: str | None) -> None:
        if not uid:
            return
        # The pods of this job's own Job (its uid), never pods that only carry our labels.
        selector = (
            f"{Label.JOB_NAME}={key[2]},{Label.JOB_KIND}={key[0].lower()},"
            f"batch.kubernetes.io/controller-uid={uid}"
        )
        pods = self._call(
            "list", "pods", self.core.list_namespaced_pod, key[1], label_selector=selector
        )
        for pod in pods.items:
            if pod.metadata.deletion_timestamp is not None:
                continue
            if policy == "Running" and pod.status.phase not in ("Pending", "Running"):
                continue
            try:
                self._call(
                    "delete", "pods", self.core.delete_namespaced_pod, pod.metadata.name, key[1]
                )
            except client.ApiException as exc:
                if exc.status != 404:
                    raise

    # ------------------------------------------------------------------ status + events

    def _write_status(
        self, key: Key, body: dict[str, Any], view: JobView, decision: Decision
    ) -> None:
        old = dict(body.get("status") or {})
        patch = status_patch(old, decision.status)
        if patch:
            rv = (body.get("metadata") or {}).get("resourceVersion")
            try:
                updated = self._call(
                    "patch",
                    PLURALS[key[0]] + "/status",
                    self.custom.patch_namespaced_custom_object_status,
                    GROUP,
                    VERSION,
                    key[1],
                    PLURALS[key[0]],
                    key[2],
                    {"metadata": {"resourceVersion": rv}, "status": patch},
                )
            except client.ApiException as exc:
                if exc.status == 409:
                    self._refresh(key)
                    raise Conflict() from exc
                if exc.status == 404:
                    return
                raise
            self._last_write[key] = time.monotonic()
            if isinstance(updated, dict) and _rv(updated) >= _rv(self.objects.get(key)):
                self.objects[key] = updated
            body = updated if isinstance(updated, dict) else body
        for event in decision.events:
            # Fire and forget: an Event never holds up the next job's reconcile.
            self._event_pool.submit(self._post_event, body, event)

    def _refresh(self, key: Key) -> None:
        try:
            fresh = self._call(
                "get",
                PLURALS[key[0]],
                self.custom.get_namespaced_custom_object,
                GROUP,
                VERSION,
                key[1],
                PLURALS[key[0]],
                key[2],
            )
        except client.ApiException as exc:
            if exc.status == 404:
                self.objects.pop(key, None)
                return
            raise
        if _rv(fresh) >= _rv(self.objects.get(key)):
            self.objects[key] = fresh

    def _post_event(self, body: dict[str, Any], event: Event) -> None:
        meta = body.get("metadata") or {}
        now = rfc3339(datetime.now(UTC))
        ev = {
            "metadata": {
                "generateName": f"{meta.get('name')}.",
                "namespace": meta.get("namespace"),
            },
            "involvedObject": {
                "apiVersion": body.get("apiVersion"),
                "kind": body.get("kind"),
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": event.reason,
            "message": event.message[:1024],
            "type": event.type,
            "source": {"component": COMPONENT},
            "reportingComponent": f"{GROUP}/operator",
            "reportingInstance": self.instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self._call(
                "create",
                "events",
                self.core.create_namespaced_event,
                meta.get("namespace"),
                ev,
                **RAW,
            )
        except client.ApiException as exc:  # an event is never worth failing a reconcile
            log.warning("could not post event %s: %s", event.reason, _reason(exc))

    # ------------------------------------------------------------------ bookkeeping

    def _call(self, verb: str, resource: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        self.metrics.api_requests.labels(verb, resource).inc()
        try:
            result = fn(*args, **kw)
            if isinstance(result, urllib3.BaseHTTPResponse):
                # A raw response (RAW) holds its connection until its body is read: read it
                # now (cached in .data), so the connection goes back to the pool. Unread, each
                # raw call left its connection behind and the next call paid a new TLS
                # handshake (client certificate loaded from disk) — most of the operator's
                # CPU in the burst profile.
                _ = result.data
            return result
        except client.ApiException as exc:
            if not (exc.status == 409 and verb == "create"):
                self.metrics.api_errors.labels(verb, resource, str(exc.status)).inc()
            raise

    def _observe_metrics(
        self,
        key: Key,
        body: dict[str, Any],
        view: JobView,
        decision: Decision,
        obs: Observed,
    ) -> None:
        kind = key[0]
        status = decision.status
        spec = view.parsed.spec if view.parsed is not None else None
        self.metrics.observe_job(
            kind,
            key[1],
            key[2],
            status.get("phase"),
            strategy=str(getattr(spec, "strategy", "compression")) if spec else "",
            workers=int(spec.workers) if spec else 0,
            gang=str(spec.scheduling.gang) if spec else "",
        )
        old = body.get("status") or {}
        if kind == "CompressionJob" and status.get("report") and not old.get("report"):
            self.metrics.observe_report(key[1], key[2], status["report"])
        if int(status.get("restarts") or 0) > int(old.get("restarts") or 0):
            self.metrics.restarts.labels(kind, key[1], key[2]).inc()
        created = _creation(body)
        if created is None or spec is None or int(status.get("restarts") or 0) > 0:
            return
        job = obs.job
        if (
            key not in self._seen_pods_created
            and job is not None
            and job.active + job.succeeded + job.failed >= spec.workers
            and old.get("phase") in (None, Phase.PENDING, Phase.WAITING)
        ):
            self._seen_pods_created.add(key)
            self.metrics.pods_created_seconds.labels(kind).observe(
                max(0.0, obs.now.timestamp() - created)
            )
        if (
            key not in self._seen_running
            and status.get("phase") == Phase.RUNNING
            and old.get("phase") != Phase.RUNNING
        ):
            self._seen_running.add(key)
            self.metrics.running_seconds.labels(kind).observe(
                max(0.0, obs.now.timestamp() - created)
            )


class _Refused(Exception):
    """The API server refused a child as invalid: the job cannot run as written."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


def _reason(exc: client.ApiException) -> str:
    import json

    try:
        return str(json.loads(str(exc.body)).get("message"))
    except (TypeError, ValueError, AttributeError):
        return f"{exc.status} {exc.reason}"


def _creation(body: dict[str, Any]) -> float | None:
    ts = (body.get("metadata") or {}).get("creationTimestamp")
    if not ts:
        return None
    try:
        return datetime.fromisoformat(str(ts).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


__all__ = ["Blocked", "Conflict", "Key", "Reconciler", "Settings"]
