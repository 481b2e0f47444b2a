"""Active/standby replicas: a ``coordination.k8s.io`` Lease held by the active operator, and
the health endpoints that tell the truth about it.

Why our own loop and not Kopf peering or ``kubernetes.leaderelection``:

- Kopf peering pauses *every* replica whose priority equals another's (the default: all 0),
  so two identical Deployment replicas freeze; and a crashed peer is only forgotten after the
  peering lifetime (60 s). A Lease cannot freeze: exactly one identity holds it.
- The Python client's ``leaderelection`` sends requests without a timeout (a hung apiserver —
  e.g. while etcd restarts — keeps the old leader acting past the lease, while the standby
  already took over), never releases the lease on shutdown (every rollout waits a full lease)
  and uses the process-global client configuration.

This module follows client-go's ``leaderelection`` semantics: a candidate may take the Lease
when it is free or when its record has not changed for ``lease_duration`` on the candidate's
*own* clock (no clock comparison between machines); the leader renews every ``retry_period``
and steps down — the process exits, as controller-runtime does — when it could not renew for
``renew_deadline``. Every request is bounded by the time left before that deadline, and
``renew_deadline < lease_duration``, so the old leader has stopped before a standby may take
over. Writes use the Lease's resourceVersion (optimistic concurrency): two candidates never
both win one round. A process frozen past the deadline is not stopped by the renewal loop
(it cannot run either), so every request the operator sends passes :meth:`LeaderElector.fence`
first (:func:`fence_client`, :func:`fence_trace`).

The standby never starts Kopf (no handler, no watch, no write on any job); it serves
``/healthz`` and ``/readyz`` (ready: it can take over at once) and
``torchyard_operator_leader 0``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

log = logging.getLogger("torchyard.operator.leader")

DEFAULT_LEASE_NAME = "torchyard-operator"
# On the operator's own pod (POD_NAME/POD_NAMESPACE set, as the chart does): "leader" or
# "standby". The live-progress Service selects "leader": only the acting replica serves it.
ROLE_LABEL = "torchyard.io/operator-role"
# The leader exits with this code when it lost the Lease (the pod restarts as a standby).
EXIT_LEASE_LOST = 3


@dataclass(frozen=True)
class LeaseSettings:
    """client-go's defaults (kube-controller-manager uses the same 15/10/2 s)."""

    namespace: str
    name: str = DEFAULT_LEASE_NAME
    identity: str = field(default_factory=lambda: default_identity())
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError(
                "leader election needs retry period < renew deadline < lease duration, got "
                f"{self.retry_period} / {self.renew_deadline} / {self.lease_duration}"
            )


