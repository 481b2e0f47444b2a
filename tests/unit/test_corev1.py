"""The operator's own core/v1, batch/v1 and custom-object calls (controller/corev1.py,
controller/rawapi.py): paths, and that the operator process never loads the kubernetes
client's generated CoreV1Api (~20 MiB of its RSS), BatchV1Api or CustomObjectsApi (their
pydantic validation of every body was 17% of its CPU in a 2,000-job burst).

The calls themselves run against a real API server in every cluster test (ConfigMaps,
Services, pods, Events, namespaces, PVCs are all created or read through them)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from torchyard.controller.corev1 import CoreV1
from torchyard.controller.rawapi import BatchV1, CustomObjects


def test_paths_quote_names_and_namespaces() -> None:
    assert CoreV1._path("team-a", "pods") == "/api/v1/namespaces/team-a/pods"
    assert CoreV1._path("team-a", "configmaps", "x") == "/api/v1/namespaces/team-a/configmaps/x"
    # a name never escapes its path segment
    assert CoreV1._path("ns", "pods", "a/../b") == "/api/v1/namespaces/ns/pods/a%2F..%2Fb"


def test_batch_and_custom_object_paths() -> None:
    assert BatchV1._path("ns") == "/apis/batch/v1/namespaces/ns/jobs"
    assert BatchV1._path("ns", "a/b") == "/apis/batch/v1/namespaces/ns/jobs/a%2Fb"
    where = ("torchyard.io", "v1alpha1", "team-a", "trainingjobs")
    assert (
        CustomObjects._path(*where) == "/apis/torchyard.io/v1alpha1/namespaces/team-a/trainingjobs"
    )
    assert (
        CustomObjects._path(*where, "x/y", "status")
        == "/apis/torchyard.io/v1alpha1/namespaces/team-a/trainingjobs/x%2Fy/status"
    )


def _recording_client(sent: list[tuple[str, str, str | None, object]]) -> object:
    from kubernetes.client import ApiClient, Configuration

    class Recorder(ApiClient):
        def call_api(self, method: str, url: str, header_params: dict[str, str] | None = None,
                     body: object = None, *a: object, **kw: object) -> object:  # fmt: skip
            sent.append((method, url, (header_params or {}).get("Content-Type"), body))
            raise RuntimeError("recorded")

    return Recorder(Configuration(host="https://203.0.113.1:6443"))


def test_patches_say_which_kind_of_patch_and_bodies_go_as_given() -> None:
    sent: list[tuple[str, str, str | None, object]] = []
    api = _recording_client(sent)
    custom, batch = CustomObjects(api), BatchV1(api)  # type: ignore[arg-type]
    patch = {"metadata": {"resourceVersion": "7"}, "status": {"phase": "Running"}}
    for call in (
        lambda: custom.patch_namespaced_custom_object_status("g", "v1", "ns", "tj", "a", patch),
        lambda: batch.patch_namespaced_job("a", "ns", {"spec": {"suspend": True}}),
    ):
        with pytest.raises(RuntimeError, match="recorded"):
            call()
    assert sent == [
        (
            "PATCH",
            "https://203.0.113.1:6443/apis/g/v1/namespaces/ns/tj/a/status",
            "application/merge-patch+json",  # custom objects have no strategic merge
            patch,
        ),
        (
            "PATCH",
            "https://203.0.113.1:6443/apis/batch/v1/namespaces/ns/jobs/a",
            "application/strategic-merge-patch+json",
            {"spec": {"suspend": True}},
        ),
    ]


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
        "print([m for m in ('core_v1_api', 'batch_v1_api', 'custom_objects_api')\n"
        "       if f'kubernetes.client.api.{m}' in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
