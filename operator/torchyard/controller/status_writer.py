"""Writing a decision's status, its Events and the job metrics that go with it.

The status goes through the status subresource with ``metadata.resourceVersion`` as an
optimistic-concurrency precondition (a stale cache gets a 409: :class:`Conflict`, reconcile
again — a restart is never counted twice). A write that would only refresh the worker
counts/message is throttled, and so is a new job's first status (Pending, ``Created``) until its
pods are up: in a burst the worker Jobs wait tens of seconds in the Job controller's queue, and
one write then carries ``Created`` and ``Running`` instead of two. Events are posted
fire-and-forget, one per transition — a held write's at once.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from kubernetes import client

from torchyard.api.constants import (
    COMPRESSION_JOB_PLURAL,
    GROUP,
    TRAINING_JOB_PLURAL,
    VERSION,
    ConditionType,
    Phase,
    Reason,
)
from torchyard.controller.cache import Cache
from torchyard.controller.kube import RAW, Conflict, Key, Kube, reason
from torchyard.metrics import OperatorMetrics
from torchyard.state import (
    Decision,
    Event,
    JobView,
    Observed,
    condition_true,
    rfc3339,
    status_patch,
)

log = logging.getLogger("torchyard.operator")

PLURALS = {"TrainingJob": TRAINING_JOB_PLURAL, "CompressionJob": COMPRESSION_JOB_PLURAL}
COUNT_KEYS = frozenset({"workers", "message"})
COMPONENT = "torchyard-operator"


class StatusWriter:
    def __init__(
        self,
        kube: Kube,
        cache: Cache,
        metrics: OperatorMetrics,
        count_update_seconds: float,
        created_update_seconds: float,
        first_status_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.clock = clock
        """Seconds for the throttle's waits (monotonic; a test passes its own)."""
        self.cache = cache
        self.metrics = metrics
        self.count_update_seconds = count_update_seconds
        self.created_update_seconds = created_update_seconds
        self.first_status_seconds = first_status_seconds
        self._event_pool = ThreadPoolExecutor(2, thread_name_prefix="events")
        self.instance = socket.gethostname()
        self._last_write: dict[Key, float] = {}
        self._count_pending: dict[Key, float] = {}
        self._first_pending: dict[Key, float] = {}
        """Per new job whose first status is held: when it was first held."""
        self._announced: dict[Key, set[Event]] = {}
        """Per job: Events of a held write, posted already (its write leaves them out)."""
        self._seen_pods_created: set[Key] = set()
        self._seen_running: set[Key] = set()

    def forget(self, key: Key) -> None:
        self._last_write.pop(key, None)
        self._count_pending.pop(key, None)
        self._first_pending.pop(key, None)
        self._announced.pop(key, None)
        self._seen_pods_created.discard(key)
        self._seen_running.discard(key)

    def throttle(self, key: Key, body: dict[str, Any], decision: Decision) -> float:
        """Seconds to defer this write by (0: write now): a write that only refreshes counts
        waits until ``count_update_seconds`` after the previous write and after the first
        change it would carry: a group's pods are created and turn ready within seconds of
        each other, and one write then carries them all — and the Running transition too when
        it comes within that time (a write with a transition or an Event is never held). One
        whose only news is pods created or removed waits ``created_update_seconds`` from its
        first change: readiness, not creation, is what a starting job waits for. A new job's
        first status is held too (:meth:`_hold_first_status`)."""
        old = dict(body.get("status") or {})
        patch = status_patch(old, decision.status)
        if patch and _only_a_start(old, decision):
            return self._hold_first_status(key, decision)
        if not patch or not set(patch) <= COUNT_KEYS or decision.actions or decision.events:
            self._count_pending.pop(key, None)
            return 0.0
        now = self.clock()
        first = self._count_pending.setdefault(key, now)
        settle = self.count_update_seconds
        if settle > 0 and _only_active_changed(patch, old):
            settle = max(settle, self.created_update_seconds)
        wait = max(
            self.count_update_seconds - (now - self._last_write.get(key, 0.0)),
            settle - (now - first),
        )
        return max(wait, 0.0)

    def _hold_first_status(self, key: Key, decision: Decision) -> float:
        """Seconds a new job's first status (Pending, ``Created``) waits: until its worker
        pods exist, at most ``first_status_seconds`` from when it was first held; once they
        do, ``created_update_seconds`` for their readiness, as any pods-created news. A job
        whose workers turn ready by then gets one write saying ``Created`` and ``Running``
        (the Running transition is never held); its ``JobCreated`` Event goes at once
        (:meth:`announce`). Crash-safe: the held write is decided again from the Job that
        exists (``startTime`` and ``Created`` from the Job's creation time)."""
        now = self.clock()
        wait = self.first_status_seconds - (now - self._first_pending.setdefault(key, now))
        if (decision.status.get("workers") or {}).get("active"):
            pods_since = self._count_pending.setdefault(key, now)
            wait = min(wait, self.created_update_seconds - (now - pods_since))
        return max(wait, 0.0)

    def announce(self, key: Key, body: dict[str, Any], decision: Decision) -> None:
        """Post the Events of a write being held, once: a user sees ``JobCreated`` when the
        Job is created, not when the status catches up; the write then leaves them out."""
        posted = self._announced.setdefault(key, set())
        for event in decision.events:
            if event not in posted:
                posted.add(event)
                self._event_pool.submit(self._post_event, body, event)

    def write(self, key: Key, body: dict[str, Any], decision: Decision) -> None:
        """Write the status the decision wants (if it differs) and post its Events."""
        old = dict(body.get("status") or {})
        patch = status_patch(old, decision.status)
        if patch:
            rv = (body.get("metadata") or {}).get("resourceVersion")
            try:
                updated = self.kube.call(
                    "patch",
                    PLURALS[key[0]] + "/status",
                    self.kube.custom.patch_namespaced_custom_object_status,
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
            self._last_write[key] = self.clock()
            self._count_pending.pop(key, None)
            self._first_pending.pop(key, None)
            if isinstance(updated, dict):
                self.cache.offer_object(key, updated)
            body = updated if isinstance(updated, dict) else body
        posted = self._announced.pop(key, set())
        for event in decision.events:
            if event in posted:
                continue
            # Fire and forget: an Event never holds up the next job's reconcile.
            self._event_pool.submit(self._post_event, body, event)

    def _refresh(self, key: Key) -> None:
        try:
            fresh = self.kube.call(
                "get",
                PLURALS[key[0]],
                self.kube.custom.get_namespaced_custom_object,
                GROUP,
                VERSION,
                key[1],
                PLURALS[key[0]],
                key[2],
            )
        except client.ApiException as exc:
            if exc.status == 404:
                self.cache.drop_object(key)
                return
            raise
        self.cache.offer_object(key, fresh)

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
            self.kube.call(
                "create",
                "events",
                self.kube.core.create_namespaced_event,
                meta.get("namespace"),
                ev,
                **RAW,
            )
        except client.ApiException as exc:  # an event is never worth failing a reconcile
            log.warning("could not post event %s: %s", event.reason, reason(exc))

    def observe_metrics(
        self,
        key: Key,
        body: dict[str, Any],
        view: JobView,
        decision: Decision,
        obs: Observed,
    ) -> None:
        """The job's metrics for this decision (also when its write was throttled)."""
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


def _only_a_start(old: dict[str, Any], decision: Decision) -> bool:
    """A new job's first status with nothing in it but its start: Pending with ``Created``
    True (its Job was just created), worker counts, ``JobCreated``. Anything more — another
    phase, a Warning, a step to take after the write, a status written before — is not held."""
    status = decision.status
    return (
        not old.get("phase")
        and status.get("phase") == Phase.PENDING
        and condition_true(status, ConditionType.CREATED)
        and not decision.after_status
        and all(event.reason == Reason.JOB_CREATED for event in decision.events)
    )


def _only_active_changed(patch: dict[str, Any], old: dict[str, Any]) -> bool:
    """The patch changes ``status.workers.active`` and nothing else."""
    new, before = patch.get("workers"), old.get("workers") or {}
    if set(patch) != {"workers"} or not isinstance(new, dict) or not isinstance(before, dict):
        return False
    changed = {k for k in {*new, *before} if new.get(k) != before.get(k)}
    return changed == {"active"}


def _creation(body: dict[str, Any]) -> float | None:
    ts = (body.get("metadata") or {}).get("creationTimestamp")
    if not ts:
        return None
    try:
        return datetime.fromisoformat(str(ts).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


__all__ = ["COMPONENT", "PLURALS", "StatusWriter"]
