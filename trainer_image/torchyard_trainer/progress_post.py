"""Rank 0's live progress to the operator (docs/architecture.md, "Live progress").

The operator gives the pod ``TORCHYARD_PROGRESS_URL`` (absent: nothing is posted), a projected
service-account token file and the PEM of the CA its endpoint's certificate is signed by.
:class:`ProgressPoster` folds the progress events rank 0 writes to ``progress.jsonl`` (the
built-in trainer's and a user script's :class:`~torchyard_trainer.report.Reporter`'s alike,
through :class:`~torchyard_trainer.metrics.ProgressLog`) into one snapshot, and a daemon thread
POSTs the newest snapshot at most once per ``MIN_INTERVAL`` seconds with a short timeout.
Training never waits on it: :meth:`offer` only swaps a dict under a lock; a failed or slow post
is dropped (the next one carries the newer snapshot) and logged once. The connection is kept
open between posts: a TLS handshake per post made the operator's answers take seconds at 200
jobs (bench/progress_cost.py, "new connection per post"), past the timeout.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import ssl
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from torchyard.api.contract import Env

log = logging.getLogger("torchyard_trainer")

MIN_INTERVAL = 1.0
TIMEOUT = 3.0
# Event fields that become the snapshot's own keys; the other numbers go to "metrics".
OWN_KEYS = ("step", "epoch", "totalSteps", "loss", "accuracy", "samplesPerSecond")
METRIC_KEYS = ("lr", "tokensPerSecond", "stepTime", "dataWait", "mfu", "valLoss")


def fold(snapshot: Mapping[str, Any], event: Mapping[str, Any]) -> dict[str, Any]:
    """The snapshot after one progress event (pure)."""
    out = {**snapshot, "metrics": dict(snapshot.get("metrics") or {})}
    if event.get("event") not in ("start", "step", "eval"):
        return out
    for k in OWN_KEYS:
        if event.get(k) is not None:
            out[k] = event[k]
    for k in METRIC_KEYS:
        v = event.get(k)
        if isinstance(v, int | float) and not isinstance(v, bool):
            out["metrics"][k] = v
    if "startStep" in event and "step" not in out:
        out["step"] = event["startStep"]
    out["time"] = event.get("time", time.time())
    return out


class ProgressPoster:
    def __init__(self, url: str, token_file: str, ca_pem: str | None) -> None:
        self.url = url
        self.token_file = token_file
        self.tls = ssl.create_default_context(cadata=ca_pem or None)
        self._conn: http.client.HTTPSConnection | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._snapshot: dict[str, Any] = {}
        self._sent: dict[str, Any] | None = None
        self._warned = False
        self.posted = 0
        self._thread = threading.Thread(target=self._run, name="progress-post", daemon=True)
        self._thread.start()

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ProgressPoster | None:
        url = env.get(Env.PROGRESS_URL)
        if not url or env.get(Env.RANK, "0") != "0":
            return None
        return cls(url, env.get(Env.PROGRESS_TOKEN_FILE, ""), env.get(Env.PROGRESS_CA))

    def offer(self, event: Mapping[str, Any]) -> None:
        """Fold in one progress event; never blocks on the network."""
        with self._lock:
            self._snapshot = fold(self._snapshot, event)
        self._wake.set()

    def close(self, timeout: float = 1.0) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                snap = self._snapshot
            if "step" in snap and snap is not self._sent:
                self._post(snap)
                self._sent = snap
            time.sleep(MIN_INTERVAL)

    def _connection(self) -> tuple[http.client.HTTPSConnection, str]:
        parts = urlsplit(self.url)
        if self._conn is None:
            self._conn = http.client.HTTPSConnection(
                parts.hostname or "", parts.port, timeout=TIMEOUT, context=self.tls
            )
        return self._conn, parts.path + (f"?{parts.query}" if parts.query else "")

    def _post(self, snapshot: dict[str, Any]) -> None:
        try:
            with open(self.token_file) as fh:  # re-read: the kubelet rotates it
                token = fh.read().strip()
            conn, path = self._connection()
            conn.request(
                "POST",
                path,
                body=json.dumps(snapshot).encode(),
                headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
            )
            resp = conn.getresponse()
            resp.read()  # drained, so the connection can carry the next post
            if resp.status >= 300:
                raise OSError(f"HTTP {resp.status} {resp.reason}")
            self.posted += 1
        except (OSError, ValueError, http.client.HTTPException) as exc:  # refusals, timeouts
            if self._conn is not None:  # a broken or timed-out connection is not reused
                self._conn.close()
                self._conn = None
            if not self._warned:
                log.warning("live progress not posted (training goes on): %s", exc)
                self._warned = True


__all__ = ["ProgressPoster", "fold"]
