"""Storage that loses nothing: the pure checks before a cluster job's pods are made
(state/storage.py) and the worker pod's fsGroup (builders). The operator's side against the
real API server is tests/cluster/test_operator_storage.py."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.conftest import EXAMPLES, REPO
from torchyard.api import CompressionJob, TrainingJob, load_manifest
from torchyard.api.compression import CompressionSource
from torchyard.api.constants import TRAINER_GID, Reason
from torchyard.builders import build_children
from torchyard.state.storage import claim_refusal, pod_claims, storage_refusal


def _tj(**spec: Any) -> TrainingJob:
    doc: dict[str, Any] = {
        "apiVersion": "torchyard.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "st", "namespace": "team-a"},
        "spec": {"workers": 2, "model": {"builtin": "mlp"}, "data": {"builtin": "digits"}, **spec},
    }
    return TrainingJob.model_validate(doc)


def _pod_spec(job: TrainingJob | CompressionJob) -> dict[str, Any]:
    spec: dict[str, Any] = build_children(job).job["spec"]["template"]["spec"]
    return spec


# --------------------------------------------------------------------------- no store


@pytest.mark.parametrize(
    ("own", "default"),
    [("pvc://models/out", None), (None, "pvc://models/store"), ("s3://b/m", "file:///x")],
)
def test_a_job_or_operator_store_is_enough(own: str | None, default: str | None) -> None:
    assert storage_refusal("TrainingJob", own, default) is None


@pytest.mark.parametrize("default", [None, ""])
def test_no_store_at_all_waits_naming_both_settings(default: str | None) -> None:
    refusal = storage_refusal("CompressionJob", None, default)
    assert refusal is not None
    assert refusal.reason == Reason.STORAGE_NOT_CONFIGURED == "StorageNotConfigured"
    assert refusal.temporary  # setting either one lets the job proceed
    for setting in ("spec.output.storage", "--default-storage", "operator.defaultStorage"):
        assert setting in refusal.message
    assert "CompressionJob" in refusal.message


# --------------------------------------------------------------------------- claims


def test_pod_claims_are_every_claim_the_pod_mounts_once() -> None:
    job = _tj(
        output={"storage": "pvc://models/out"},
        checkpoint={"storage": "pvc://ckpt/a"},
        data={"uri": "pvc://models/data.npz", "format": "npz"},
        podTemplate={
            "spec": {"volumes": [{"name": "extra", "persistentVolumeClaim": {"claimName": "x"}}]}
        },
    )
    assert sorted(pod_claims(_pod_spec(job))) == ["ckpt", "models", "x"]
    assert pod_claims(_pod_spec(_tj(output={"storage": "s3://bucket/m"}))) == []


def test_the_weights_a_pod_reads_are_mounted_too() -> None:
    """A source/teacher checkpoint or a Hugging Face directory on a claim is read in the pod:
    its claim is mounted (and checked) like the store's."""
    cj = load_manifest(EXAMPLES / "compress-quantize.yaml")
    assert isinstance(cj, CompressionJob)
    cj.spec.source = CompressionSource.model_validate(
        {"model": {"builtin": "mlp", "checkpoint": "pvc://src/digits/v1"}}
    )
    cj.spec.output.storage = "pvc://store/m"
    assert sorted(pod_claims(_pod_spec(cj))) == ["src", "store"]
    cj.spec.source = CompressionSource.model_validate(
        {"model": {"huggingface": {"path": "pvc://hf/minilm"}}}
    )
    assert sorted(pod_claims(_pod_spec(cj))) == ["hf", "store"]
    teacher = {"model": {"builtin": "mlp", "checkpoint": "pvc://teach/v3"}}
    tj = _tj(strategy="distillation", distillation={"teacher": teacher})
    assert pod_claims(_pod_spec(tj)) == ["teach"]


def test_an_existing_claim_passes_bound_or_not() -> None:
    pending = {"metadata": {"name": "m"}, "status": {"phase": "Pending"}}
    assert claim_refusal("ns", "m", pending, from_default=False) is None


def test_a_missing_claim_is_named_with_its_namespace_and_who_named_it() -> None:
    refusal = claim_refusal("team-a", "models", None, from_default=True)
    assert refusal is not None
    assert refusal.reason == Reason.STORAGE_CLAIM_NOT_FOUND == "StorageClaimNotFound"
    assert refusal.temporary  # a claim created later lets the job proceed
    assert "'models'" in refusal.message
    assert "does not exist in namespace team-a" in refusal.message
    assert "--default-storage" in refusal.message
    own = claim_refusal("team-a", "models", None, from_default=False)
    assert own is not None
    assert "--default-storage" not in own.message
    assert "the job's spec" in own.message


def test_a_claim_being_deleted_counts_as_missing() -> None:
    gone = {"metadata": {"name": "m", "deletionTimestamp": "2026-01-01T00:00:00Z"}}
    refusal = claim_refusal("ns", "m", gone, from_default=False)
    assert refusal is not None
    assert "is being deleted" in refusal.message


# --------------------------------------------------------------------------- fsGroup


def test_worker_pods_get_the_trainer_images_group_as_fs_group() -> None:
    for spec in (_pod_spec(_tj()), _pod_spec(_tj(image="example.com/mine:1"))):
        assert spec["securityContext"] == {
            "fsGroup": TRAINER_GID,
            "fsGroupChangePolicy": "OnRootMismatch",
        }


def test_pod_template_security_context_wins_key_by_key() -> None:
    job = _tj(podTemplate={"spec": {"securityContext": {"fsGroup": 2000, "runAsUser": 2000}}})
    assert _pod_spec(job)["securityContext"] == {
        "fsGroup": 2000,
        "fsGroupChangePolicy": "OnRootMismatch",
        "runAsUser": 2000,
    }
    policy = _tj(podTemplate={"spec": {"securityContext": {"fsGroupChangePolicy": "Always"}}})
    assert _pod_spec(policy)["securityContext"]["fsGroupChangePolicy"] == "Always"


def test_trainer_gid_is_the_trainer_images_user_group() -> None:
    dockerfile = (REPO / "trainer_image" / "Dockerfile").read_text()
    users = re.findall(r"^USER (\d+):(\d+)\s*$", dockerfile, re.MULTILINE)
    assert users, "trainer_image/Dockerfile has no numeric USER uid:gid"
    assert int(users[-1][1]) == TRAINER_GID
