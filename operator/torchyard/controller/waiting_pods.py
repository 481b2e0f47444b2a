"""One look per namespace at the worker pods that wait on a node, shared by every job whose
workers are not all up (:mod:`torchyard.state.startup` decides when a job's pods are due).

A worker that cannot start (an image it cannot pull, a missing Secret) is a pod on a node whose
container waits: phase ``Pending`` with ``spec.nodeName`` set. Looking for it with one
label-selected list per job cost a pod list for nearly every job of a burst (0.9 per job at
2,000 x 1: the pods wait for the scheduler and the nodes longer than the first look's 10 s),
each a round trip and a parse on the operator's side and a scan of the namespace's pods on the
API server's. Here one list, filtered on the server to our scheduled Pending pods, serves
every job of the namespace for :data:`REUSE_SECONDS`: in a burst a few dozen lists instead of
thousands, and pods still waiting for the scheduler are not even sent.

The pods of a finished Job (exit codes, rank 0's result) are still listed per job, in full
(:meth:`torchyard.controller.reconciler.Reconciler._pods`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from torchyard.api.contract import Label
from torchyard.controller.kube import Kube
from torchyard.state import PodInfo

REUSE_SECONDS: Final = 5.0
"""How long one namespace's look serves the jobs that ask (half the shortest interval between
two looks at a job, :data:`torchyard.state.startup.RECHECK_SECONDS`): a job's look is never
older than this when it is made."""
FORGET_SECONDS: Final = 120.0
"""A namespace's look is dropped once this old (no job there has asked since)."""
SELECTOR: Final = f"{Label.MANAGED_BY}={Label.MANAGED_BY_VALUE}"
"""Every worker pod the operator's Jobs create carries this label."""
WAITING: Final = "status.phase=Pending,spec.nodeName!="
"""Pods on a node whose containers have not all started: the only ones that can be stuck."""


@dataclass(frozen=True)
class Look:
    """One namespace's waiting worker pods, by the uid of the Job that owns them."""

    at: datetime
    by_job: dict[str, tuple[PodInfo, ...]]
    taken: float
    """The monotonic clock when taken (decides reuse; ``at`` is what a decision sees)."""


class WaitingPods:
    """The namespace looks, taken when a job asks and none is :data:`REUSE_SECONDS` young.
    Reconciles run on many threads: one takes the look while the others for the same
    namespace wait for it, then use it."""

    def __init__(
        self,
        kube: Kube,
        reuse_seconds: float = REUSE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.reuse_seconds = reuse_seconds
        self._clock = clock
        self._looks: dict[str, Look] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def of(self, namespace: str, job_uid: str) -> tuple[datetime, tuple[PodInfo, ...]]:
        """When the look was taken and the waiting pods of Job ``job_uid`` in it."""
        look = self._look(namespace)
        return look.at, look.by_job.get(job_uid, ())

    def _look(self, namespace: str) -> Look:
        with self._guard:
            lock = self._locks.setdefault(namespace, threading.Lock())
        with lock:
            look = self._looks.get(namespace)
            if look is not None and self._clock() - look.taken < self.reuse_seconds:
                return look
            taken, at = self._clock(), datetime.now(UTC)
            items = self.kube.list_items(
                "pods",
                self.kube.core.list_namespaced_pod,
                namespace,
                label_selector=SELECTOR,
                field_selector=WAITING,
            )
            by_job: dict[str, list[PodInfo]] = {}
            for item in items:
                uid = ((item.get("metadata") or {}).get("labels") or {}).get(
                    Label.JOB_CONTROLLER_UID
                )
                if uid:
                    by_job.setdefault(uid, []).append(PodInfo.from_dict(item))
            look = Look(at, {uid: tuple(pods) for uid, pods in by_job.items()}, taken)
            self._looks[namespace] = look
        with self._guard:  # namespaces nobody asks about any more keep nothing
            for other, old in list(self._looks.items()):
                if taken - old.taken > FORGET_SECONDS:
                    del self._looks[other]
        return look


__all__ = ["FORGET_SECONDS", "REUSE_SECONDS", "SELECTOR", "WAITING", "Look", "WaitingPods"]
