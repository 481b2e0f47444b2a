"""The reconciler's view of the cluster, fed by the watches (no GETs on the hot path).

TrainingJobs and CompressionJobs come from Kopf's watch streams, our batch Jobs from the
lean watch of :mod:`torchyard.controller.jobwatch`. Every change enqueues the job it
belongs to (a CompressionJob also when its source TrainingJob changes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from torchyard.api.contract import Label
from torchyard.builders import worker_job_name
from torchyard.controller.kube import Key, resource_version
from torchyard.state import JobView, SourceInfo, slim_job

KIND_OF_LABEL = {"trainingjob": "TrainingJob", "compressionjob": "CompressionJob"}

Enqueue = Callable[[Key, float | None], None]


class Cache:
    def __init__(
        self, enqueue: Enqueue, forget: Callable[[Key], None], child_coalesce_seconds: float
    ) -> None:
        self._enqueue = enqueue
        self._on_forget = forget
        self._child_coalesce = child_coalesce_seconds
        self.objects: dict[Key, dict[str, Any]] = {}
        """The jobs (TrainingJob/CompressionJob bodies) by key."""
        self.jobs: dict[Key, dict[str, Any]] = {}
        """Each job's batch Job (the newest one observed with its labels)."""
        self.dependents: dict[tuple[str, str], set[Key]] = {}
        self._views: dict[Key, tuple[tuple[str, int], JobView]] = {}

    def observe_object(self, kind: str, body: dict[str, Any], event_type: str | None) -> None:
        meta = body.get("metadata") or {}
        key: Key = (kind, str(meta.get("namespace")), str(meta.get("name")))
        if event_type == "DELETED":
            self.objects.pop(key, None)
            self._forget(key)
            return
        self.offer_object(key, body)
        if kind == "CompressionJob":
            ref = ((body.get("spec") or {}).get("source") or {}).get("trainingJobRef")
            if ref:
                self.dependents.setdefault((key[1], ref), set()).add(key)
        else:
            for dep in self.dependents.get((key[1], key[2]), set()):
                self._enqueue(dep, None)
        self._enqueue(key, None)

    def observe_job(self, body: dict[str, Any], event_type: str | None) -> None:
        meta = body.get("metadata") or {}
        labels = meta.get("labels") or {}
        kind = KIND_OF_LABEL.get(str(labels.get(Label.JOB_KIND, "")))
        parent = labels.get(Label.JOB_NAME)
        if kind is None or parent is None:
            return
        key: Key = (kind, str(meta.get("namespace")), str(parent))
        cached_uid = self.jobs.get(key, {}).get("metadata", {}).get("uid")
        if event_type == "DELETED":
            if cached_uid == meta.get("uid"):
                self.jobs.pop(key, None)
        elif cached_uid != meta.get("uid") or resource_version(body) >= resource_version(
            self.jobs.get(key)
        ):
            self.jobs[key] = slim_job(body)
        self._enqueue(key, self._child_coalesce)

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

    def offer_object(self, key: Key, body: dict[str, Any]) -> None:
        """Cache a job's body unless the cache holds a newer one."""
        if resource_version(body) >= resource_version(self.objects.get(key)):
            self.objects[key] = body

    def drop_object(self, key: Key) -> None:
        self.objects.pop(key, None)

    def _forget(self, key: Key) -> None:
        self.jobs.pop(key, None)
        self._views.pop(key, None)
        for deps in self.dependents.values():
            deps.discard(key)
        self._on_forget(key)

    def view(self, key: Key, body: dict[str, Any]) -> JobView:
        """The parsed job; the spec is parsed once per generation (pydantic is not free)."""
        meta = body.get("metadata") or {}
        stamp = (str(meta.get("uid")), int(meta.get("generation") or 0))
        cached = self._views.get(key)
        if cached is not None and cached[0] == stamp:
            return replace(cached[1], status=dict(body.get("status") or {}))
        view = JobView.from_body(body)
        self._views[key] = (stamp, view)
        return view

    def job_name(self, key: Key) -> str:
        """The name of the job's batch Job: as observed (a CompressionJob's Job made by an
        operator before the ``-cj`` suffix keeps its name), else as the builders name it."""
        name = ((self.jobs.get(key) or {}).get("metadata") or {}).get("name")
        return str(name) if name else worker_job_name(key[0], key[2])

    def source(self, view: JobView, body: dict[str, Any]) -> SourceInfo:
        """What a CompressionJob needs to know of the TrainingJob it compresses."""
        ref = ((body.get("spec") or {}).get("source") or {}).get("trainingJobRef")
        src = self.objects.get(("TrainingJob", view.namespace, str(ref)))
        if src is None:
            return SourceInfo(found=False)
        status = src.get("status") or {}
        return SourceInfo(found=True, phase=status.get("phase"), model=status.get("model"))


__all__ = ["KIND_OF_LABEL", "Cache"]
