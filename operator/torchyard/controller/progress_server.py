"""The operator's live-progress endpoint (docs/architecture.md, "Live progress").

An HTTPS server (aiohttp, on Kopf's event loop, its own port beside metrics and health) takes
``POST /v1/progress/<namespace>/<plural>/<name>`` from rank 0 of a job: a JSON
:class:`~torchyard.state.progress.ProgressReport`, authenticated by the pod's projected token
(:mod:`~torchyard.controller.progress_auth`). Each report replaces the job's previous one in
the :data:`BOOK`; a per-job flusher writes ``status.progress`` at most once per
``write_seconds`` (a merge patch of that one field, no resourceVersion precondition: nothing
else writes it while the job runs), so the API-server load does not follow the posting rate.

Configured by the operator's environment (unset ``TORCHYARD_PROGRESS_PORT``: no endpoint, the
workers get no progress URL and do not post):

``TORCHYARD_PROGRESS_PORT``          port to listen on (the chart: 8443)
``TORCHYARD_PROGRESS_ADVERTISE_URL`` base URL the workers post to (the chart: the operator
                                     Service, ``https://<svc>.<ns>.svc:8443``)
``TORCHYARD_PROGRESS_TLS_CERT``/``_KEY``/``_CA``  serving certificate, key and the CA that
                                     signed it (PEM files; the CA's PEM reaches the workers)
``TORCHYARD_PROGRESS_WRITE_SECONDS`` least time between two status writes of a job (5)
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from kubernetes import client
from prometheus_client import Counter

from torchyard.api.constants import GROUP, VERSION, Phase
from torchyard.builders.progress import PLURALS, ProgressEndpoint
from torchyard.controller.cache import Cache
from torchyard.controller.kube import Key, Kube
from torchyard.controller.progress_auth import Authenticator, Forbidden, Unauthenticated
from torchyard.metrics import OperatorMetrics
from torchyard.state.progress import DEFAULT_WRITE_INTERVAL, ProgressBook, ProgressReport

log = logging.getLogger("torchyard.operator")

BOOK = ProgressBook()
"""The operator's one book of the newest report per job (stall detection reads it)."""
KIND_OF_PLURAL = {plural: kind for kind, plural in PLURALS.items()}
FINISHED = (Phase.SUCCEEDED, Phase.FAILED)
MAX_BODY = 16 * 1024
CLEARED = ("etaSeconds", "estimatedCompletionTime", "percent", "samplesPerSecond")


@dataclass(frozen=True)
class ProgressConfig:
    port: int
    base_url: str
    cert: Path
    key: Path
    ca: Path
    write_seconds: float = DEFAULT_WRITE_INTERVAL

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ProgressConfig | None:
        port = env.get("TORCHYARD_PROGRESS_PORT")
        if not port:
            return None
        p = "TORCHYARD_PROGRESS_"
        return cls(
            port=int(port),
            base_url=env[f"{p}ADVERTISE_URL"],
            cert=Path(env[f"{p}TLS_CERT"]),
            key=Path(env[f"{p}TLS_KEY"]),
            ca=Path(env[f"{p}TLS_CA"]),
            write_seconds=float(env.get(f"{p}WRITE_SECONDS") or DEFAULT_WRITE_INTERVAL),
        )

    def endpoint(self) -> ProgressEndpoint:
        return ProgressEndpoint(self.base_url, self.ca.read_text())


class ProgressServer:
    def __init__(
        self,
        kube: Kube,
        cache: Cache,
        metrics: OperatorMetrics,
        config: ProgressConfig,
        book: ProgressBook = BOOK,
    ) -> None:
        self.kube = kube
        self.cache = cache
        self.config = config
        self.book = book
        self.auth = Authenticator(kube, config.endpoint().audience)
        self.reports = Counter(
            "torchyard_progress_reports",
            "Progress reports received, by outcome (accepted, unauthenticated, forbidden, ...).",
            ["result"],
            registry=metrics.registry,
        )
        self.writes = Counter(
            "torchyard_progress_status_writes",
            "status.progress writes (at most one per job per write interval).",
            ["kind"],
            registry=metrics.registry,
        )
        self._flushers: dict[Key, asyncio.Task[None]] = {}
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/v1/progress/{namespace}/{plural}/{name}", self._post)
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(self.config.cert, self.config.key)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "0.0.0.0", self.config.port, ssl_context=tls).start()
        log.info("progress endpoint on :%d (%s)", self.config.port, self.config.base_url)

    async def stop(self) -> None:
        for task in list(self._flushers.values()):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _post(self, request: web.Request) -> web.Response:
        m = request.match_info
        kind = KIND_OF_PLURAL.get(m["plural"])
        if kind is None:
            return self._answer(404, "unknown kind")
        key: Key = (kind, m["namespace"], m["name"])
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        try:
            if not (token and self.auth.cached(token, key)):
                await asyncio.to_thread(self.auth.authorize, token, key)
            report = ProgressReport.parse(await request.json())
        except Unauthenticated as exc:
            return self._answer(401, str(exc), "unauthenticated")
        except Forbidden as exc:
            return self._answer(403, str(exc), "forbidden")
        except ValueError as exc:  # also a body that is not JSON
            return self._answer(400, str(exc), "invalid")
        except client.ApiException as exc:
            return self._answer(503, f"API server: {exc.status}", "unavailable")
        if self._finished(key):
            return self._answer(409, "the job has finished", "finished")
        self.book.record(key, report, time.time())
        if key not in self._flushers:
            self._flushers[key] = asyncio.create_task(self._flush(key))
        return self._answer(202, "accepted", "accepted")

    def _answer(self, code: int, text: str, result: str | None = None) -> web.Response:
        self.reports.labels(result or str(code)).inc()
        return web.json_response({"message": text}, status=code)

    def _finished(self, key: Key) -> bool:
        body = self.cache.objects.get(key) or {}
        return (body.get("status") or {}).get("phase") in FINISHED

    async def _flush(self, key: Key) -> None:
        """Write the job's newest report, waiting out the throttle; ends when nothing is new
        (all on the event loop, so a report recorded after the last take starts a new one)."""
        try:
            while True:
                due = self.book.take(key, time.time(), self.config.write_seconds)
                if due is None:
                    return
                progress, delay = due
                if delay > 0:
                    await asyncio.sleep(delay)
                    continue
                if not self._finished(key):
                    await asyncio.to_thread(self._write, key, progress)
        except Exception:  # a lost progress write is never worth more than a log line
            log.exception("progress write of %s %s/%s failed", *key)
        finally:
            self._flushers.pop(key, None)

    def _write(self, key: Key, progress: dict[str, Any]) -> None:
        kind, namespace, name = key
        try:
            self.kube.call(
                "patch",
                PLURALS[kind] + "/status",
                self.kube.custom.patch_namespaced_custom_object_status,
                GROUP,
                VERSION,
                namespace,
                PLURALS[kind],
                name,
                # Keys the newest report lacks (an ETA not known yet) are cleared, not kept.
                {"status": {"progress": {**dict.fromkeys(CLEARED), **progress}}},
            )
        except client.ApiException as exc:
            if exc.status == 404:
                self.book.forget(key)
                return
            raise
        self.writes.labels(kind).inc()


__all__ = ["BOOK", "ProgressConfig", "ProgressServer"]
