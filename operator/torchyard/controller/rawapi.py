"""The operator's batch/v1 and custom-object calls, on the kubernetes client's own
``ApiClient`` (configuration, auth, TLS, connection pool, ``ApiException``) but without its
generated ``BatchV1Api`` and ``CustomObjectsApi``; :mod:`torchyard.controller.corev1` does
the same for core/v1 and shares :func:`request`.

Why: the generated methods are wrapped in pydantic's ``validate_call``, which turns every dict
body into the client's typed model (a Job: its whole pod template, field by field) and back
into a dict before a byte is sent. In a py-spy profile of 2,000 jobs that was 17% of the
operator's busy samples — the Job creates and the status patches, the two writes every job
makes — more than the requests themselves. The methods keep the generated names and
argument order, so call sites read the same. Answers: the parsed JSON (what the generated
client returns for custom objects), or the raw response where the caller asks for it with
``_preload_content=False`` (``RAW``) and reads ``.data`` itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

import urllib3
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

JSON = "application/json"
STRATEGIC_MERGE = "application/strategic-merge-patch+json"
"""Patches of built-in objects (what the generated client sends for a dict body)."""
MERGE = "application/merge-patch+json"
"""Patches of custom objects (which have no strategic-merge schema)."""


def request(
    api: ApiClient,
    method: str,
    path: str,
    body: Any = None,
    *,
    content_type: str = JSON,
    query: Iterable[tuple[str, str]] = (),
    _request_timeout: Any = None,
) -> urllib3.BaseHTTPResponse:
    """One request; the raw response (unread) or :class:`ApiException` for a non-2xx one."""
    headers = {"Accept": JSON}
    if body is not None:
        headers["Content-Type"] = content_type
    prepared = api.param_serialize(
        method=method,
        resource_path=path,
        query_params=list(query),
        header_params=headers,
        body=body,
        auth_settings=["BearerToken"],
    )
    response = api.call_api(*prepared, _request_timeout=_request_timeout)
    if not 200 <= response.status <= 299:
        response.read()  # type: ignore[no-untyped-call]
        raise ApiException.from_response(http_resp=response, body=None, data=None)
    raw: urllib3.BaseHTTPResponse = response.response
    return raw


def selectors(label_selector: str | None, field_selector: str | None) -> list[tuple[str, str]]:
    pairs = (("labelSelector", label_selector), ("fieldSelector", field_selector))
    return [(k, v) for k, v in pairs if v is not None]


def _segment(value: str) -> str:
    return quote(value, safe="")  # a name never escapes its path segment


class RawApi:
    """Calls on the client's ``ApiClient``: the answer parsed, or the raw response where the
    caller passes ``_preload_content=False``."""

    def __init__(self, api: ApiClient) -> None:
        self.api = api

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = JSON,
        label_selector: str | None = None,
        field_selector: str | None = None,
        _request_timeout: Any = None,
        _preload_content: bool = True,
        **_: Any,
    ) -> Any:
        raw = request(
            self.api,
            method,
            path,
            body,
            content_type=content_type,
            query=selectors(label_selector, field_selector),
            _request_timeout=_request_timeout,
        )
        return json.loads(raw.data) if _preload_content else raw


class BatchV1(RawApi):
    """batch/v1 Jobs."""

    @staticmethod
    def _path(namespace: str, name: str | None = None) -> str:
        path = f"/apis/batch/v1/namespaces/{_segment(namespace)}/jobs"
        return f"{path}/{_segment(name)}" if name is not None else path

    def create_namespaced_job(self, namespace: str, body: Any, **kw: Any) -> Any:
        return self._call("POST", self._path(namespace), body, **kw)

    def read_namespaced_job(self, name: str, namespace: str, **kw: Any) -> Any:
        return self._call("GET", self._path(namespace, name), **kw)

    def patch_namespaced_job(self, name: str, namespace: str, body: Any, **kw: Any) -> Any:
        path = self._path(namespace, name)
        return self._call("PATCH", path, body, content_type=STRATEGIC_MERGE, **kw)

    def delete_namespaced_job(self, name: str, namespace: str, body: Any = None, **kw: Any) -> Any:
        return self._call("DELETE", self._path(namespace, name), body, **kw)


class CustomObjects(RawApi):
    """Namespaced custom objects (our own kinds, Volcano PodGroups, Kueue Workloads)."""

    @staticmethod
    def _path(group: str, version: str, namespace: str, plural: str, *rest: str) -> str:
        path = f"/apis/{group}/{version}/namespaces/{_segment(namespace)}/{plural}"
        return "/".join([path, *(_segment(r) if i == 0 else r for i, r in enumerate(rest))])

    def create_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, body: Any, **kw: Any
    ) -> Any:
        return self._call("POST", self._path(group, version, namespace, plural), body, **kw)

    def get_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str, **kw: Any
    ) -> Any:
        return self._call("GET", self._path(group, version, namespace, plural, name), **kw)

    def list_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, **kw: Any
    ) -> Any:
        return self._call("GET", self._path(group, version, namespace, plural), **kw)

    def patch_namespaced_custom_object(
        self,
        group: str,
        version: str,
        namespace: str,
        plural: str,
        name: str,
        body: Any,
        **kw: Any,
    ) -> Any:
        path = self._path(group, version, namespace, plural, name)
        return self._call("PATCH", path, body, content_type=MERGE, **kw)

    def patch_namespaced_custom_object_status(
        self,
        group: str,
        version: str,
        namespace: str,
        plural: str,
        name: str,
        body: Any,
        **kw: Any,
    ) -> Any:
        path = self._path(group, version, namespace, plural, name, "status")
        return self._call("PATCH", path, body, content_type=MERGE, **kw)

    def delete_namespaced_custom_object(
        self,
        group: str,
        version: str,
        namespace: str,
        plural: str,
        name: str,
        body: Any = None,
        **kw: Any,
    ) -> Any:
        path = self._path(group, version, namespace, plural, name)
        return self._call("DELETE", path, body, **kw)


__all__ = [
    "JSON",
    "MERGE",
    "STRATEGIC_MERGE",
    "BatchV1",
    "CustomObjects",
    "RawApi",
    "request",
    "selectors",
]
