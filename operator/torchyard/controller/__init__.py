"""Kopf handlers of the torchyard operator: thin, level-based.

Importing this package registers the handlers with Kopf's default registry:

- ``on.event`` of TrainingJobs and CompressionJobs, and a lean watch of the batch Jobs we
  own (:mod:`torchyard.controller.jobwatch`), feed the reconciler's caches and work queue
  (:mod:`torchyard.controller.reconciler`); no handler here changes anything itself, so Kopf
  writes no progress/diff-base annotations and adds no finalizer — no extra PATCH per event.
  ``activeDeadlineSeconds`` and ``ttlSecondsAfterFinished`` are look-again timers of the
  reconciler's work queue, not Kopf timers (which woke each such job every second); a
  ``torchyard.io/finalizer`` that the Kopf timers of earlier versions added is removed by Kopf
  on the job's next event, as no handler needs it;
- ``on.startup`` applies the operator settings (:func:`configure`) and starts the batch Job
  watches; ``/healthz`` and ``/readyz`` are ours (:mod:`torchyard.controller.leader`), served
  before Kopf starts, so that a standby replica answers them too.

The reconciler's parts: :mod:`~torchyard.controller.queue` (work queue, backoff),
:mod:`~torchyard.controller.cache` (what the watches saw), :mod:`~torchyard.controller.children`
(the actions), :mod:`~torchyard.controller.status_writer` (status, Events, job metrics) and
:mod:`~torchyard.controller.reconciler` (the loop around :func:`torchyard.state.decide`).

Run with :func:`run_operator` (``torchyard operator``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import Any

import kopf

from torchyard.api.constants import (
    COMPRESSION_JOB_PLURAL,
    GROUP,
    TRAINING_JOB_PLURAL,
    VERSION,
)
from torchyard.api.contract import Label
from torchyard.controller import modelversions as _modelversions  # + its ModelVersion handlers
from torchyard.controller.jobwatch import start_job_watches
from torchyard.controller.leader import LeaseSettings, fence_client, fence_trace, wait_for_turn
from torchyard.controller.progress_server import BOOK, ProgressConfig, ProgressServer
from torchyard.controller.reconciler import Reconciler, Settings
from torchyard.controller.stall_watch import start_stall_watch
from torchyard.metrics import OperatorMetrics

log = logging.getLogger("torchyard.operator")

FINALIZER = f"{GROUP}/finalizer"
ANNOTATION_PREFIX = GROUP
KINDS = {TRAINING_JOB_PLURAL: "TrainingJob", COMPRESSION_JOB_PLURAL: "CompressionJob"}


class EventOnlyDiffBase(kopf.AnnotationsDiffBaseStorage):
    """Kopf's annotation diff-base, except for our own kinds, which have ``on.event``
    handlers only: Kopf builds a diff base (a deep copy of the object less a few fields) and
    fetches the stored one for every event of every resource, but only
    ``on.create/update/resume`` handlers and timers use them. For TrainingJobs and
    CompressionJobs the build was a tenth of the operator's CPU in a 2,000-job burst and the
    fetch (a look-up of the annotation through Kopf's body views) 3% of its busy samples, for
    nothing: both are empty for them, so the diff is too. ModelVersions (``on.delete``, a
    timer) keep the real ones."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        if _event_only(body):
            return kopf.BodyEssence()
        return super().build(body=body, extra_fields=extra_fields)

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        if _event_only(body):
            return kopf.BodyEssence()
        return super().fetch(body=body)


def _event_only(body: kopf.Body) -> bool:
    """One of the kinds with ``on.event`` handlers only (TrainingJob, CompressionJob)."""
    return body.get("kind") in KINDS.values() and str(body.get("apiVersion", "")).startswith(
        f"{GROUP}/"
    )


def configure(settings: kopf.OperatorSettings, *, peering: str | None = None) -> None:
    """Production settings (see docs/operator.md)."""
    # Our own prefix for everything Kopf stores on objects: the finalizer (none is needed
    # now; Kopf removes the one earlier versions' timers added) and handler
    # progress/diff-base in annotations — never in status, which stays schema-clean (the
    # CRD's status schema has no room for Kopf's fields).
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ANNOTATION_PREFIX
    )
    settings.persistence.diffbase_storage = EventOnlyDiffBase(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    # Kopf would post an Event for every timer run; we post our own, one per transition.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "torchyard-operator"
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 30
    settings.networking.connect_timeout = 10
    # Bounded retries for Kopf's own handlers (the timer): 1, 2, 4 ... 30 s.
    settings.execution.default_backoff = 5
    settings.queueing.error_delays = (1, 2, 4, 8, 15, 30)
    if peering:
        settings.peering.name = peering
        settings.peering.mandatory = True
        settings.peering.standalone = False
    else:
        # One replica (Deployment replicas: 1, strategy Recreate): no peering objects needed.
        settings.peering.standalone = True


@dataclass
class OperatorOptions:
    namespaces: list[str]
    all_namespaces: bool = True
    metrics_port: int | None = 8080
    health_port: int | None = 8081
    default_image: str | None = None
    default_storage: str | None = None
    peering: str | None = None
    verbose: bool = False
    # Active/standby replicas by a Lease (controller/leader.py); None: this one always acts.
    leader_election: LeaseSettings | None = None


def _plain(body: kopf.Body) -> dict[str, Any]:
    return {k: body[k] for k in body}


def _reconciler(memo: kopf.Memo) -> Reconciler:
    r: Reconciler = memo.reconciler
    return r


@kopf.on.login()
async def _login(
    logger: kopf.Logger, settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any
) -> kopf.ConnectionInfo | kopf.AiohttpSession | None:
    """Kopf's own login (the Python client's configuration), with the leader's fence on
    Kopf's HTTP session: a leader past its renew deadline sends no request (leader.py)."""
    info = kopf.login_via_client(logger=logger, settings=settings)
    fence = getattr(memo, "fence", None)
    if info is None or fence is None:
        return info
    import aiohttp

    session = aiohttp.ClientSession(  # as Kopf builds its own (kopf/_cogs/clients/auth.py)
        connector=aiohttp.TCPConnector(limit=0, ssl=info.as_ssl_context()),
        headers=info.as_http_headers(),
        proxy=info.proxy_url,
        trust_env=info.trust_env,
        trace_configs=[fence_trace(fence)],
    )
    return kopf.AiohttpSession(
        server=info.server,
        priority=info.priority,
        default_namespace=info.default_namespace,
        expiration=info.expiration,
        aiohttp_session=session,
    )


@kopf.on.startup()
async def _startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    configure(settings, peering=getattr(memo, "peering", None))
    r = _reconciler(memo)
    r.bind(asyncio.get_running_loop())
    # Our batch Jobs: a lean watch of our own, not Kopf's (see controller/jobwatch.py).
    memo.job_watches = await asyncio.to_thread(
        start_job_watches,
        r.api,
        list(getattr(memo, "namespaces", None) or []),
        f"{Label.MANAGED_BY}={Label.MANAGED_BY_VALUE}",
        r.observe_job,
        r.relist_jobs,
    )
    config: ProgressConfig | None = getattr(memo, "progress", None)
    if config is not None:
        memo.progress_server = ProgressServer(r.kube, r.cache, r.metrics, config)
        await memo.progress_server.start()
    memo.stall_watch = start_stall_watch(r, BOOK)  # reads the progress book (Stalled)
    r.on_forget.append(BOOK.forget)


@kopf.on.cleanup()
async def _cleanup(memo: kopf.Memo, **_: Any) -> None:
    for w in getattr(memo, "job_watches", None) or []:
        w.stop()
    if getattr(memo, "stall_watch", None) is not None:
        memo.stall_watch.cancel()
    server = getattr(memo, "progress_server", None)
    if server is not None:
        await server.stop()


def _watches_healthy(memo: kopf.Memo) -> bool:
    return all(w.healthy.is_set() for w in getattr(memo, "job_watches", None) or [])


# One handler per kind does all that an event of it needs (Kopf's machinery around each
# handler call costs more than these handlers do): the reconciler sees the object, then a
# succeeded job's ModelVersion is recorded.
@kopf.on.event(GROUP, VERSION, TRAINING_JOB_PLURAL)
async def _training_job_event(
    event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    _reconciler(memo).observe_object("TrainingJob", _plain(body), event.get("type"))
    await _modelversions.record_job_version("TrainingJob", body, memo)


@kopf.on.event(GROUP, VERSION, COMPRESSION_JOB_PLURAL)
async def _compression_job_event(
    event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    _reconciler(memo).observe_object("CompressionJob", _plain(body), event.get("type"))
    await _modelversions.record_job_version("CompressionJob", body, memo)


def _api_client() -> Any:
    from kubernetes import client, config

    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    cfg = client.Configuration.get_default_copy()
    cfg.connection_pool_maxsize = 32
    return client.ApiClient(cfg)


def run_operator(opts: OperatorOptions) -> None:
    """Run the operator until SIGINT/SIGTERM (blocking)."""
    kopf.configure(verbose=opts.verbose)
    if not opts.verbose:
        # Kopf logs every handler call at INFO; our reconciler logs what matters.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    logging.getLogger("torchyard").setLevel(logging.DEBUG if opts.verbose else logging.INFO)
    metrics = OperatorMetrics()
    settings = Settings()
    if opts.default_image:
        settings.default_image = opts.default_image
    settings.default_storage = opts.default_storage
    progress = ProgressConfig.from_env(os.environ)  # live progress (controller/progress_server)
    if progress is not None:
        settings.progress = progress.endpoint()
        settings.progress_write_seconds = progress.write_seconds
    api = _api_client()
    reconciler = Reconciler(api, metrics, settings)
    if opts.metrics_port:
        metrics.serve(opts.metrics_port)
    # /healthz and /readyz (ours, not Kopf's: they must answer while a standby waits) and the
    # Lease: a standby blocks here and never starts Kopf.
    gate = wait_for_turn(api, opts.leader_election, metrics.registry, opts.health_port)
    memo = kopf.Memo(
        reconciler=reconciler, peering=opts.peering, namespaces=opts.namespaces, progress=progress
    )
    if gate.elector is not None:
        # From here every request that could act on a job passes the Lease's fence: ours
        # (the Python client) and Kopf's (its session, built in _login).
        fence_client(api, gate.elector.fence)
        memo.fence = gate.elector.fence
    gate.health.job_watches = lambda: _watches_healthy(memo)
    try:
        kopf.run(
            standalone=opts.peering is None,
            peering_name=opts.peering,
            clusterwide=opts.all_namespaces and not opts.namespaces,
            namespaces=opts.namespaces,
            memo=memo,
        )
    finally:
        gate.release()


__all__ = ["FINALIZER", "OperatorOptions", "configure", "run_operator"]
