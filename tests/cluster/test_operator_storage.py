"""Storage that loses nothing, on the real control plane (docs/storage.md): an operator with no
``--default-storage`` holds a job that names no model store — Pending, ``Created`` False with
``StorageNotConfigured`` naming the settings, and no batch Job or pod — for TrainingJob and
CompressionJob alike; once the job names a pvc:// store whose claim is missing it says
``StorageClaimNotFound``; creating the claim (bound to a PersistentVolume) lets it run, and its
pods mount the claim with the trainer image's group as ``fsGroup``, which a job's
``spec.podTemplate`` overrides."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.cluster.opkit import (
    OperatorProcess,
    create,
    event_reasons,
    example,
    get,
    held,
    patch_spec,
    running_operator,
    wait_running_pods,
    worker_jobs,
    worker_pods,
)

from torchyard.api.constants import TRAINER_GID, ConditionType, Phase, Reason
from torchyard.api.contract import DEFAULT_PVC_ROOT
from torchyard_devcluster.testing import Kube, poll

pytestmark = pytest.mark.cluster

CLAIM = "models"


@pytest.fixture
def no_default_store(kube: Kube, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    with running_operator(kube, namespace, tmp_path, default_storage=None) as op:
        yield op


def _created(kube: Kube, ns: str, kind: str, name: str, reason: str) -> dict[str, Any]:
    """The job once its Created condition has ``reason`` (the job's status, and it)."""

    def check() -> dict[str, Any] | None:
        obj = get(kube, ns, kind, name) or {}
        status = obj.get("status") or {}
        for c in status.get("conditions") or []:
            if c["type"] == ConditionType.CREATED and c["reason"] == reason:
                return {"status": status, "created": c}
        return None

    try:
        return poll(check, timeout=120, interval=0.25, what=f"{kind} {name} Created {reason}")
    except AssertionError as e:
        raise AssertionError(f"{e}; now: {(get(kube, ns, kind, name) or {}).get('status')}") from e


def _claim_with_volume(kube: Kube, ns: str) -> str:
    """The claim ``CLAIM`` pre-bound to a new PersistentVolume (no provisioner here: the PV
    controller binds the pair, so the scheduler places the pods). Returns the PV's name."""
    pv = f"ty-storage-{ns}-{uuid.uuid4().hex[:4]}"
    kube.core.create_persistent_volume(
        {
            "metadata": {"name": pv},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "hostPath": {"path": f"/var/lib/torchyard-test/{pv}"},
                "claimRef": {"namespace": ns, "name": CLAIM},
            },
        }
    )
    kube.core.create_namespaced_persistent_volume_claim(
        ns,
        {
            "metadata": {"name": CLAIM},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "volumeName": pv,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    return pv


def test_no_store_waits_then_a_missing_claim_is_named_then_the_claim_lets_it_run(
    kube: Kube, namespace: str, no_default_store: OperatorProcess
) -> None:
    tj = held(example("digits-ddp.yaml"))
    cj = example("compress-quantize.yaml")
    cj["spec"]["source"] = {"model": {"builtin": "mlp", "checkpoint": "file:///nowhere/v1"}}
    cj["spec"]["output"].pop("storage", None)
    create(kube, namespace, tj)
    create(kube, namespace, cj)
    name, cj_name = tj["metadata"]["name"], cj["metadata"]["name"]
    for kind, job in (("TrainingJob", name), ("CompressionJob", cj_name)):
        seen = _created(kube, namespace, kind, job, Reason.STORAGE_NOT_CONFIGURED)
        assert seen["status"]["phase"] == Phase.PENDING
        assert seen["created"]["status"] == "False"
        for setting in ("spec.output.storage", "--default-storage", "operator.defaultStorage"):
            assert setting in seen["created"]["message"]
        assert seen["status"]["message"] == seen["created"]["message"]
    event_reasons(kube, namespace, name, Reason.STORAGE_NOT_CONFIGURED)
    assert worker_jobs(kube, namespace) == []  # no pod could write into its container

    patch_spec(kube, namespace, "TrainingJob", name, {"output": {"storage": f"pvc://{CLAIM}/m"}})
    seen = _created(kube, namespace, "TrainingJob", name, Reason.STORAGE_CLAIM_NOT_FOUND)
    assert f"'{CLAIM}'" in seen["created"]["message"]
    assert f"does not exist in namespace {namespace}" in seen["created"]["message"]
    assert worker_jobs(kube, namespace) == []
    assert worker_pods(kube, namespace, name) == []

    pv = _claim_with_volume(kube, namespace)
    try:
        pods = wait_running_pods(kube, namespace, name, 2)  # retried until the claim exists
    finally:
        kube.core.delete_persistent_volume(pv)
    for pod in pods:
        assert pod.spec.security_context.fs_group == TRAINER_GID
        assert pod.spec.security_context.fs_group_change_policy == "OnRootMismatch"
        (volume,) = [v for v in pod.spec.volumes if v.persistent_volume_claim is not None]
        assert volume.persistent_volume_claim.claim_name == CLAIM
        (worker,) = pod.spec.containers
        mounts = {m.name: m.mount_path for m in worker.volume_mounts}
        assert mounts[volume.name] == f"{DEFAULT_PVC_ROOT}/{CLAIM}"
    # the CompressionJob still has no store: it still waits, with no pod
    still = get(kube, namespace, "CompressionJob", cj_name) or {}
    assert still["status"]["phase"] == Phase.PENDING
    assert worker_pods(kube, namespace, cj_name, kind="compressionjob") == []


def test_pod_template_security_context_overrides_the_fs_group(
    kube: Kube, namespace: str, no_default_store: OperatorProcess
) -> None:
    tj = held(example("digits-ddp.yaml"))
    tj["spec"]["output"]["storage"] = "file:///var/lib/torchyard-test-store"
    tj["spec"]["podTemplate"] = {"spec": {"securityContext": {"fsGroup": 4242}}}
    create(kube, namespace, tj)
    for pod in wait_running_pods(kube, namespace, tj["metadata"]["name"], 2):
        assert pod.spec.security_context.fs_group == 4242
        assert pod.spec.security_context.fs_group_change_policy == "OnRootMismatch"
