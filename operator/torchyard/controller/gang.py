"""Gang scheduling mode: what ``scheduling.gang: auto`` means on this cluster.

``auto`` looks at the API groups the cluster serves (refreshed at most once a minute):
Kueue (``kueue.x-k8s.io``, when the job names a queue, in its spec or with Kueue's
``kueue.x-k8s.io/queue-name`` label), then Volcano
(``scheduling.volcano.sh``), then the scheduler-plugins coscheduling PodGroup
(``scheduling.x-k8s.io``); none of them means plain pods. The choice itself is pure
(:func:`choose_gang`); only the discovery talks to the API server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection
from typing import Any

from torchyard.api.common import SchedulingSpec
from torchyard.api.contract import COSCHEDULING_GROUP, KUEUE_GROUP, VOLCANO_GROUP
from torchyard.builders import GangMode

REFRESH_SECONDS = 60.0


def choose_gang(requested: str, queue: str | None, groups: Collection[str]) -> GangMode:
    """The gang mode for a job: the requested one, or for ``auto`` the best one available."""
    if requested == "volcano":
        return "volcano"
    if requested == "coscheduling":
        return "coscheduling"
    if requested == "kueue":
        return "kueue"
    if requested == "none":
        return "none"
    if KUEUE_GROUP in groups and queue:
        return "kueue"
    if VOLCANO_GROUP in groups:
        return "volcano"
    if COSCHEDULING_GROUP in groups:
        return "coscheduling"
    return "none"


class GangResolver:
    """Discovers the API groups (cached) and resolves ``auto``."""

    def __init__(self, api: Any, refresh_seconds: float = REFRESH_SECONDS) -> None:
        self.api = api
        self.refresh_seconds = refresh_seconds
        self._groups: frozenset[str] | None = None
        self._preferred: dict[str, str] = {}
        self._at = 0.0
        self._lock = threading.Lock()

    def groups(self) -> frozenset[str]:
        with self._lock:
            if self._groups is None or time.monotonic() - self._at > self.refresh_seconds:
                from kubernetes import client

                listing = client.ApisApi(self.api).get_api_versions()
                groups = listing.groups or []
                self._groups = frozenset(g.name for g in groups)
                self._preferred = {
                    g.name: g.preferred_version.version for g in groups if g.preferred_version
                }
                self._at = time.monotonic()
            return self._groups

    def preferred_version(self, group: str) -> str | None:
        """The version of ``group`` the cluster prefers (discovery), None when not served."""
        self.groups()
        with self._lock:
            return self._preferred.get(group)

    def resolve(self, scheduling: SchedulingSpec, queue: str | None) -> GangMode:
        """``queue``: the LocalQueue the job names, in its spec or its Kueue label
        (:func:`torchyard.builders.kueue_queue_of`)."""
        if scheduling.gang != "auto":
            return choose_gang(scheduling.gang, queue, ())
        return choose_gang("auto", queue, self.groups())


__all__ = ["GangResolver", "choose_gang"]
