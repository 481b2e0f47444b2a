"""Fake GPU nodes (managed by KWOK) and the pod-control annotations tests use.

Nodes are plain ``v1.Node`` objects created through the API with ``nvidia.com/gpu`` in
capacity/allocatable and the labels NVIDIA's GPU feature discovery would set; KWOK's
``node-initialize`` stage makes them Ready and keeps their lease fresh.

Pod control (see :mod:`torchyard_devcluster.stages` for the stages behind it):

=====================================  =====================================================
annotation                             effect
=====================================  =====================================================
``kwok.torchyard.io/hold: "true"``     stays Running until the annotation is removed
``kwok.torchyard.io/exit-code: "N"``   containers terminate with exit code N: N=0 Succeeded,
                                       else Failed (``state.terminated.exitCode`` = N)
``kwok.torchyard.io/reason: "R"``      ``state.terminated.reason`` (default Completed/Error)
``kwok.torchyard.io/delay: "2s"``      time spent Running before completing/exiting
=====================================  =====================================================

Without annotations, Job-owned pods go Pending -> Running -> Succeeded (KWOK's default);
other pods stay Running.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from torchyard_devcluster.stages import (
    DELAY_ANNOTATION,
    EXIT_CODE_ANNOTATION,
    FAKE_NODE_ANNOTATION,
    FAKE_NODE_VALUE,
    HOLD_ANNOTATION,
    REASON_ANNOTATION,
)

NODE_PREFIX = "kwok-gpu-"
#: Label on every node this module creates (select/delete them with it).
MANAGED_LABEL = "torchyard.io/dev-node"
GPU_RESOURCE = "nvidia.com/gpu"
DEFAULT_GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"

__all__ = [
    "DELAY_ANNOTATION",
    "EXIT_CODE_ANNOTATION",
    "GPU_RESOURCE",
    "HOLD_ANNOTATION",
    "MANAGED_LABEL",
    "REASON_ANNOTATION",
    "create_nodes",
    "delete_nodes",
    "node_manifest",
    "pod_control_annotations",
    "set_pod_exit",
    "set_pod_hold",
    "wait_nodes_ready",
]


def node_manifest(
    name: str,
    *,
    gpus: int = 8,
    cpu: str = "96",
    memory: str = "1Ti",
    pods: int = 110,
    gpu_product: str = DEFAULT_GPU_PRODUCT,
    gpu_memory_mib: int = 81559,
    labels: dict[str, str] | None = None,
    taints: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """A fake node's manifest: capacity = allocatable, GFD-style ``nvidia.com/gpu.*`` labels."""
    resources = {
        "cpu": cpu,
        "memory": memory,
        "pods": str(pods),
        "ephemeral-storage": "1Ti",
        GPU_RESOURCE: str(gpus),
    }
    node_labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "node.kubernetes.io/instance-type": f"kwok-gpu-{gpus}x",
        "type": "kwok",
        MANAGED_LABEL: "true",
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": gpu_product,
        "nvidia.com/gpu.count": str(gpus),
        "nvidia.com/gpu.memory": str(gpu_memory_mib),
    }
    node_labels.update(labels or {})
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": node_labels,
            "annotations": {
                FAKE_NODE_ANNOTATION: FAKE_NODE_VALUE,
                "node.alpha.kubernetes.io/ttl": "0",
            },
        },
        "spec": {"taints": taints} if taints else {},
        "status": {
            "capacity": dict(resources),
            "allocatable": dict(resources),
        },
    }


def _status(e: Exception) -> int | None:
    status = getattr(e, "status", None)
    return status if isinstance(status, int) else None


def create_nodes(
    api_client: Any,
    *,
    n: int = 4,
    gpus_per_node: int = 8,
    prefix: str = NODE_PREFIX,
    start: int = 0,
    cpu: str = "96",
    memory: str = "1Ti",
    gpu_product: str = DEFAULT_GPU_PRODUCT,
    labels: dict[str, str] | None = None,
    wait_ready: bool = True,
    timeout: float = 300.0,
    workers: int = 16,
) -> list[str]:
    """Create ``n`` fake GPU nodes named ``<prefix><i>`` (i = start .. start+n-1).

    Idempotent: nodes that already exist are kept. ``api_client`` is a
    ``kubernetes.client.ApiClient``. Works for hundreds of nodes (parallel creates). Returns
    the node names; with ``wait_ready`` returns once KWOK reports all of them Ready.
    """
    from kubernetes import client

    core: Any = client.CoreV1Api(api_client)
    names = [f"{prefix}{i}" for i in range(start, start + n)]

    def create(name: str) -> None:
        body = node_manifest(
            name, gpus=gpus_per_node, cpu=cpu, memory=memory, gpu_product=gpu_product, labels=labels
        )
        try:
            core.create_node(body)
        except client.ApiException as e:
            if _status(e) != 409:
                raise

    if names:
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(names)))) as pool:
            list(pool.map(create, names))
        if wait_ready:
            wait_nodes_ready(api_client, names, timeout=timeout)
    return names


