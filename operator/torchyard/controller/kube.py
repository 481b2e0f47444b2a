"""The controller's API calls and what their answers mean for a reconcile.

:class:`Kube` holds the typed clients and counts every request (and every error) in the
operator metrics; the exceptions tell the reconcile loop how to go on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import urllib3
from kubernetes import client

from torchyard.controller.corev1 import CoreV1
from torchyard.controller.rawapi import BatchV1, CustomObjects
from torchyard.metrics import OperatorMetrics
from torchyard.state import Refusal

Key = tuple[str, str, str]  # (kind, namespace, name)
# Responses we do not read (or read as JSON): skip the client's typed deserialization,
# which costs more CPU than the request itself.
RAW: dict[str, Any] = {"_preload_content": False}


class Conflict(Exception):
    """The cached object was stale (409 on a guarded write): reconcile again."""


class Retry(Exception):
    """A step waits for something another controller makes (Kueue's Workload of a Job):
    reconcile again with capped backoff, without limit and without a status change."""


class Blocked(Exception):
    """A child could not be created for a reason that may pass (quota, no gang scheduler,
    the operator's RBAC): the status says why; reconcile again with backoff, without limit."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


class Refused(Exception):
    """The API server refused a child as invalid: the job cannot run as written."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


class Kube:
    """The API clients, with every request counted in the metrics."""

    def __init__(self, api: Any, metrics: OperatorMetrics) -> None:
        self.api = api
        # Not the generated CoreV1Api: its module alone is ~20 MiB of RSS (corev1.py).
        self.core = CoreV1(api)
        # Not the generated BatchV1Api/CustomObjectsApi either: they validate every dict body
        # into typed models and back (rawapi.py). Typed as Any: bodies are plain dicts.
        self.batch: Any = BatchV1(api)
        self.custom: Any = CustomObjects(api)
        self.metrics = metrics

    def call(self, verb: str, resource: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        self.metrics.api_requests.labels(verb, resource).inc()
        try:
            result = fn(*args, **kw)
            if isinstance(result, urllib3.BaseHTTPResponse):
                # A raw response (RAW) holds its connection until its body is read: read it
                # now (cached in .data), so the connection goes back to the pool. Unread, each
                # raw call left its connection behind and the next call paid a new TLS
                # handshake (client certificate loaded from disk) — most of the operator's
                # CPU in the burst profile.
                _ = result.data
            return result
        except client.ApiException as exc:
            if not (exc.status == 409 and verb == "create"):
                self.metrics.api_errors.labels(verb, resource, str(exc.status)).inc()
            raise

    def list_items(
        self, resource: str, fn: Callable[..., Any], *args: Any, **kw: Any
    ) -> list[dict[str, Any]]:
        """A list's items as the API server's JSON. The typed client's deserialization of
        pods (every field a model object) cost more CPU than the request: with 4,000
        pods Pending in a burst, every job's look at its pods went through it."""
        result = self.call("list", resource, fn, *args, **RAW, **kw)
        items = json.loads(result.data).get("items")
        return list(items or [])


def reason(exc: client.ApiException) -> str:
    """The API server's message of a refused request."""
    try:
        return str(json.loads(str(exc.body)).get("message"))
    except (TypeError, ValueError, AttributeError):
        return f"{exc.status} {exc.reason}"


def resource_version(obj: dict[str, Any] | None) -> int:
    try:
        return int(((obj or {}).get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


__all__ = [
    "RAW",
    "Blocked",
    "Conflict",
    "Key",
    "Kube",
    "Refused",
    "Retry",
    "reason",
    "resource_version",
]
