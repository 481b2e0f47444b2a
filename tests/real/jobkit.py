"""The chart's operator on the real node and the jobs the real tests give it: the release and
job-namespace builders behind the ``release``/``job_namespace`` fixtures (conftest.py), and
reads of a job's status, pods and logs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torchyard_devcluster as devcluster
from torchyard_devcluster import realconfig, realnode
from torchyard_devcluster.testing import Kube, poll

from . import helmkit

GROUP, VERSION = "torchyard.io", "v1alpha1"
EXAMPLES = helmkit.REPO / "examples"
CLAIM = "models"
#: uid/gid of the trainer image's user (trainer_image/Dockerfile: USER 1000:1000).
TRAINER_UID = 1000
#: The operator's liveness probe: tolerant, as the chart's default is, of a slow answer under
#: load (the operator asks for no CPU, see chart_release; the workers and this machine's other
#: processes can starve it for a minute), quicker to start so the test can look sooner.
PROBE = {
    "initialDelaySeconds": 5,
    "periodSeconds": 10,
    "timeoutSeconds": 10,
    "failureThreshold": 12,
}
PLURAL = {"TrainingJob": "trainingjobs", "CompressionJob": "compressionjobs"}


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str
    pod: Any  # V1Pod of the operator


def new_namespace(kube: Kube, name: str, labels: dict[str, str]) -> str:
    kube.core.create_namespace({"metadata": {"name": name, "labels": labels}})
    poll(lambda: _has_default_sa(kube, name), timeout=60, what=f"default ServiceAccount in {name}")
    return name


def _has_default_sa(kube: Kube, ns: str) -> bool:
    names = [s.metadata.name for s in kube.core.list_namespaced_service_account(ns).items]
    return "default" in names


def gone(kube: Kube, ns: str) -> bool:
    return ns not in {n.metadata.name for n in kube.core.list_namespace().items}


@contextmanager
def chart_release(
    cluster: devcluster.DevCluster, kube: Kube, operator_image: str, trainer_ref: str
) -> Iterator[Release]:
    """The chart installed into a restricted namespace, its operator a pod on the real node."""
    ns = new_namespace(kube, f"tys-{uuid.uuid4().hex[:6]}", helmkit.RESTRICTED)
    name = "ty"
    values = [
        *helmkit.image_values(operator_image, trainer_ref),
        # The CRDs go with the release: the next install may be in another namespace.
        "--set=crds.keep=false",
        f"--set=operator.defaultStorage=pvc://{CLAIM}/store",
        # The real node has this machine's 2 CPUs and digits-ddp asks 1 per worker: the
        # operator must ask for none, or the second worker never schedules.
        "--set=resources.requests.cpu=0",
        # One operator pod: the node's 2 CPUs are for the workers (leader election has its
        # own tests on the KWOK cluster).
        "--set=replicaCount=1",
        "--set=leaderElection.enabled=false",
        *(f"--set=operator.livenessProbe.{k}={v}" for k, v in PROBE.items()),
    ]
    helmkit.install(cluster, name, ns, values)
    pods = kube.core.list_namespaced_pod(ns, label_selector="app.kubernetes.io/instance=ty").items
    try:
        yield Release(name, ns, pods[0])
    finally:
        helmkit.helm(cluster, "uninstall", name, f"--namespace={ns}", "--wait")
        kube.core.delete_namespace(ns, propagation_policy="Background")


def volume_dir(cluster: devcluster.DevCluster, ns: str) -> Path:
    """The host folder of the local PV behind ``ns``'s ``models`` claim (jobs_namespace)."""
    return realnode.real_dir(cluster.state_dir) / "volumes" / ns


def checkpoint_steps(cluster: devcluster.DevCluster, ns: str) -> list[int]:
    """The steps of the complete checkpoints on ``ns``'s volume, as the workers wrote them
    (``step-<9 digits>`` folders; one being written is ``.tmp-step-…``), oldest first."""
    found = volume_dir(cluster, ns).rglob("step-*")
    return sorted(int(p.name[5:]) for p in found if p.is_dir() and p.name[5:].isdigit())


@contextmanager
def jobs_namespace(cluster: devcluster.DevCluster, kube: Kube) -> Iterator[str]:
    """A restricted namespace with the claim the chart's defaultStorage names, bound to a local
    PV on the real node whose folder the trainer's non-root user owns."""
    ns = new_namespace(kube, f"jobs-{uuid.uuid4().hex[:6]}", helmkit.RESTRICTED)
    host_dir = volume_dir(cluster, ns)
    host_dir.mkdir(parents=True)
    os.chown(host_dir, TRAINER_UID, TRAINER_UID)
    pv = f"{ns}-models"
    node = f"{realconfig.NODE_PREFIX}0"
    kube.core.create_persistent_volume(helmkit.local_volume(pv, host_dir, node))
    kube.core.create_namespaced_persistent_volume_claim(ns, helmkit.claim(CLAIM, pv))
    try:
        yield ns
    finally:
        kube.core.delete_namespace(ns, propagation_policy="Background")
        poll(lambda: gone(kube, ns), timeout=300, what=f"namespace {ns} deleted")
        kube.core.delete_persistent_volume(pv)
        shutil.rmtree(host_dir, ignore_errors=True)


def completion_index(pod: Any) -> str | None:
    annotations = pod.metadata.annotations or {}
    return annotations.get("batch.kubernetes.io/job-completion-index")


def get_job(kube: Kube, ns: str, name: str, kind: str = "TrainingJob") -> dict[str, Any]:
    obj: dict[str, Any] = kube.custom.get_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL[kind], name
    )
    return obj


def finished(kube: Kube, ns: str, name: str, kind: str = "TrainingJob") -> dict[str, Any] | None:
    job = get_job(kube, ns, name, kind)
    return job if job.get("status", {}).get("phase") in {"Succeeded", "Failed"} else None


def wait_finished(
    kube: Kube, ns: str, name: str, kind: str = "TrainingJob", timeout: float = 1500
) -> dict[str, Any]:
    job: dict[str, Any] = poll(
        lambda: finished(kube, ns, name, kind), timeout=timeout, what=f"{kind} {name} ends"
    )
    return job


def worker_pods(kube: Kube, ns: str, prefix: str) -> list[Any]:
    return [
        p for p in kube.core.list_namespaced_pod(ns).items if p.metadata.name.startswith(prefix)
    ]


def torchyard_logs(cluster: devcluster.DevCluster, ns: str, *args: str) -> Any:
    """``torchyard logs -n ns ARGS`` against the real cluster (CompletedProcess)."""
    env = dict(os.environ, KUBECONFIG=str(cluster.kubeconfig))
    torchyard = str(Path(sys.executable).parent / "torchyard")
    return subprocess.run(
        [torchyard, "logs", "-n", ns, *args], env=env, text=True, capture_output=True
    )
