"""Pods on a real node: a real kubelet + containerd + runc run them, the CNI bridge gives them
addresses, CoreDNS resolves Service names, kube-proxy routes ClusterIPs."""

from __future__ import annotations

import ipaddress
import uuid
from pathlib import Path

import pytest

import torchyard_devcluster as devcluster
from torchyard_devcluster import ociimage, realconfig
from torchyard_devcluster.testing import Kube

from .podkit import http_client, http_server, pod, wait_phase, wait_ready

pytestmark = pytest.mark.real


def test_pod_runs_on_the_real_node_and_logs_reach_kubectl(
    real_cluster: devcluster.DevCluster, kube: Kube, busybox_image: str, namespace: str
) -> None:
    line = f"hello from a real pod {uuid.uuid4().hex}"
    kube.core.create_namespaced_pod(namespace, pod("hello", busybox_image, f"echo '{line}'"))
    done = wait_phase(kube, "hello", namespace, {"Succeeded", "Failed"})
    assert done.status.phase == "Succeeded"
    assert done.spec.node_name.startswith(realconfig.NODE_PREFIX)
    assert ipaddress.ip_address(done.status.pod_ip) in ipaddress.ip_network(realconfig.CLUSTER_CIDR)
    logs = real_cluster.kubectl("logs", "-n", namespace, "hello").stdout
    assert logs.strip() == line


def test_gpu_pod_schedules_on_the_real_node(kube: Kube, busybox_image: str, namespace: str) -> None:
    manifest = pod("gpu", busybox_image, "echo running on CPU", gpus=1)
    kube.core.create_namespaced_pod(namespace, manifest)
    done = wait_phase(kube, "gpu", namespace, {"Succeeded", "Failed"})
    assert done.status.phase == "Succeeded"
    assert done.spec.node_name.startswith(realconfig.NODE_PREFIX)


def test_two_pods_talk_through_a_headless_service_dns_name(
    real_cluster: devcluster.DevCluster, kube: Kube, busybox_image: str, namespace: str
) -> None:
    labels = {"app": "talk"}
    kube.core.create_namespaced_service(
        namespace,
        {
            "metadata": {"name": "talk"},
            "spec": {"clusterIP": "None", "selector": labels, "ports": [{"port": 8080}]},
        },
    )
    server = http_server(
        "server",
        busybox_image,
        labels=labels,
        reply="pong-headless",
        hostname="server",
        subdomain="talk",
    )
    kube.core.create_namespaced_pod(namespace, server)
    wait_ready(kube, "server", namespace)
    host = f"server.talk.{namespace}.svc.{realconfig.CLUSTER_DOMAIN}"
    kube.core.create_namespaced_pod(namespace, http_client("client", busybox_image, host, 8080))
    done = wait_phase(kube, "client", namespace, {"Succeeded", "Failed"})
    logs = real_cluster.kubectl("logs", "-n", namespace, "client").stdout
    assert done.status.phase == "Succeeded", logs
    assert "pong-headless" in logs


def test_a_cluster_ip_service_reaches_a_pod(
    real_cluster: devcluster.DevCluster, kube: Kube, busybox_image: str, namespace: str
) -> None:
    labels = {"app": "web"}
    svc = kube.core.create_namespaced_service(
        namespace,
        {
            "metadata": {"name": "web"},
            "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    )
    cluster_ip = svc.spec.cluster_ip
    assert cluster_ip not in (None, "", "None")
    server = http_server("web-0", busybox_image, labels=labels, reply="pong-clusterip")
    kube.core.create_namespaced_pod(namespace, server)
    wait_ready(kube, "web-0", namespace)
    # By address (kube-proxy's DNAT) and by the Service's name (CoreDNS -> the ClusterIP).
    for name, host in (
        ("by-ip", cluster_ip),
        ("by-name", f"web.{namespace}.svc.{realconfig.CLUSTER_DOMAIN}"),
    ):
        kube.core.create_namespaced_pod(namespace, http_client(name, busybox_image, host, 80))
        done = wait_phase(kube, name, namespace, {"Succeeded", "Failed"})
        logs = real_cluster.kubectl("logs", "-n", namespace, name).stdout
        assert done.status.phase == "Succeeded", logs
        assert "pong-clusterip" in logs


def test_a_pod_pulls_its_image_from_the_local_registry(
    real_cluster: devcluster.DevCluster, kube: Kube, namespace: str
) -> None:
    """The flow users follow with their own registry: push, then the node pulls (containerd
    reaches 127.0.0.1:5000 over plain HTTP, realconfig.LOCAL_REGISTRIES)."""
    import httpx

    registry = realconfig.LOCAL_REGISTRIES[0]
    try:
        httpx.get(f"http://{registry}/v2/", timeout=3.0, trust_env=False).raise_for_status()
    except httpx.HTTPError:
        pytest.skip(f"no OCI registry on {registry} (make images starts one)")
    tag = uuid.uuid4().hex[:12]  # never pulled before: the node must fetch it
    busybox = ociimage.ImageFile("bin/busybox", Path("/bin/busybox").read_bytes())
    ociimage.push(registry, "torchyard-test/busybox", tag, [busybox], entrypoint=["/bin/busybox"])
    image = f"{registry}/torchyard-test/busybox:{tag}"
    manifest = pod("pulled", image, f"echo pulled {tag}")
    manifest["spec"]["containers"][0]["imagePullPolicy"] = "Always"
    kube.core.create_namespaced_pod(namespace, manifest)
    done = wait_phase(kube, "pulled", namespace, {"Succeeded", "Failed"})
    assert done.status.phase == "Succeeded"
    assert real_cluster.kubectl("logs", "-n", namespace, "pulled").stdout.strip() == f"pulled {tag}"
