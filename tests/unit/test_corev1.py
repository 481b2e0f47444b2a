"""The operator's own core/v1 calls (controller/corev1.py): paths, and that the operator
process never loads the kubernetes client's generated CoreV1Api (~20 MiB of its RSS).

The calls themselves run against a real API server in every cluster test (ConfigMaps,
Services, pods, Events, namespaces, PVCs are all created or read through them)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from torchyard.controller.corev1 import CoreV1


def test_paths_quote_names_and_namespaces() -> None:
    assert CoreV1._path("team-a", "pods") == "/api/v1/namespaces/team-a/pods"
    assert CoreV1._path("team-a", "configmaps", "x") == "/api/v1/namespaces/team-a/configmaps/x"
    # a name never escapes its path segment
    assert CoreV1._path("ns", "pods", "a/../b") == "/api/v1/namespaces/ns/pods/a%2F..%2Fb"


def test_selectors_become_query_parameters() -> None:
    from kubernetes.client import ApiClient, Configuration

    cfg = Configuration(host="https://203.0.113.1:6443")
    sent: list[tuple[str, str]] = []

    class Recorder(ApiClient):
        def call_api(self, method: str, url: str, *a: object, **kw: object) -> object:
            sent.append((method, url))
            raise RuntimeError("recorded")

    core = CoreV1(Recorder(cfg))
    with pytest.raises(RuntimeError, match="recorded"):
        core.list_namespaced_pod("ns", label_selector="a=b,c=d", _preload_content=False)
    assert sent == [
        ("GET", "https://203.0.113.1:6443/api/v1/namespaces/ns/pods?labelSelector=a%3Db%2Cc%3Dd")
    ]


def test_the_operator_never_loads_the_generated_core_v1_api() -> None:
    code = (
        "import sys\n"
        "from kubernetes import client\n"
        "import torchyard.cli, torchyard.controller\n"
        "from torchyard.controller.kube import Kube\n"
        "from torchyard.controller.leader import LeaderElector, LeaseSettings\n"
        "from torchyard.metrics import OperatorMetrics\n"
        "m = OperatorMetrics()\n"
        "api = client.ApiClient()\n"
        "Kube(api, m)\n"
        "LeaderElector(api, LeaseSettings(namespace='ns'), m.registry)\n"
        "print('kubernetes.client.api.core_v1_api' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