def default_identity() -> str:
    """The pod's name (unique among replicas) plus a random part: a restarted container in the
    same pod is a new candidate, not the old leader coming back."""
    base = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{base}_{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Record:
    """What a Lease says (the part leader election reads)."""

    holder: str
    duration: int
    acquire_time: datetime | None
    renew_time: datetime | None
    transitions: int

    @staticmethod
    def of(lease: Any) -> Record:
        spec = lease.spec
        return Record(
            holder=spec.holder_identity or "",
            duration=int(spec.lease_duration_seconds or 0),
            acquire_time=spec.acquire_time,
            renew_time=spec.renew_time,
            transitions=int(spec.lease_transitions or 0),
        )


def may_take(
    record: Record, identity: str, observed_at: float, now: float, duration: float
) -> bool:
    """client-go's rule: the Lease is ours to write when we hold it, it is free (released), or
    it has not changed for a whole lease duration as measured on our own monotonic clock."""
    if record.holder in ("", identity):
        return True
    return now >= observed_at + max(duration, float(record.duration))


def next_spec(
    record: Record | None, identity: str, duration: float, now: datetime
) -> dict[str, Any]:
    """The Lease spec we write to acquire or renew."""
    ours = record is not None and record.holder == identity
    transitions = 0 if record is None else record.transitions + (0 if ours else 1)
    acquired = record.acquire_time if ours and record is not None else now
    return {
        "holderIdentity": identity,
        "leaseDurationSeconds": max(1, round(duration)),
        "acquireTime": _micro(acquired),
        "renewTime": _micro(now),
        "leaseTransitions": transitions,
    }


def _micro(t: datetime | None) -> str | None:
    # Lease times are MicroTime: RFC 3339 with exactly six fractional digits.
    return None if t is None else t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class ApiContact:
    """The newest answer from the API server: the readiness probe's evidence."""

    up: bool = False  # the latest request got a (non-5xx) answer
    last_ok: float = 0.0  # monotonic time of the latest such answer

    def mark(self, ok: bool) -> None:
        self.up = ok
        if ok:
            self.last_ok = time.monotonic()


class LeaderElector:
    """Acquire, renew and release one Lease (a daemon thread; see the module docstring)."""

    def __init__(
        self,
        api: Any,
        settings: LeaseSettings,
        registry: CollectorRegistry,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        from kubernetes import client

        from torchyard.controller.corev1 import CoreV1

        api = without_retries(api)
        self.coordination = client.CoordinationV1Api(api)
        self.core = CoreV1(api)
        self.s = settings
        self.leading = threading.Event()
        self.stopped = threading.Event()
        self.api = ApiContact()
        self._observed: Record | None = None
        self._observed_at = 0.0
        self._renewed_at = 0.0
        self._on_lost = on_lost or _exit_lost
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)
        self.gauge = Gauge(
            "torchyard_operator_leader",
            "1 while this replica holds the leader Lease and acts on jobs, 0 while standby.",
            ["identity"],
            registry=registry,
        )
        self.gauge.labels(settings.identity).set(0)

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        log.info("leader election: candidate %s for Lease %s/%s", *self._who())
        self._label_pod("standby")  # a restarted container may carry its old "leader"
        while not self.stopped.is_set():
            started = time.monotonic()
            if self._try(started + self.s.renew_deadline):
                break
            self.stopped.wait(self.s.retry_period)
        if self.stopped.is_set():
            return
        # Counted from before the request: the Lease was written no earlier than this.
        self._renewed_at = started
        self.gauge.labels(self.s.identity).set(1)
        self.leading.set()
        log.info("leader election: %s acquired Lease %s/%s", *self._who())
        self._label_pod("leader")
        self._renew_loop()

    def may_act(self) -> bool:
        """Whether this replica may still act: it leads, and its last renewal began less
        than ``renew_deadline`` ago on our own clock. A standby takes the Lease only after
        ``lease_duration`` (> ``renew_deadline``) without a change, so a request sent while
        this holds reaches the API server before anyone else may act."""
        return self.leading.is_set() and (
            time.monotonic() - self._renewed_at < self.s.renew_deadline
        )

    def fence(self) -> None:
        """Called before every request that may act on jobs. A leader that was frozen
        (SIGSTOP, a stalled VM, a long GC) wakes up with requests already queued, and the
        renewal thread may not run before them; so each request checks the clock itself and,
        past the deadline, the process exits as the renewal loop would have."""
        if self.may_act() or (not self.leading.is_set() and self.stopped.is_set()):
            return  # acting, or shutting down cleanly after a release
        log.error(
            "leader election: %s has not renewed Lease %s/%s for %.1f s; exiting before the "
            "next request",
            *self._who(),
            time.monotonic() - self._renewed_at,
        )
        self._on_lost()

    def _label_pod(self, role: str) -> None:
        pod, ns = os.environ.get("POD_NAME"), os.environ.get("POD_NAMESPACE")
        if not (pod and ns):
            return  # not in a pod (tests, `torchyard operator` on a laptop)
        try:
            body = {"metadata": {"labels": {ROLE_LABEL: role}}}
            self.core.patch_namespaced_pod(pod, ns, body, _request_timeout=5)
        except Exception as exc:
            # Best effort: without the label only the progress Service misses this pod.
            log.warning("could not label pod %s/%s %s=%s: %s", ns, pod, ROLE_LABEL, role, exc)

    def _who(self) -> tuple[str, str, str]:
        return self.s.identity, self.s.namespace, self.s.name

    def _renew_loop(self) -> None:
        while not self.stopped.wait(self.s.retry_period):
            started = time.monotonic()
            if self._try(self._renewed_at + self.s.renew_deadline):
                self._renewed_at = started
                continue
            if time.monotonic() - self._renewed_at >= self.s.renew_deadline:
                self.leading.clear()
                self.gauge.labels(self.s.identity).set(0)
                log.error(
                    "leader election: %s could not renew Lease %s/%s for %.0f s; stepping down",
                    *self._who(),
                    self.s.renew_deadline,
                )
                self._on_lost()
                return

    def _try(self, deadline: float) -> bool:
        """One acquire-or-renew round; its requests end by ``deadline`` (monotonic)."""
        from kubernetes import client

        if time.monotonic() >= deadline:
            return False
        try:
            lease: Any = self.coordination.read_namespaced_lease(
                self.s.name, self.s.namespace, _request_timeout=_left(deadline)
            )
        except client.ApiException as exc:
            if exc.status != 404:
                return self._failed("read", exc)
            self.api.mark(True)
            return self._create(deadline)
        except Exception as exc:
            return self._failed("read", exc)
        self.api.mark(True)
        record = Record.of(lease)
        if record != self._observed:
            self._observed, self._observed_at = record, time.monotonic()
        if not may_take(
            record, self.s.identity, self._observed_at, time.monotonic(), self.s.lease_duration
        ):
            return False
        lease.spec = next_spec(record, self.s.identity, self.s.lease_duration, datetime.now(UTC))
        return self._write(
            lambda: self.coordination.replace_namespaced_lease(
                self.s.name, self.s.namespace, lease, _request_timeout=_left(deadline)
            )
        )

    def _create(self, deadline: float) -> bool:
        body: Any = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.s.name},
            "spec": next_spec(None, self.s.identity, self.s.lease_duration, datetime.now(UTC)),
        }
        return self._write(
            lambda: self.coordination.create_namespaced_lease(
                self.s.namespace, body, _request_timeout=_left(deadline)
            )
        )

    def _write(self, call: Callable[[], Any]) -> bool:
        try:
            written = call()
        except Exception as exc:
            return self._failed("write", exc)
        self.api.mark(True)
        self._observed, self._observed_at = Record.of(written), time.monotonic()
        return True

    def _failed(self, what: str, exc: BaseException) -> bool:
        status = getattr(exc, "status", None)
        # 404/409: the API answered, just not with a yes; 5xx (etcd gone) or no answer: down
        self.api.mark(status is not None and status < 500)
        log.debug("leader election: %s of Lease failed: %s", what, status or exc)
        return False

    def release(self) -> None:
        """Stop; when leading, hand the Lease over at once (client-go's ReleaseOnCancel): the
        standby need not wait a lease duration after a clean shutdown (rollouts, drains)."""
        self.stopped.set()
        if not self.leading.is_set():
            return
        # Let a renewal in flight finish first (its requests end by the renew deadline): our
        # release must not race our own renewal (409).
        self._thread.join(timeout=self.s.renew_deadline)
        self.leading.clear()
        self.gauge.labels(self.s.identity).set(0)
        try:
            lease: Any = self.coordination.read_namespaced_lease(
                self.s.name, self.s.namespace, _request_timeout=2
            )
            if Record.of(lease).holder != self.s.identity:
                return
            lease.spec.holder_identity = ""
            lease.spec.lease_duration_seconds = 1
            self.coordination.replace_namespaced_lease(
                self.s.name, self.s.namespace, lease, _request_timeout=2
            )
            log.info("leader election: %s released Lease %s/%s", *self._who())
        except Exception as exc:
            log.warning("leader election: could not release the Lease: %s", exc)


