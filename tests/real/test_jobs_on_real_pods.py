"""Jobs on real pods, through the chart's operator (``release``): a worker pod deleted while
it trains makes the whole group restart from the newest checkpoint on the volume; the trained
model feeds ``examples/compress-quantize.yaml``; bad input ends with a named reason, not a hang.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

import torchyard_devcluster as devcluster
from torchyard_devcluster.testing import Kube, poll

from . import jobkit
from .jobkit import EXAMPLES, Release, completion_index, get_job, torchyard_logs, wait_finished

pytestmark = pytest.mark.real

TRAINING = "digits-ddp"


@dataclass(frozen=True)
class Trained:
    namespace: str
    job: dict[str, Any]
    checkpointed_step: int
    """The newest checkpoint on the volume when the worker pod was deleted."""
    every_steps: int


@pytest.fixture(scope="module")
def trained(
    real_cluster: devcluster.DevCluster, kube: Kube, release: Release, trainer_image: str
) -> Iterator[Trained]:
    """examples/digits-ddp.yaml with rank 1's pod deleted (``kubectl delete pod``) once the
    first checkpoint is on the volume, run to its end. The trigger reads the volume itself
    (the local PV's host folder), not status.progress: the checkpoint is what the restart
    resumes from, and live progress may reach the status late or not at all."""
    manifest = EXAMPLES / f"{TRAINING}.yaml"
    every = int(yaml.safe_load(manifest.read_text())["spec"]["checkpoint"]["everySteps"])
    with jobkit.jobs_namespace(real_cluster, kube) as ns:
        real_cluster.kubectl("apply", "-n", ns, "-f", str(manifest))
        poll(
            lambda: jobkit.checkpoint_steps(real_cluster, ns),
            timeout=1500,
            interval=0.5,
            what=f"{TRAINING}'s first checkpoint on the volume",
        )
        pods = jobkit.worker_pods(kube, ns, TRAINING)
        victim = next(p.metadata.name for p in pods if completion_index(p) == "1")
        newest = jobkit.checkpoint_steps(real_cluster, ns)[-1]
        real_cluster.kubectl("delete", "pod", "-n", ns, victim, "--wait=false")
        yield Trained(ns, wait_finished(kube, ns, TRAINING), newest, every)


def test_deleted_worker_pod_restarts_the_group_from_the_newest_checkpoint(
    real_cluster: devcluster.DevCluster, kube: Kube, trained: Trained
) -> None:
    status = trained.job["status"]
    assert status["phase"] == "Succeeded", status
    assert status["restarts"] == 1, status
    assert trained.checkpointed_step < status["progress"]["totalSteps"], status
    # The second attempt's rank 0 says where it resumed (its log in the pod and the archive).
    logs = torchyard_logs(real_cluster, trained.namespace, TRAINING, "--attempt", "1")
    assert logs.returncode == 0, logs.stderr
    print(f"attempt 1, rank 0:\n{logs.stdout[-2000:]}")
    resumed = [ln for ln in logs.stdout.splitlines() if "start: ddp" in ln]
    assert resumed, logs.stdout
    start = int(resumed[0].split("resuming at step ")[1].split()[0])
    # From the newest checkpoint there was when the pod went (or one written while it was
    # terminating), not from step 0: the steps before it are not done again.
    assert trained.every_steps <= trained.checkpointed_step <= start, resumed
    assert start < status["progress"]["totalSteps"], resumed
    assert f"step 1/{status['progress']['totalSteps']}" not in logs.stdout


def test_compress_quantize_reads_the_trained_model_from_the_volume(
    real_cluster: devcluster.DevCluster, kube: Kube, trained: Trained
) -> None:
    ns, manifest = trained.namespace, EXAMPLES / "compress-quantize.yaml"
    name = yaml.safe_load(manifest.read_text())["metadata"]["name"]
    real_cluster.kubectl("apply", "-n", ns, "-f", str(manifest))
    job = wait_finished(kube, ns, name, "CompressionJob")
    status = job["status"]
    print(
        f"{name}: {status.get('phase')} report={status.get('report')} model={status.get('model')}"
    )
    assert status["phase"] == "Succeeded", status
    trained_model = trained.job["status"]["model"]
    assert status["report"]["passed"] is True
    assert status["report"]["baseline"]["accuracy"] == pytest.approx(
        trained_model["metrics"]["accuracy"], abs=0.02
    )
    assert status["model"]["name"] == "digits-mlp-int8"
    assert status["model"]["version"] >= 1
    assert status["model"]["uri"].startswith(f"pvc://{jobkit.CLAIM}/")


# --- bad input -----------------------------------------------------------------------------


def _job_manifest(name: str, **spec: Any) -> dict[str, Any]:
    """One worker of the example. Without ``image`` the worker runs the chart's trainerImage,
    which the operator knows to be non-root (it sets runAsNonRoot, as the namespace's Pod
    Security level ``restricted`` requires); with one, the manifest must say so itself."""
    base = yaml.safe_load((EXAMPLES / f"{TRAINING}.yaml").read_text())
    base["metadata"] = {"name": name}
    base["spec"].update(workers=1, **spec)
    return dict(base)


def _apply(real_cluster: devcluster.DevCluster, ns: str, manifest: dict[str, Any]) -> None:
    real_cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(manifest))


@pytest.fixture(scope="module")
def bad_ns(real_cluster: devcluster.DevCluster, kube: Kube, release: Release) -> Iterator[str]:
    with jobkit.jobs_namespace(real_cluster, kube) as ns:
        yield ns


def test_a_command_that_exits_1_fails_the_job_as_permanent(
    real_cluster: devcluster.DevCluster, kube: Kube, bad_ns: str, trainer_image: str
) -> None:
    name = f"exit1-{uuid.uuid4().hex[:4]}"
    command = ["python", "-c", "import sys; print('bad script'); sys.exit(1)"]
    _apply(real_cluster, bad_ns, _job_manifest(name, command=command))
    status = wait_finished(kube, bad_ns, name, timeout=600)["status"]
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert status["phase"] == "Failed", status
    assert failed["reason"] == "PermanentFailure", failed
    assert "exited with code 1" in failed["message"], failed
    assert status.get("restarts", 0) == 0, status


def test_a_worker_oom_killed_by_its_memory_limit_is_retried(
    real_cluster: devcluster.DevCluster, kube: Kube, bad_ns: str, trainer_image: str
) -> None:
    name = f"oom-{uuid.uuid4().hex[:4]}"
    # 1 GiB of zeros in a 64 MiB cgroup: the kernel's OOM killer ends it (exit 137).
    command = ["python", "-c", "b = bytearray(1 << 30); b[::4096] = b'x' * len(b[::4096])"]
    manifest = _job_manifest(
        name,
        command=command,
        resources={"cpu": "100m", "memory": "64Mi"},
        runPolicy={"backoffLimit": 1},
    )
    _apply(real_cluster, bad_ns, manifest)
    status = wait_finished(kube, bad_ns, name, timeout=600)["status"]
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    print(f"{name}: {failed}")
    assert status["phase"] == "Failed", status
    # Retryable: the group was restarted once, then backoffLimit 1 ended it.
    assert status["restarts"] == 1, status
    assert failed["reason"] == "BackoffLimitExceeded", failed
    assert "exited with code 137 (OOMKilled)" in failed["message"], failed


def _running_condition(kube: Kube, ns: str, name: str) -> dict[str, Any] | None:
    conds = (get_job(kube, ns, name).get("status") or {}).get("conditions") or []
    return next((c for c in conds if c["type"] == "Running" and c["status"] == "False"), None)


def test_an_image_that_does_not_exist_is_named_in_the_job_status(
    real_cluster: devcluster.DevCluster, kube: Kube, bad_ns: str, trainer_image: str
) -> None:
    name = f"noimage-{uuid.uuid4().hex[:4]}"
    image = f"{trainer_image.split('/')[0]}/torchyard/no-such-image:{uuid.uuid4().hex[:6]}"
    non_root = {"spec": {"securityContext": {"runAsNonRoot": True}}}
    _apply(real_cluster, bad_ns, _job_manifest(name, image=image, podTemplate=non_root))
    running = poll(
        lambda: (
            c
            if (c := _running_condition(kube, bad_ns, name)) and c["reason"] == "ImagePullFailed"
            else None
        ),
        timeout=300,
        what=f"{name}: Running False with reason ImagePullFailed",
    )
    print(f"{name}: {running}")
    assert image in running["message"], running
    assert "worker 0 cannot start" in running["message"], running
    job = get_job(kube, bad_ns, name)
    assert job["status"]["phase"] == "Pending", job["status"]
    events = kube.core.list_namespaced_event(
        bad_ns, field_selector=f"involvedObject.name={name},reason=ImagePullFailed"
    ).items
    assert len(events) == 1, [e.message for e in events]
    real_cluster.kubectl("delete", "trainingjob", "-n", bad_ns, name, "--wait=false")
