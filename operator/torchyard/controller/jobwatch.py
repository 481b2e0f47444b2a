"""A lean watch of the batch Jobs the operator owns (list, then watch; relist on 410).

Kopf can watch batch Jobs too, but it runs its whole per-event machinery (cause detection,
diff-base essence, progress storage) on each of the dozen status updates a Job makes while
its pods start and finish; in the scale benchmark that was most of the operator's CPU. We
only need "this Job changed: here is its body", so this is a plain streaming watch with
server-side label selection, ``json.loads`` per event and resourceVersion bookkeeping.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from torchyard.controller.queue import Backoff

log = logging.getLogger("torchyard.operator.jobwatch")

OnEvent = Callable[[dict[str, Any], str | None], None]
OnRelist = Callable[[list[dict[str, Any]], str | None], None]
WATCH_SECONDS = 270
RECONNECT_BACKOFF = Backoff(base=0.5, factor=2.0, cap=30.0)
"""After a failed list or watch: 0.5, 1, 2 … 30 s; a successful list starts over."""


class Gone(Exception):
    """The resourceVersion is too old (HTTP 410): list again."""


class JobWatch(threading.Thread):
    def __init__(
        self,
        api: Any,
        *,
        namespace: str | None,
        label_selector: str,
        on_event: OnEvent,
        on_relist: OnRelist,
    ) -> None:
        super().__init__(daemon=True, name=f"jobwatch-{namespace or 'all'}")
        self.api = api
        self.namespace = namespace
        self.selector = label_selector
        self.on_event = on_event
        self.on_relist = on_relist
        self.stopped = threading.Event()
        self.healthy = threading.Event()

    @property
    def _path(self) -> str:
        base = self.api.configuration.host.rstrip("/") + "/apis/batch/v1"
        if self.namespace:
            return f"{base}/namespaces/{self.namespace}/jobs"
        return f"{base}/jobs"

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        for setting in self.api.configuration.auth_settings().values():
            if setting.get("in") == "header" and setting.get("value"):
                headers[setting["key"]] = setting["value"]
        return headers

    def run(self) -> None:
        failures = 0
        while not self.stopped.is_set():
            try:
                rv = self._list()
                failures = 0
                while not self.stopped.is_set():
                    rv = self._watch(rv)
            except Gone:
                continue
            except Exception as exc:
                self.healthy.clear()
                log.warning("batch Job watch (%s) failed, relisting: %s", self.namespace, exc)
                failures += 1
                self.stopped.wait(RECONNECT_BACKOFF.delay(failures))

    def _list(self) -> str:
        url = f"{self._path}?labelSelector={quote(self.selector)}"
        r = self.api.rest_client.pool_manager.request(
            "GET", url, headers=self._headers(), timeout=30.0
        )
        if r.status != 200:
            raise RuntimeError(f"list jobs: HTTP {r.status}: {r.data[:200]!r}")
        listing = json.loads(r.data)
        items = listing.get("items") or []
        for item in items:
            item.setdefault("apiVersion", "batch/v1")
            item.setdefault("kind", "Job")
        self.on_relist(items, self.namespace)
        self.healthy.set()
        return str(listing["metadata"]["resourceVersion"])

    def _watch(self, rv: str) -> str:
        url = (
            f"{self._path}?watch=1&allowWatchBookmarks=true&resourceVersion={rv}"
            f"&timeoutSeconds={WATCH_SECONDS}&labelSelector={quote(self.selector)}"
        )
        import urllib3

        r = self.api.rest_client.pool_manager.request(
            "GET",
            url,
            headers=self._headers(),
            preload_content=False,
            timeout=urllib3.Timeout(connect=10.0, read=WATCH_SECONDS + 60.0),
        )
        try:
            if r.status == 410:
                raise Gone()
            if r.status != 200:
                raise RuntimeError(f"watch jobs: HTTP {r.status}")
            buf = b""
            for chunk in r.stream(65536):
                if self.stopped.is_set():
                    break
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        rv = self._handle(json.loads(line), rv)
        finally:
            r.release_conn()
        return rv

    def _handle(self, event: dict[str, Any], rv: str) -> str:
        etype = event.get("type")
        obj = event.get("object") or {}
        if etype == "ERROR":
            if obj.get("code") == 410:
                raise Gone()
            raise RuntimeError(f"watch error: {obj.get('message')}")
        new_rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
        if etype != "BOOKMARK":
            self.on_event(obj, etype)
        return new_rv

    def stop(self) -> None:
        self.stopped.set()


def start_job_watches(
    api: Any,
    namespaces: list[str],
    label_selector: str,
    on_event: OnEvent,
    on_relist: OnRelist,
) -> list[JobWatch]:
    watches = [
        JobWatch(
            api,
            namespace=ns,
            label_selector=label_selector,
            on_event=on_event,
            on_relist=on_relist,
        )
        for ns in (namespaces or [None])  # type: ignore[list-item]
    ]
    for w in watches:
        w.start()
    deadline = time.monotonic() + 30
    for w in watches:
        w.healthy.wait(max(0.0, deadline - time.monotonic()))
    return watches


__all__ = ["JobWatch", "start_job_watches"]