def without_retries(api: Any) -> Any:
    """A client of its own for the Lease, with urllib3's retries off. By default urllib3
    sends a request that timed out up to three more times, each with the whole timeout, so a
    renewal bounded by the renew deadline ran past it (seen: the leader stepped down 31 s
    after its last renewal while etcd was down, with a 10 s deadline and a 15 s lease) — long
    enough for a standby to take the Lease while the old leader still acts. The loop retries
    on its own, every retry period, within the deadline."""
    import copy

    from kubernetes import client

    cfg = copy.deepcopy(api.configuration)
    cfg.retries = False
    return client.ApiClient(cfg)


def fence_client(api: Any, fence: Callable[[], None]) -> None:
    """Make every request of the Python client ``api`` pass ``fence`` first (its
    ``call_api``, watches included, sends all of them through ``rest_client.request``)."""
    rest = api.rest_client
    send = rest.request

    def fenced(*args: Any, **kwargs: Any) -> Any:
        fence()
        return send(*args, **kwargs)

    rest.request = fenced


def fence_trace(fence: Callable[[], None]) -> Any:
    """An aiohttp trace for Kopf's session: ``fence`` before each request and again once
    its connection is at hand (a new one may take a TLS handshake), just before it is sent."""
    import aiohttp

    async def check(*_: Any) -> None:
        fence()

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(check)
    trace.on_connection_create_end.append(check)
    trace.on_connection_reuseconn.append(check)
    return trace


def _left(deadline: float) -> float:
    return max(0.2, deadline - time.monotonic())


