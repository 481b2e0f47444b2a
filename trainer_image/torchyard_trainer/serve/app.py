"""The HTTP side of the server: the v2 REST routes on aiohttp, and /metrics on its own port.

aiohttp because it is already in both images (Kopf's HTTP stack, a dependency of the
``torchyard`` distribution) and prometheus-client ships its handler: no new dependency, and a
real keep-alive HTTP/1.1 server rather than the stdlib's. The event loop only routes and
counts; decoding, the forward pass and encoding run on one worker thread, so requests are
answered one forward pass at a time with all of torch's intra-op threads (on a CPU, parallel
forward passes only compete for the same cores).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from torchyard_trainer.serve import model as served_model
from torchyard_trainer.serve.metrics import ServingMetrics
from torchyard_trainer.serve.protocol import (
    ProtocolError,
    infer_response,
    model_metadata,
    parse_infer,
)

log = logging.getLogger("torchyard_trainer.serve")

SERVER_NAME = "torchyard"
REASONS = {400: "bad_request", 404: "not_found", 405: "bad_request", 413: "bad_request",
           503: "not_ready"}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Options:
    model_dir: Path
    pvc_root: Path
    name: str | None = None
    max_batch: int = 1024
    verify: bool = True


class Server:
    """One served model version: loaded in the background, then answering requests."""

    def __init__(self, options: Options, metrics: ServingMetrics | None = None) -> None:
        self.options = options
        self.metrics = metrics or ServingMetrics()
        self.name = options.name or options.model_dir.parent.name
        self.version = options.model_dir.name.removeprefix("v")
        self.served: served_model.ServedModel | None = None
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="torchyard-infer")
        self.metrics.ready.labels(self.name, self.version).set(0)

    # ----------------------------------------------------------------------------- loading

    def load(self) -> None:
        """Load the version (in the worker thread); raises ConfigError when it cannot."""
        o = self.options
        served = served_model.load(o.model_dir, o.pvc_root, self.name, o.verify)
        self.version = served.version
        card = served.card
        self.metrics.info.labels(self.name, self.version, served.variant,
                                 str(card.get("sha256", "")), str(card.get("bytes", ""))).set(1)
        self.metrics.ready.labels(self.name, self.version).set(1)
        self.served = served

    # ----------------------------------------------------------------------------- routes

    def _model(self, request: web.Request) -> served_model.ServedModel:
        name = request.match_info["name"]
        version = request.match_info.get("version")
        if name != self.name or (version is not None and version != self.version):
            asked = name if version is None else f"{name} version {version}"
            raise ProtocolError(f"model {asked!r} is not served here (this server serves "
                                f"{self.name!r} version {self.version})", 404)
        if self.served is None:
            raise ProtocolError(f"model {self.name!r} is still loading", 503)
        return self.served

    async def live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        ready = self.served is not None
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def server_metadata(self, request: web.Request) -> web.Response:
        from torchyard_trainer import __version__

        return web.json_response({"name": SERVER_NAME, "version": __version__,
                                  "extensions": []})

    async def model_metadata(self, request: web.Request) -> web.Response:
        s = self._model(request)
        return web.json_response(model_metadata(s.name, s.version, served_model.PLATFORM,
                                                [s.input], [s.output]))

    async def model_ready(self, request: web.Request) -> web.Response:
        try:
            s = self._model(request)
        except ProtocolError as exc:
            if exc.status != 503:
                raise
            return web.json_response({"name": self.name, "ready": False}, status=503)
        return web.json_response({"name": s.name, "ready": True})

    async def infer(self, request: web.Request) -> web.Response:
        s = self._model(request)
        body = await request.read()
        loop = asyncio.get_running_loop()
        with self.metrics.inflight.labels(self.name, self.version).track_inprogress():
            payload = await loop.run_in_executor(self.executor, self._infer, s, body)
        return web.Response(body=payload, content_type="application/json")

    def _infer(self, s: served_model.ServedModel, body: bytes) -> bytes:
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise ProtocolError(f"request: not JSON: {exc}") from None
        req = parse_infer(doc, s.input, [s.output], self.options.max_batch)
        start = time.perf_counter()
        result = s.predict(req.array)
        self.metrics.inference.labels(self.name, self.version).observe(
            time.perf_counter() - start)
        self.metrics.batch.labels(self.name, self.version).observe(req.array.shape[0])
        response = infer_response(s.name, s.version, req.id, {s.output.name: result},
                                  req.outputs)
        return json.dumps(response).encode()

    # ----------------------------------------------------------------------------- counting

    @web.middleware
    async def count(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every answer counted by handler (route) and status; errors as ``{"error": message}``."""
        # one handler label for a route with and without /versions/<v>
        route = (request.match_info.route.name or "other").removesuffix("_version")
        start = time.perf_counter()
        try:
            response = await handler(request)
        except ProtocolError as exc:
            response = web.json_response({"error": str(exc)}, status=exc.status)
        except web.HTTPException as exc:  # the router's 404/405, aiohttp's 413
            response = web.json_response({"error": exc.reason}, status=exc.status)
        except Exception as exc:
            log.exception("%s %s failed", request.method, request.path)
            response = web.json_response({"error": f"internal error: {exc}"}, status=500)
        status = response.status
        m, labels = self.metrics, (self.name, self.version)
        if route == "infer":
            m.latency.labels(*labels).observe(time.perf_counter() - start)
        m.requests.labels(*labels, route, str(status)).inc()
        if status >= 400:
            m.errors.labels(*labels, route, REASONS.get(status, "internal")).inc()
        return response


def build_app(server: Server, with_metrics: bool = False) -> web.Application:
    """The v2 routes (each with and without ``/versions/<v>``); ``/metrics`` when asked."""
    # 64 MiB of JSON: ~6 M numbers, far beyond max_batch of any model we build.
    app = web.Application(middlewares=[server.count], client_max_size=64 << 20)
    r = app.router
    r.add_get("/v2/health/live", server.live, name="live")
    r.add_get("/v2/health/ready", server.ready, name="ready")
    r.add_get("/v2", server.server_metadata, name="server_metadata")
    for prefix, suffix in (("/v2/models/{name}", ""), ("/v2/models/{name}/versions/{version}",
                                                       "_version")):
        r.add_get(prefix, server.model_metadata, name=f"model_metadata{suffix}")
        r.add_get(prefix + "/ready", server.model_ready, name=f"model_ready{suffix}")
        r.add_post(prefix + "/infer", server.infer, name=f"infer{suffix}")
    if with_metrics:
        r.add_get("/metrics", make_aiohttp_handler(server.metrics.registry), name="metrics")
    return app


def metrics_app(server: Server) -> web.Application:
    app = web.Application()
    app.router.add_get("/metrics", make_aiohttp_handler(server.metrics.registry))
    return app


SHUTDOWN_SECONDS = 5.0
"""On SIGTERM, answers in flight get this long (aiohttp's default, 60 s, would outlast a pod's
30 s grace period and keep idle keep-alive clients' servers up that long)."""


async def start_site(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_SECONDS)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
