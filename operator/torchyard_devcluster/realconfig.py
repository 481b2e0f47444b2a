"""Pure builders of the real node's configuration: containerd, CNI, kubelet, kube-proxy, CoreDNS.

A real node is a kubelet + its own containerd on this machine. Node ``i`` owns the pod subnet
``10.244.i.0/24`` on its own Linux bridge ``tyd<i>``; the bridge's address ``10.244.i.1`` is the
node's InternalIP (the kubelet serves there, the API server calls it there for logs/exec).
Pods of different nodes reach each other through the host's routing between the bridges.
One kube-proxy and one CoreDNS serve every real node of the machine (iptables chains are
global). Nothing here touches the machine; :mod:`torchyard_devcluster.realnode` does.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLUSTER_CIDR = "10.244.0.0/16"
CLUSTER_DOMAIN = "cluster.local"
NODE_PREFIX = "torchyard-real-"
#: Label on every real node (KWOK nodes carry ``torchyard.io/dev-node``).
REAL_NODE_LABEL = "torchyard.io/real-node"
#: Optional taint (``--real-node-taint``): keeps pods that do not tolerate it on KWOK nodes.
REAL_NODE_TAINT = {"key": REAL_NODE_LABEL, "value": "true", "effect": "NoSchedule"}
PAUSE_REPO = "registry.k8s.io/pause"
#: Mounted cgroup v1 controllers the kubelet's cgroup root has to exist in.
CGROUP_V1_CONTROLLERS = (
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "blkio",
    "pids",
    "systemd",
)


@dataclass(frozen=True)
class RealNode:
    """Where one real node lives and how it is addressed."""

    index: int
    base: Path  # <state-dir>/real/<name>
    run: Path  # short folder for sockets (a unix socket path must stay < 108 bytes)
    kubelet_port: int
    healthz_port: int

    @property
    def name(self) -> str:
        return f"{NODE_PREFIX}{self.index}"

    @property
    def pod_cidr(self) -> str:
        return f"10.244.{self.index}.0/24"

    @property
    def gateway(self) -> str:
        return f"10.244.{self.index}.1"

    @property
    def bridge(self) -> str:
        return f"tyd{self.index}"

    @property
    def network(self) -> str:
        """The CNI network name (also the comment on its iptables rules)."""
        return f"torchyard-{self.name}"

    @property
    def socket(self) -> Path:
        return self.run / f"{self.name}.sock"

    @property
    def cgroup_root(self) -> str:
        return f"/torchyard-{self.name}"

    @property
    def containerd_root(self) -> Path:
        """containerd's ``root`` (images, snapshots, metadata); kept between clusters by
        ``realstart.keep_image_store``."""
        return self.base / "containerd" / "root"


def pause_ref(version: str) -> str:
    return f"{PAUSE_REPO}:{version}"


#: Plain-HTTP registries on this machine the nodes pull from (the local OCI registry of
#: ``make images``); a pull of ``127.0.0.1:5000/…`` then needs no TLS.
LOCAL_REGISTRIES = ("127.0.0.1:5000", "localhost:5000")


def _registry_mirrors(cri: str, registries: tuple[str, ...]) -> str:
    return "".join(
        f'  [{cri}.registry.mirrors."{r}"]\n    endpoint = ["http://{r}"]\n' for r in registries
    )


def containerd_config(
    node: RealNode,
    *,
    cni_bin_dir: str,
    pause_image: str,
    registries: tuple[str, ...] = LOCAL_REGISTRIES,
) -> str:
    """containerd 1.6 config (version 2): its own root/state/socket beside Docker's.

    ``restrict_oom_score_adj``: this VM refuses negative ``oom_score_adj`` even to root; the
    kubelet gives the sandbox -998 and runc then fails ("can't get final child's PID from
    pipe"), so containerd clamps scores to its own.
    """
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{node.containerd_root}"
state = "{node.base / "containerd" / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{node.socket}"

[ttrpc]
  address = "{node.socket}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{node.base / "containerd" / "opt"}"

[{cri}]
  sandbox_image = "{pause_image}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{node.base / "runc"}"
  [{cri}.cni]
    bin_dir = "{cni_bin_dir}"
    conf_dir = "{node.base / "net.d"}"
    max_conf_num = 1
{_registry_mirrors(cri, registries)}"""


def cni_conflist(node: RealNode) -> dict[str, Any]:
    """bridge (+ host-local IPAM over the node's /24), portmap, and firewall: the last adds
    FORWARD accepts for each pod address, which a Docker engine's FORWARD policy DROP needs."""
    return {
        "cniVersion": "1.0.0",
        "name": node.network,
        "plugins": [
            {
                "type": "bridge",
                "bridge": node.bridge,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": node.pod_cidr, "gateway": node.gateway}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(node.base / "cni-ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "firewall", "backend": "iptables"},
        ],
    }


def kubelet_config(
    node: RealNode,
    *,
    ca_file: Path,
    cluster_dns: str,
    resolv_conf: Path,
    taint: bool,
) -> dict[str, Any]:
    """KubeletConfiguration for this machine: cgroup v1 (``failCgroupV1: false``, cgroupfs),
    its own cgroup root so several kubelets never garbage-collect each other's pods, client
    certificates only (the API server presents ``pki/apiserver-kubelet-client``)."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": node.cgroup_root,
        "containerRuntimeEndpoint": f"unix://{node.socket}",
        "address": node.gateway,
        "port": node.kubelet_port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": node.healthz_port,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(ca_file)},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "clusterDNS": [cluster_dns],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": str(resolv_conf),
        "podLogsDir": str(node.base / "pod-logs"),
        "failSwapOn": False,
        "serializeImagePulls": False,
        "rotateCertificates": False,
        "registerWithTaints": [REAL_NODE_TAINT] if taint else [],
        # The node's disk is this machine's, shared with Docker's build cache and the registry:
        # its usage moves for reasons that are not the node's, so never evict test pods or set
        # the DiskPressure taint for it. imagefs too: unset, it keeps the 15% default, and at
        # 85% full the kubelet tainted the node and garbage-collected its images, the pause
        # image among them (which it then cannot pull: no registry.k8s.io here).
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
        },
        "imageGCHighThresholdPercent": 99,
        "imageGCLowThresholdPercent": 98,
        "nodeStatusReportFrequency": "10s",
    }


def kube_proxy_config(
    *, kubeconfig: Path, hostname: str, healthz_port: int, metrics_port: int
) -> dict[str, Any]:
    """iptables mode; conntrack sysctls left alone (``maxPerCore: 0``): the VM may refuse them."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": hostname,
        "clusterCIDR": CLUSTER_CIDR,
        "bindAddress": "127.0.0.1",
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        "conntrack": {"maxPerCore": 0, "min": 0},
        "nodePortAddresses": ["primary"],
    }