def _exit_lost() -> None:
    # No cleanup that could still write: another replica may already be acting.
    logging.shutdown()
    os._exit(EXIT_LEASE_LOST)


class ApiPinger:
    """Without leader election, the API contact the readiness probe reads comes from a cheap
    ``GET /readyz`` of the API server every ``period`` seconds (``/version`` would answer
    with etcd gone; ``/readyz`` is readable by everyone: system:public-info-viewer)."""

    def __init__(self, api: Any, period: float = 2.0) -> None:
        self.client = api
        self.period = period
        self.api = ApiContact()
        self.stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="api-ping", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while True:
            try:
                request = self.client.param_serialize(
                    "GET", "/readyz", auth_settings=["BearerToken"]
                )
                answer = self.client.call_api(*request, _request_timeout=self.period)
                answer.read()  # hands the connection back to the pool
                self.api.mark(answer.status == 200)
            except Exception as exc:
                self.api.mark(False)
                log.debug("API ping failed: %s", exc)
            if self.stopped.wait(self.period):
                return


@dataclass
class Health:
    """What ``/healthz`` and ``/readyz`` answer (controller-runtime's split).

    Liveness: the process's own loops run (restarting the pod helps only then). Readiness:
    the latest request to the API server was answered (no 5xx), within ``api_grace``
    seconds, and, on the leader, the job watches are healthy. A standby is live and ready (it
    can take over at once) but does not act —
    ``leader`` in the body and the ``torchyard_operator_leader`` gauge say which one acts.
    """

    contact: ApiPinger | LeaderElector
    api_grace: float
    job_watches: Callable[[], bool] = lambda: True

    def live(self) -> tuple[bool, dict[str, Any]]:
        return self.contact.alive(), {"loops": self.contact.alive()}

    def ready(self) -> tuple[bool, dict[str, Any]]:
        api = self.contact.api
        since = time.monotonic() - api.last_ok
        api_ok = api.up and since < self.api_grace
        leader = isinstance(self.contact, LeaderElector) and self.contact.leading.is_set()
        standby = isinstance(self.contact, LeaderElector) and not leader
        watches = standby or self.job_watches()
        body = {
            "api": "ok" if api_ok else "no answer" + (f" for {since:.0f} s" if api.last_ok else ""),
            "leader": leader or not isinstance(self.contact, LeaderElector),
            "jobWatch": watches if not standby else "standby",
        }
        return api_ok and watches, body


def serve_health(port: int, health: Health) -> ThreadingHTTPServer:
    """``/healthz`` (liveness) and ``/readyz`` (readiness) on ``port``, in a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            check = {"/healthz": health.live, "/readyz": health.ready}.get(self.path)
            if check is None:
                self.send_error(404)
                return
            ok, body = check()
            data = json.dumps(body).encode()
            self.send_response(200 if ok else 503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # probes every few seconds would drown the log

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server


@dataclass
class Gate:
    """What stands between ``torchyard operator`` and Kopf: the health endpoints and, with
    leader election, the Lease. :func:`wait_for_turn` returns once this replica may act."""

    health: Health
    elector: LeaderElector | None
    pinger: ApiPinger | None

    def release(self) -> None:
        if self.elector is not None:
            self.elector.release()
        if self.pinger is not None:
            self.pinger.stopped.set()


def wait_for_turn(
    api: Any, lease: LeaseSettings | None, registry: CollectorRegistry, health_port: int | None
) -> Gate:
    """Start the health endpoints, then — with ``lease`` — block as a standby until this
    replica holds the Lease. Nothing that acts on jobs runs before this returns."""
    elector = LeaderElector(api, lease, registry) if lease is not None else None
    pinger = None if elector is not None else ApiPinger(api)
    contact: ApiPinger | LeaderElector = elector or pinger  # type: ignore[assignment]
    gate = Gate(Health(contact, lease.renew_deadline if lease else 10.0), elector, pinger)
    if health_port:
        serve_health(health_port, gate.health)
    contact.start()
    if elector is not None:
        elector.leading.wait()
    return gate


__all__ = [
    "DEFAULT_LEASE_NAME",
    "EXIT_LEASE_LOST",
    "ROLE_LABEL",
    "ApiPinger",
    "Gate",
    "Health",
    "LeaderElector",
    "LeaseSettings",
    "Record",
    "fence_client",
    "fence_trace",
    "may_take",
    "next_spec",
    "serve_health",
    "wait_for_turn",
    "without_retries",
]
