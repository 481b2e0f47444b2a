"""Installing the chart on the real-node cluster (helm from the cache, images from the local
registry) and the namespaces and storage the real tests give it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import torchyard_devcluster as devcluster
from torchyard_devcluster import paths

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "torchyard"
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/warn": "restricted",
}


def helm(cluster: devcluster.DevCluster, *args: str, timeout: float = 600) -> str:
    env = dict(os.environ, KUBECONFIG=str(cluster.kubeconfig))
    done = subprocess.run(
        [str(paths.cache_dir() / "bin" / "helm"), *args],
        env=env,
        text=True,
        capture_output=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def image_values(operator_ref: str, trainer_ref: str) -> list[str]:
    """``--set`` arguments: both images from the local registry, the way a user points the chart
    at their own registry; ``operator_ref`` is ``repository@sha256:…``."""
    repo, _, digest = operator_ref.partition("@")
    return [
        f"--set=image.repository={repo}",
        f"--set=image.digest={digest}",
        f"--set=operator.trainerImage={trainer_ref}",
    ]


def install(cluster: devcluster.DevCluster, release: str, namespace: str, values: list[str]) -> str:
    return helm(
        cluster,
        "install",
        release,
        str(CHART),
        f"--namespace={namespace}",
        *values,
        "--wait",
        "--timeout=8m",
    )


def local_volume(name: str, host_dir: Path, node: str, size: str = "2Gi") -> dict[str, Any]:
    """A ``local`` PersistentVolume on ``node``: unlike hostPath, the kubelet applies a pod's
    fsGroup to it."""
    on_node = {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
    return {
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "torchyard-real-local",
            "local": {"path": str(host_dir)},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [on_node]}]}},
        },
    }


def claim(name: str, volume: str, size: str = "2Gi") -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "torchyard-real-local",
            "volumeName": volume,
            "resources": {"requests": {"storage": size}},
        },
    }
