"""A real Kubernetes control plane for development, tests and benchmarks — without Docker.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler built from the Go module proxy
(``hack/build-control-plane.sh``), plus a KWOK controller that simulates GPU nodes and drives
pods Pending -> Running -> Succeeded/Failed. See docs/dev-cluster.md.

    from torchyard_devcluster import up, down, create_nodes
    c = up(nodes=4)                 # or reuse the running one
    api = c.api_client()            # kubernetes.client.ApiClient (admin)
    create_nodes(api, n=120)        # benchmarks
"""

from torchyard_devcluster.cluster import (
    ClusterState,
    DevCluster,
    DevClusterError,
    current,
    down,
    status,
    up,
)
from torchyard_devcluster.nodes import (
    DELAY_ANNOTATION,
    EXIT_CODE_ANNOTATION,
    GPU_RESOURCE,
    HOLD_ANNOTATION,
    REASON_ANNOTATION,
    create_nodes,
    delete_nodes,
    finish_pod_as_kubelet,
    node_manifest,
    pod_control_annotations,
    set_pod_exit,
    set_pod_hold,
    wait_nodes_ready,
)
from torchyard_devcluster.paths import bin_dir, binary, state_dir, versions

__all__ = [
    "DELAY_ANNOTATION",
    "EXIT_CODE_ANNOTATION",
    "GPU_RESOURCE",
    "HOLD_ANNOTATION",
    "REASON_ANNOTATION",
    "ClusterState",
    "DevCluster",
    "DevClusterError",
    "bin_dir",
    "binary",
    "create_nodes",
    "current",
    "delete_nodes",
    "down",
    "finish_pod_as_kubelet",
    "node_manifest",
    "pod_control_annotations",
    "set_pod_exit",
    "set_pod_hold",
    "state_dir",
    "status",
    "up",
    "versions",
    "wait_nodes_ready",
]
