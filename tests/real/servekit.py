"""Serving on the real node: the ``torchyard`` CLI (promote, deploy) as a user runs it, a v2
client that counts what it sent, the saved versions read from the claim's folder on this host,
and the Prometheus Operator's PodMonitor CRD for ``deploy --pod-monitor``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import httpx

import torchyard_devcluster as devcluster
from torchyard.api.contract import split_uri
from torchyard_devcluster import realnode
from torchyard_devcluster.testing import Kube, poll

GROUP, VERSION = "torchyard.io", "v1alpha1"
MONITORING = ("monitoring.coreos.com", "v1", "podmonitors")


def torchyard(cluster: devcluster.DevCluster, *args: str) -> subprocess.CompletedProcess[str]:
    """``torchyard ARGS`` with the real cluster's kubeconfig in ``KUBECONFIG``."""
    env = dict(os.environ, KUBECONFIG=str(cluster.kubeconfig))
    exe = str(Path(sys.executable).parent / "torchyard")
    # generous: the CLI's imports alone took 35 s at load average 30 on this shared machine
    return subprocess.run([exe, *args], env=env, text=True, capture_output=True, timeout=600)


def claim_dir(cluster: devcluster.DevCluster, ns: str) -> Path:
    """The host folder of the namespace's ``models`` claim (jobkit.jobs_namespace's local PV)."""
    return realnode.real_dir(cluster.state_dir) / "volumes" / ns


def host_path(cluster: devcluster.DevCluster, ns: str, uri: str) -> Path:
    """``pvc://models/<path>`` -> where that path is on this host."""
    scheme, rest = split_uri(uri)
    assert scheme == "pvc", uri
    return claim_dir(cluster, ns).joinpath(*PurePosixPath(rest.lstrip("/")).parts[1:])


def install_pod_monitor_crd(cluster: devcluster.DevCluster) -> None:
    """The Prometheus Operator's real PodMonitor CRD (from its Go module, as the chart tests
    install it), so ``torchyard deploy --pod-monitor`` creates a PodMonitor checked against it."""
    from tests.chart.conftest import prometheus_operator_crds

    (path,) = [p for p in prometheus_operator_crds() if "podmonitors" in p.name]
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/podmonitors.monitoring.coreos.com",
    )


def wait_deployment_ready(kube: Kube, ns: str, name: str, timeout: float = 900) -> Any:
    """The Deployment once its one replica is Ready; on timeout the pods' state and logs."""

    def ready() -> Any:
        dep = kube.apps.read_namespaced_deployment(name, ns)
        return dep if (dep.status.ready_replicas or 0) >= 1 else None

    try:
        return poll(ready, timeout=timeout, interval=2, what=f"deployment/{name} Ready")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{describe_pods(kube, ns, name)}") from None


def pods_of(kube: Kube, ns: str, name: str) -> list[Any]:
    selector = f"app.kubernetes.io/instance={name}"
    return list(kube.core.list_namespaced_pod(ns, label_selector=selector).items)


def describe_pods(kube: Kube, ns: str, name: str) -> str:
    out = []
    for p in pods_of(kube, ns, name):
        out.append(f"pod {p.metadata.name}: {p.status.phase} {p.status.container_statuses}")
        try:
            out.append(kube.core.read_namespaced_pod_log(p.metadata.name, ns, tail_lines=40))
        except Exception as exc:  # a pod that never started has no log
            out.append(f"(no log: {exc})")
    return "\n".join(out)


@dataclass
class V2Client:
    """Open Inference Protocol v2 over HTTP to one server; counts what it sent per
    (handler label of the server's metrics, status code)."""

    base: str
    model: str
    sent: Counter[tuple[str, int]] = field(default_factory=Counter)
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=60, trust_env=False))

    def get(self, path: str, handler: str) -> httpx.Response:
        r = self.http.get(f"{self.base}{path}")
        self.sent[handler, r.status_code] += 1
        return r

    def infer(self, body: dict[str, Any]) -> httpx.Response:
        r = self.http.post(f"{self.base}/v2/models/{self.model}/infer", json=body)
        self.sent["infer", r.status_code] += 1
        return r


def infer_request(x: Any, request_id: str) -> dict[str, Any]:
    """A v2 infer request of the float32 array ``x`` ([N, 64] digits), flat row-major data."""
    return {
        "id": request_id,
        "inputs": [
            {
                "name": "input",
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": x.reshape(-1).tolist(),
            }
        ],
    }
