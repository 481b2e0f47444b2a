"""The dozen core/v1 calls the operator makes, on the kubernetes client's own ``ApiClient``
(configuration, auth, TLS, connection pool, ``ApiException``) but without its generated
``CoreV1Api``.

Why: ``kubernetes.client.api.core_v1_api`` is 4.4 MB of generated source (about 400 endpoints,
each with a long docstring); importing it costs the operator ~20 MiB of RSS even from
bytecode — the largest single item in an operator whose whole footprint is ~100 MiB, and what
put it above Kubeflow Trainer's memory in bench/kubeflow_compare.py. The methods keep
``CoreV1Api``'s names and argument order, so call sites read the same; every answer is raw
(the caller reads ``.data`` as JSON, which :class:`torchyard.controller.kube.Kube` does),
as the operator already asked for everywhere (``RAW``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import urllib3

from torchyard.controller.rawapi import STRATEGIC_MERGE, RawApi


class CoreV1(RawApi):
    """core/v1, raw answers; unknown keyword arguments of the generated API are accepted and
    ignored except ``label_selector``, ``field_selector`` and ``_request_timeout``."""

    def _request(
        self, method: str, path: str, body: Any = None, **kw: Any
    ) -> urllib3.BaseHTTPResponse:
        kw["_preload_content"] = False  # always raw: the callers read .data themselves
        raw: urllib3.BaseHTTPResponse = self._call(method, path, body, **kw)
        return raw

    @staticmethod
    def _path(namespace: str, plural: str, name: str | None = None) -> str:
        path = f"/api/v1/namespaces/{quote(namespace, safe='')}/{plural}"
        return f"{path}/{quote(name, safe='')}" if name is not None else path

    # ConfigMaps
    def create_namespaced_config_map(self, namespace: str, body: Any, **kw: Any) -> Any:
        return self._request("POST", self._path(namespace, "configmaps"), body, **kw)

    def read_namespaced_config_map(self, name: str, namespace: str, **kw: Any) -> Any:
        return self._request("GET", self._path(namespace, "configmaps", name), **kw)

    def patch_namespaced_config_map(self, name: str, namespace: str, body: Any, **kw: Any) -> Any:
        path = self._path(namespace, "configmaps", name)
        return self._request("PATCH", path, body, content_type=STRATEGIC_MERGE, **kw)

    # Services
    def create_namespaced_service(self, namespace: str, body: Any, **kw: Any) -> Any:
        return self._request("POST", self._path(namespace, "services"), body, **kw)

    def read_namespaced_service(self, name: str, namespace: str, **kw: Any) -> Any:
        return self._request("GET", self._path(namespace, "services", name), **kw)

    # PersistentVolumeClaims
    def read_namespaced_persistent_volume_claim(self, name: str, namespace: str, **kw: Any) -> Any:
        path = self._path(namespace, "persistentvolumeclaims", name)
        return self._request("GET", path, **kw)

    # Pods
    def list_namespaced_pod(self, namespace: str, **kw: Any) -> Any:
        return self._request("GET", self._path(namespace, "pods"), **kw)

    def read_namespaced_pod(self, name: str, namespace: str, **kw: Any) -> Any:
        return self._request("GET", self._path(namespace, "pods", name), **kw)

    def patch_namespaced_pod(self, name: str, namespace: str, body: Any, **kw: Any) -> Any:
        path = self._path(namespace, "pods", name)
        return self._request("PATCH", path, body, content_type=STRATEGIC_MERGE, **kw)

    def delete_namespaced_pod(self, name: str, namespace: str, **kw: Any) -> Any:
        return self._request("DELETE", self._path(namespace, "pods", name), **kw)

    # Namespaces, Events
    def list_namespace(self, **kw: Any) -> Any:
        return self._request("GET", "/api/v1/namespaces", **kw)

    def create_namespaced_event(self, namespace: str, body: Any, **kw: Any) -> Any:
        return self._request("POST", self._path(namespace, "events"), body, **kw)


__all__ = ["CoreV1"]