def corefile(*, kubeconfig: Path, bind_ip: str, health_port: int, ready_port: int) -> str:
    """CoreDNS serving the cluster domain from the dev API server; the rest goes upstream."""
    return f""".:53 {{
    bind {bind_ip}
    errors
    health 127.0.0.1:{health_port}
    ready 127.0.0.1:{ready_port}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    forward . /etc/resolv.conf
    cache 5
}}
"""


def coredns_rbac(user: str) -> list[dict[str, Any]]:
    """What CoreDNS' kubernetes plugin reads (kubeadm's ``system:coredns`` role)."""
    name = "torchyard:coredns"
    rbac = "rbac.authorization.k8s.io"
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list", "watch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {
                "apiGroup": rbac,
                "kind": "ClusterRole",
                "name": name,
            },
            "subjects": [{"apiGroup": rbac, "kind": "User", "name": user}],
        },
    ]


def gpu_capacity_patch(resource: str, gpus: int) -> list[dict[str, Any]]:
    """JSON patch of node status: ``gpus`` of an extended resource (no device plugin: the GPU
    manifests schedule on the real node and run on CPU)."""
    key = resource.replace("~", "~0").replace("/", "~1")
    return [
        {"op": "add", "path": f"/status/capacity/{key}", "value": str(gpus)},
    ]


def kubeconfig(server: str, ca: bytes, cert: bytes, key: bytes, user: str) -> dict[str, Any]:
    """A kubeconfig with embedded CA, client certificate and key."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "torchyard-dev",
                "cluster": {"server": server, "certificate-authority-data": b64(ca)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {"client-certificate-data": b64(cert), "client-key-data": b64(key)},
            }
        ],
        "contexts": [
            {"name": "torchyard-dev", "context": {"cluster": "torchyard-dev", "user": user}}
        ],
        "current-context": "torchyard-dev",
    }