def _ready(node: Any) -> bool:
    for cond in (node.status.conditions if node.status else None) or []:
        if cond.type == "Ready":
            return bool(cond.status == "True")
    return False


def wait_nodes_ready(api_client: Any, names: Iterable[str], *, timeout: float = 300.0) -> None:
    """Poll until every named node is Ready (KWOK's node-initialize stage ran)."""
    from kubernetes import client

    core: Any = client.CoreV1Api(api_client)
    pending = set(names)
    deadline = time.monotonic() + timeout
    while pending:
        listed = core.list_node(label_selector=MANAGED_LABEL).items
        pending -= {n.metadata.name for n in listed if _ready(n)}
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{len(pending)} nodes not Ready after {timeout:.0f}s: {sorted(pending)[:5]}"
            )
        time.sleep(0.5)


def delete_nodes(api_client: Any, *, label_selector: str = MANAGED_LABEL) -> int:
    """Delete the fake nodes (by default every node this module created); returns the count."""
    from kubernetes import client

    core: Any = client.CoreV1Api(api_client)
    items = core.list_node(label_selector=label_selector).items
    for node in items:
        try:
            core.delete_node(node.metadata.name)
        except client.ApiException as e:
            if _status(e) != 404:
                raise
    return len(items)


def pod_control_annotations(
    *,
    exit_code: int | None = None,
    hold: bool = False,
    delay: str | None = None,
    reason: str | None = None,
) -> dict[str, str]:
    """Annotations for a pod (template) that steer KWOK: put them in ``metadata.annotations``."""
    out: dict[str, str] = {}
    if hold:
        out[HOLD_ANNOTATION] = "true"
    if exit_code is not None:
        out[EXIT_CODE_ANNOTATION] = str(int(exit_code))
    if delay is not None:
        out[DELAY_ANNOTATION] = delay
    if reason is not None:
        out[REASON_ANNOTATION] = reason
    return out


def set_pod_exit(
    api_client: Any,
    name: str,
    namespace: str,
    exit_code: int,
    *,
    reason: str | None = None,
    release_hold: bool = True,
) -> None:
    """Make a live pod's containers exit with ``exit_code`` (and release a hold)."""
    from kubernetes import client

    ann: dict[str, str | None] = {EXIT_CODE_ANNOTATION: str(int(exit_code))}
    if reason is not None:
        ann[REASON_ANNOTATION] = reason
    if release_hold:
        ann[HOLD_ANNOTATION] = None
    client.CoreV1Api(api_client).patch_namespaced_pod(
        name, namespace, {"metadata": {"annotations": ann}}
    )


def set_pod_hold(api_client: Any, name: str, namespace: str, hold: bool = True) -> None:
    """Hold a live pod Running (``hold=True``) or release it (``hold=False``)."""
    from kubernetes import client

    value = "true" if hold else None
    client.CoreV1Api(api_client).patch_namespaced_pod(
        name, namespace, {"metadata": {"annotations": {HOLD_ANNOTATION: value}}}
    )


def finish_pod_as_kubelet(
    api_client: Any, name: str, namespace: str, message: str | None = None, exit_code: int = 0
) -> None:
    """End a held pod the way a kubelet reports it, termination message included.

    KWOK cannot write a container's termination message, and the operator reads worker results
    from it; for pods whose result matters, tests hold the pod and write the terminated state
    (exit code, message) through the pod status API — what a kubelet would send.
    """
    from datetime import UTC, datetime

    from kubernetes import client

    core = client.CoreV1Api(api_client)
    pod = core.read_namespaced_pod(name, namespace)
    assert pod.spec is not None
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    terminated: dict[str, Any] = {
        "exitCode": exit_code,
        "reason": "Completed" if exit_code == 0 else "Error",
        "startedAt": now,
        "finishedAt": now,
    }
    if message is not None:
        terminated["message"] = message
    core.patch_namespaced_pod_status(
        name,
        namespace,
        {
            "status": {
                "phase": "Succeeded" if exit_code == 0 else "Failed",
                "conditions": [
                    {"type": "Ready", "status": "False", "reason": "PodCompleted"},
                    {"type": "ContainersReady", "status": "False", "reason": "PodCompleted"},
                ],
                "containerStatuses": [
                    {
                        "name": c.name,
                        "image": c.image,
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "started": False,
                        "state": {"running": None, "terminated": terminated},
                    }
                    for c in pod.spec.containers
                ],
            }
        },
    )
