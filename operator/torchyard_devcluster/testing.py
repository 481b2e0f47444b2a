"""Helpers for tests and benchmarks that use the dev cluster (importable, unlike conftest)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from torchyard_devcluster.cluster import DevCluster

T = TypeVar("T")


@dataclass(frozen=True)
class Kube:
    """``kubernetes`` API objects for the dev cluster's admin user."""

    api_client: Any  # kubernetes.client.ApiClient
    core: Any  # CoreV1Api
    apps: Any  # AppsV1Api
    batch: Any  # BatchV1Api
    custom: Any  # CustomObjectsApi
    apiext: Any  # ApiextensionsV1Api
    rbac: Any  # RbacAuthorizationV1Api
    cluster: DevCluster

    @classmethod
    def connect(cls, cluster: DevCluster) -> Kube:
        from kubernetes import client

        api = cluster.api_client()
        return cls(
            api_client=api,
            core=client.CoreV1Api(api),
            apps=client.AppsV1Api(api),
            batch=client.BatchV1Api(api),
            custom=client.CustomObjectsApi(api),
            apiext=client.ApiextensionsV1Api(api),
            rbac=client.RbacAuthorizationV1Api(api),
            cluster=cluster,
        )

    def close(self) -> None:
        self.api_client.close()


def poll(
    fn: Callable[[], T | None], *, timeout: float = 120.0, interval: float = 0.2, what: str = ""
) -> T:
    """Call ``fn`` until it returns something truthy (returned); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout:.0f}s waiting for {what or 'condition'}; last={last!r}"
    )


def crd_files(crd_dir: Path) -> list[Path]:
    """The CRD YAML files of a folder (empty when it does not exist)."""
    if not crd_dir.is_dir():
        return []
    return sorted([*crd_dir.glob("*.yaml"), *crd_dir.glob("*.yml")])
