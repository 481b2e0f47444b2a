"""The reconciler: the I/O loop around :func:`torchyard.state.decide`.

Kopf's watch streams (TrainingJobs, CompressionJobs) and the lean watch of the batch Jobs we
create (:mod:`torchyard.controller.jobwatch`, not Kopf) feed the caches
(:mod:`~torchyard.controller.cache`) and the work queue keyed by job
(:mod:`~torchyard.controller.queue`): one reconcile of one job at a time, bursts of events
coalesced into one reconcile, failures retried with capped exponential backoff (a bounded
number of times, except for causes that may pass: a refused child, a Workload to wait for).

A reconcile reads the caches (no GETs), asks the pure state machine what to do, has
:mod:`~torchyard.controller.children` do the actions and
:mod:`~torchyard.controller.status_writer` write the status (with an optimistic-concurrency
precondition: a stale cache can never double-count a restart), the Events and the metrics.

The API calls are the synchronous ``kubernetes`` client, run in worker threads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from kubernetes import client

from torchyard.api.constants import GROUP, VERSION
from torchyard.api.contract import Label
from torchyard.controller.cache import Cache
from torchyard.controller.children import Children
from torchyard.controller.gang import GangResolver
from torchyard.controller.kube import (
    Blocked,
    Conflict,
    Key,
    Kube,
    Refused,
    Retry,
)
from torchyard.controller.modelversions import resolve_source_version
from torchyard.controller.queue import Backoff, Retries, WorkQueue
from torchyard.controller.settings import Settings
from torchyard.controller.status_writer import PLURALS, StatusWriter
from torchyard.controller.waiting_pods import WaitingPods
from torchyard.metrics import OperatorMetrics
from torchyard.state import (
    Decision,
    JobInfo,
    JobView,
    Observed,
    PodInfo,
    controlled_by,
    decide,
    decide_blocked,
    decide_failure,
    lifetime_next,
)
from torchyard.state.modelversion_source import version_ref_of
from torchyard.state.stall import StepTiming

log = logging.getLogger("torchyard.operator")

BACKOFF = Backoff(base=0.5, factor=2.0, cap=30.0)
"""Retries of a failed or held reconcile: 0.5, 1, 2 … 30 s."""
MAX_ATTEMPTS = 12
"""A failing reconcile gives up at its 12th failure in a row (until the next event)."""
CONFLICT_DELAY = 0.05
"""A reconcile that worked from a stale cache (409) runs again after this."""


class Reconciler:
    def __init__(
        self,
        api: Any,
        metrics: OperatorMetrics,
        settings: Settings | None = None,
        gang: GangResolver | None = None,
        backoff: Backoff = BACKOFF,
    ) -> None:
        self.api = api
        self.metrics = metrics
        self.settings = settings or Settings()
        self.gang = gang or GangResolver(api)
        self.kube = Kube(api, metrics)
        self.queue: WorkQueue[Key] = WorkQueue(
            self._process,
            coalesce=self.settings.coalesce_seconds,
            concurrency=self.settings.workers,
            on_depth=metrics.queue_depth.set,
        )
        self.cache = Cache(self.enqueue, self._forget, self.settings.child_coalesce_seconds)
        self._pods_listed: dict[Key, datetime] = {}
        """When each job's worker pods were last looked at (spaces the looks for a stuck one)."""
        self.waiting_pods = WaitingPods(self.kube)
        self._unready: dict[Key, tuple[str, datetime]] = {}
        """Per job: the attempt's Job uid and since when it has had an active pod not ready."""
        self.children = Children(self.kube, self.cache, self.gang, self.settings)
        self.status = StatusWriter(
            self.kube,
            self.cache,
            metrics,
            self.settings.count_update_seconds,
            self.settings.created_update_seconds,
            self.settings.first_status_seconds,
        )
        self._errors: Retries[Key] = Retries(backoff, limit=MAX_ATTEMPTS)
        self._held: Retries[Key] = Retries(backoff)  # Blocked and Retry: without limit
        # Own threads: the loop's default executor has only cpu+4 threads.
        self._pool = ThreadPoolExecutor(self.settings.workers, thread_name_prefix="reconcile")
        self._loop: asyncio.AbstractEventLoop | None = None
        # Rank 0's step timing for stall detection (controller/stall_watch.py wires it).
        self.step_timing: Callable[[Key], StepTiming | None] = lambda key: None
        # What else keeps per-job state and must drop it when the job is deleted (the progress
        # book: without this it kept every deleted job's last report for the process' life).
        self.on_forget: list[Callable[[Key], None]] = []

    # ------------------------------------------------------------------ the watches' side

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.queue.bind(loop)

    def observe_object(self, kind: str, body: dict[str, Any], event_type: str | None) -> None:
        self.cache.observe_object(kind, body, event_type)

    def observe_job(self, body: dict[str, Any], event_type: str | None) -> None:
        self.cache.observe_job(body, event_type)

    def relist_jobs(self, items: list[dict[str, Any]], namespace: str | None) -> None:
        self.cache.relist_jobs(items, namespace)

    def enqueue(self, key: Key, delay: float | None = None, *, movable: bool = False) -> None:
        self.queue.add(key, delay, movable=movable)

    @property
    def queue_depth(self) -> int:
        return self.queue.depth

    @property
    def idle(self) -> bool:
        return self.queue.idle

    def delete_object(self, key: Key) -> bool:
        """Delete the job itself (its TTL passed; the children follow by garbage
        collection). False when it was gone already."""
        try:
            self.kube.custom.delete_namespaced_custom_object(
                GROUP,
                VERSION,
                key[1],
                PLURALS[key[0]],
                key[2],
                body=client.V1DeleteOptions(propagation_policy="Background"),
            )
        except client.ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def _forget(self, key: Key) -> None:
        self._pods_listed.pop(key, None)
        self._unready.pop(key, None)
        self._errors.reset(key)
        self._held.reset(key)
        self.status.forget(key)
        self.metrics.forget_job(*key)
        for hook in self.on_forget:
            hook(key)

    # ------------------------------------------------------------------ the queue's side

    async def _process(self, key: Key) -> None:
        """One reconcile of ``key`` from the queue, and what its outcome means for the next."""
        started = time.perf_counter()
        try:
            assert self._loop is not None
            await self._loop.run_in_executor(self._pool, self.reconcile, key)
        except Conflict:
            self.enqueue(key, CONFLICT_DELAY)
        except Retry as exc:
            attempt = self._held.fail(key)
            (log.info if attempt.number == 1 else log.debug)(
                "%s %s/%s: %s (retry in %.1fs)", *key, exc, attempt.delay
            )
            self.enqueue(key, attempt.delay)
        except Blocked as exc:
            # Counted as a reconcile error (it did not get the job where it should be),
            # retried with capped backoff for as long as it lasts: a raised quota or an
            # installed gang scheduler sends no event to wait for.
            self.metrics.reconcile_errors.labels(key[0]).inc()
            attempt = self._held.fail(key)
            (log.warning if attempt.number == 1 else log.debug)(
                "%s %s/%s: blocked (%s), retry in %.1fs: %s",
                *key,
                exc.refusal.reason,
                attempt.delay,
                exc.refusal.message,
            )
            self.enqueue(key, attempt.delay)
        except Exception as exc:
            self.metrics.reconcile_errors.labels(key[0]).inc()
            attempt = self._errors.fail(key)
            if attempt.delay is None:
                log.error("%s %s/%s: giving up after %d attempts: %s", *key, attempt.number, exc)
            else:
                log.warning(
                    "%s %s/%s: reconcile failed (attempt %d, retry in %.1fs): %s",
                    *key,
                    attempt.number,
                    attempt.delay,
                    exc,
                )
                self.enqueue(key, attempt.delay)
        else:
            self._errors.reset(key)
            self._held.reset(key)
        finally:
            self.metrics.reconcile_seconds.labels(key[0]).observe(time.perf_counter() - started)

    # ------------------------------------------------------------------ one reconcile

    def reconcile(self, key: Key) -> None:
        body = self.cache.objects.get(key)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            return
        view = self.cache.view(key, body)
        obs, decision = self._observe_and_decide(key, body, view)
        blocked: Blocked | None = None
        retry: Retry | None = None
        try:
            self.children.run(key, body, view, decision.before_status)
        except Refused as exc:
            decision = decide_failure(view, obs, exc.refusal.reason, exc.refusal.message)
            self.children.run(key, body, view, decision.before_status)
        except Blocked as exc:
            blocked = exc
            decision = decide_blocked(view, obs, exc.refusal.reason, exc.refusal.message)
        except Retry as exc:
            # Only level-based steps wait (a Workload to deactivate: re-decided on every
            # reconcile while the job is suspended or finished), so the status is written.
            retry = exc
        if blocked is None:
            wait = self.status.throttle(key, body, decision)
            if wait > 0:
                # movable: an event before then (a worker turning ready) is decided at once;
                # the throttle then holds what is still only a count refresh for what is left.
                # A recheck the decision asks for sooner (a deadline, a stuck pod) still comes.
                self.enqueue(key, min(wait, decision.recheck_after or wait), movable=True)
                self.status.announce(key, body, decision)
                self.status.observe_metrics(key, body, view, decision, obs)
                return
        self.status.write(key, body, decision)
        self.children.run(key, body, view, decision.after_status)
        if self._keep_lifetime(key, body, decision):
            return
        if decision.recheck_after is not None:  # nothing may change that would wake us
            # movable: an event before then (a worker turning ready) is not held back by it
            self.enqueue(key, decision.recheck_after, movable=True)
        self.status.observe_metrics(key, body, view, decision, obs)
        if blocked is not None:
            raise blocked
        if retry is not None:
            raise retry

    def _keep_lifetime(self, key: Key, body: dict[str, Any], decision: Decision) -> bool:
        """``ttlSecondsAfterFinished``: delete the finished job once it has passed (True: the
        job is gone). Either limit not yet due: a look-again timer of the work queue at the
        moment it falls due (decide() fails a job past ``activeDeadlineSeconds``). Not a Kopf
        timer per job: those woke every job that sets a limit every second (a third of the
        operator's busy time with 500 such jobs live)."""
        limit = lifetime_next({**body, "status": decision.status})
        if limit is None:
            return False
        what, at = limit
        wait = (at - datetime.now(UTC)).total_seconds()
        if what == "ttl" and wait <= 0:
            if self.delete_object(key):
                log.info("%s %s/%s deleted: ttlSecondsAfterFinished passed", *key)
            return True
        # A deadline already past that decide() did not act on (a step before it settled the
        # decision): look again each second, as the Kopf timer did, never in a tight loop.
        self.enqueue(key, wait if wait > 0 else 1.0, movable=True)
        return False

    def _observe_and_decide(
        self, key: Key, body: dict[str, Any], view: JobView
    ) -> tuple[Observed, Decision]:
        """What the caches say (and, when the decision needs them, the source job and the
        pods), and the state machine's decision on it."""
        now = datetime.now(UTC)
        job_body = self.cache.jobs.get(key)
        job = JobInfo.from_dict(job_body) if job_body else None
        if (
            job is not None
            and job_body is not None
            and not controlled_by(job_body, (body.get("metadata") or {}).get("uid"))
        ):
            # A Job of an earlier object with the same name (deleted and re-created while
            # its children are still being garbage-collected): never ours, wait it out.
            job = replace(job, deleting=True, restart_count=-1, owned=False)
        obs = Observed(
            now=now,
            job=job,
            pods_listed_at=self._pods_listed.get(key),
            unready_since=self._unready_since(key, job, now),
        )
        timing = self.step_timing(key)
        storage = self.settings.default_storage
        decision = decide(view, obs, timing, storage)
        if decision.needs_source:
            ref = version_ref_of(view.kind, body)
            source = (
                resolve_source_version(self.kube, view.namespace, ref)
                if ref
                else self.cache.source(view, body)
            )
            obs = replace(obs, source=source)
            decision = decide(view, obs, timing, storage)
        if decision.needs_pods and obs.job is not None:
            obs = replace(obs, pods=self._pods(key, obs.job))
            decision = decide(view, obs, timing, storage)
        return obs, decision

    def _unready_since(self, key: Key, job: JobInfo | None, now: datetime) -> datetime | None:
        if job is None or job.active <= job.ready:
            self._unready.pop(key, None)
            return None
        uid, since = self._unready.get(key) or ("", now)
        if uid != job.uid:
            uid, since = job.uid, now
            self._unready[key] = (uid, since)
        return since

    def _pods(self, key: Key, job: JobInfo) -> tuple[PodInfo, ...]:
        """A finished Job's pods, all of them (exit codes, results); a running attempt's, those
        waiting on a node (the only ones that can be stuck), from the namespace's shared look."""
        if not job.finished:
            at, waiting = self.waiting_pods.of(key[1], job.uid)
            self._pods_listed[key] = at
            return waiting
        self._pods_listed[key] = datetime.now(UTC)
        selector = f"{Label.JOB_CONTROLLER_UID}={job.uid}"
        pods = self.kube.list_items(
            "pods", self.kube.core.list_namespaced_pod, key[1], label_selector=selector
        )
        return tuple(PodInfo.from_dict(p) for p in pods)


__all__ = ["Blocked", "Conflict", "Key", "Reconciler", "Settings"]
