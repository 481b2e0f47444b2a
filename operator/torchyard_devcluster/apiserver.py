"""The kube-apiserver's command line, and how pods on real nodes reach it.

A KWOK-only cluster keeps the API server on 127.0.0.1 with no endpoints behind the
``kubernetes`` Service (``--endpoint-reconciler-type=none``: an endpoint may not be a loopback
address, and no fake pod ever calls it). A cluster started for real nodes (``pod_network``)
listens on every address and advertises :data:`POD_GATEWAY`, the first real node's bridge
address, with the ``lease`` endpoint reconciler: the ``kubernetes`` Service then has that
address as its endpoint, kube-proxy sends ``10.96.0.1:443`` there, and a pod's in-cluster
config (ServiceAccount token, ``KUBERNETES_SERVICE_HOST``) reaches the API server exactly as on
a real cluster. The serving certificate covers the address (``certs.generate(extra_ips=…)``).
"""

from __future__ import annotations

from pathlib import Path

from torchyard_devcluster import certs, realnode

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
#: Node ``torchyard-real-0``'s bridge address (``realconfig.RealNode(0).gateway``): local to this
#: machine, routed to from every pod of every real node.
POD_GATEWAY = "10.244.0.1"

# Sized for 100+ fake nodes and ~1000 pods on a small machine.
MAX_INFLIGHT = 3000
MAX_MUTATING_INFLIGHT = 1000


def address_flags(*, pod_network: bool) -> list[str]:
    """Where the API server listens, what it advertises and how the ``kubernetes`` Service
    gets its endpoints."""
    if not pod_network:
        return [
            "--advertise-address=127.0.0.1",
            "--bind-address=127.0.0.1",
            "--endpoint-reconciler-type=none",
        ]
    return [
        f"--advertise-address={POD_GATEWAY}",
        # One bind address only: 0.0.0.0 serves both the host's clients on 127.0.0.1 and the
        # pods on the bridge address (clients still need a CA-signed certificate or a token).
        "--bind-address=0.0.0.0",
        "--endpoint-reconciler-type=lease",
    ]


def serving_ips(*, pod_network: bool) -> tuple[str, ...]:
    """IP addresses the serving certificate names beyond 127.0.0.1 and the Service IP."""
    return (POD_GATEWAY,) if pod_network else ()


def argv(
    binary: str,
    *,
    state_dir: Path,
    pki: certs.ClusterCerts,
    port: int,
    etcd_url: str,
    pod_network: bool,
    verbosity: int,
) -> list[str]:
    """The kube-apiserver's command line (flags as controller-runtime's envtest, plus RBAC,
    service-account tokens, default admission, and logs/exec on real nodes)."""
    return [
        binary,
        *address_flags(pod_network=pod_network),
        f"--secure-port={port}",
        f"--cert-dir={state_dir / 'pki'}",
        f"--tls-cert-file={pki.serving.cert}",
        f"--tls-private-key-file={pki.serving.key}",
        f"--client-ca-file={pki.ca.cert}",
        f"--etcd-servers={etcd_url}",
        "--authorization-mode=Node,RBAC",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki.sa_public}",
        f"--service-account-signing-key-file={pki.sa_private}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--allow-privileged=true",
        f"--max-requests-inflight={MAX_INFLIGHT}",
        f"--max-mutating-requests-inflight={MAX_MUTATING_INFLIGHT}",
        "--delete-collection-workers=4",
        "--event-ttl=30m",
        "--profiling=false",
        *realnode.apiserver_flags(state_dir / "pki"),  # logs/exec on real nodes
        f"--v={verbosity}",
    ]
