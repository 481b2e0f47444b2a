"""Command lines and config files of the control plane's other components (etcd,
kube-controller-manager, kube-scheduler, kwok): pure builders, so ``cluster._start`` only
launches and waits. The API server's own are in :mod:`torchyard_devcluster.apiserver`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torchyard_devcluster import certs
from torchyard_devcluster.apiserver import SERVICE_CIDR

# Client rates sized for 100+ fake nodes and ~1000 pods on a small machine.
CLIENT_QPS = 500
CLIENT_BURST = 1000


def etcd_argv(binary: str, data_dir: Path, client_port: int, peer_port: int) -> list[str]:
    client_url = f"http://127.0.0.1:{client_port}"
    peer_url = f"http://127.0.0.1:{peer_port}"
    return [
        binary,
        "--name=default",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client_url}",
        f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=default={peer_url}",
        "--initial-cluster-state=new",
        "--unsafe-no-fsync=true",  # throw-away data: no fsync, much faster on shared disks
        "--quota-backend-bytes=8589934592",
        "--auto-compaction-mode=periodic",
        "--auto-compaction-retention=5m",
        "--log-level=warn",
    ]


def kwok_log_level(verbosity: int) -> str:
    """KWOK's ``--v``: a slog level, not klog's verbosity. Its INFO — its default, and what
    ``--v=0`` means to it — writes a line for every pod patch and node-lease renewal (90 MB
    in one session of 2,000-pod bursts); at the cluster's verbosity 0 it is as quiet as the
    klog components (warnings and errors), more verbose only when asked."""
    if verbosity <= 0:
        return "WARN"
    return "INFO" if verbosity < 4 else "DEBUG"


def controller_manager_argv(
    binary: str, kubeconfig: Path, port: int, pki: certs.ClusterCerts, verbosity: int
) -> list[str]:
    return [
        binary,
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        "--leader-elect=false",
        "--controllers=*",
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={pki.sa_private}",
        f"--root-ca-file={pki.ca.cert}",
        f"--cluster-signing-cert-file={pki.ca.cert}",
        f"--cluster-signing-key-file={pki.ca.key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        f"--kube-api-qps={CLIENT_QPS}",
        f"--kube-api-burst={CLIENT_BURST}",
        "--concurrent-job-syncs=10",
        "--concurrent-gc-syncs=20",
        "--concurrent-namespace-syncs=10",
        f"--v={verbosity}",
    ]


def scheduler_config(kubeconfig: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "clientConnection": {
            "kubeconfig": str(kubeconfig),
            "qps": CLIENT_QPS,
            "burst": CLIENT_BURST,
        },
        "leaderElection": {"leaderElect": False},
    }


def scheduler_argv(
    binary: str, config: Path, kubeconfig: Path, port: int, verbosity: int
) -> list[str]:
    return [
        binary,
        f"--config={config}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--v={verbosity}",
    ]
