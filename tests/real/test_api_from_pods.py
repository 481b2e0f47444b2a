"""Pods on the real node reach the API server as on any cluster: ``kubernetes.default.svc``
(CoreDNS) -> the ``kubernetes`` Service's ClusterIP (kube-proxy) -> its endpoint, which the
API server keeps itself (``lease`` reconciler, the bridge address it advertises); TLS verified
with the ServiceAccount's CA, the projected token authenticates the pod's ServiceAccount."""

from __future__ import annotations

import json
from typing import Any

import pytest

import torchyard_devcluster as devcluster
from torchyard_devcluster import apiserver, realconfig
from torchyard_devcluster.testing import Kube

from .podkit import wait_phase

pytestmark = pytest.mark.real

#: Python's standard library only: the in-cluster config every client library builds.
WHOAMI = """
import json, os, ssl, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
tls = ssl.create_default_context(cafile=f"{sa}/ca.crt")
token = open(f"{sa}/token").read()
def call(path, body=None):
    req = urllib.request.Request(
        "https://kubernetes.default.svc" + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, context=tls, timeout=20) as r:
        return json.load(r)
review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
me = call("/apis/authentication.k8s.io/v1/selfsubjectreviews", review)
print(json.dumps({
    "version": call("/version")["gitVersion"],
    "user": me["status"]["userInfo"]["username"],
    "env_host": os.environ["KUBERNETES_SERVICE_HOST"],
}))
"""

RESTRICTED_CONTAINER: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def python_pod(name: str, image: str, script: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["python3", "-c", script],
                    "securityContext": RESTRICTED_CONTAINER,
                }
            ],
        },
    }


def test_kubernetes_service_has_the_advertised_endpoint(
    real_cluster: devcluster.DevCluster, kube: Kube
) -> None:
    assert real_cluster.pod_network
    ep = kube.core.read_namespaced_endpoints("kubernetes", "default")
    addresses = [a.ip for s in ep.subsets or [] for a in s.addresses or []]
    assert addresses == [apiserver.POD_GATEWAY]


def test_pod_reaches_the_api_server_with_its_service_account_token(
    real_cluster: devcluster.DevCluster, kube: Kube, operator_image: str, namespace: str
) -> None:
    kube.core.create_namespaced_pod(namespace, python_pod("whoami", operator_image, WHOAMI))
    done = wait_phase(kube, "whoami", namespace, {"Succeeded", "Failed"}, timeout=600)
    logs = real_cluster.kubectl("logs", "-n", namespace, "whoami").stdout
    assert done.status.phase == "Succeeded", logs
    assert done.spec.node_name.startswith(realconfig.NODE_PREFIX)
    seen = json.loads(logs.strip().splitlines()[-1])
    assert seen["user"] == f"system:serviceaccount:{namespace}:default"
    assert seen["env_host"] == apiserver.SERVICE_IP
    server = real_cluster.kubectl("version", "-o", "json").stdout
    assert seen["version"] == json.loads(server)["serverVersion"]["gitVersion"]
