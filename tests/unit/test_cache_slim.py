"""The Job cache keeps only what the reconciler reads (state/observed.py ``slim_job``, beside
``JobInfo.from_dict``): every decision made from a slimmed Job is the one made from the whole
Job."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from torchyard.api import TrainingJob
from torchyard.api.contract import Annotation, Label
from torchyard.builders import build_children
from torchyard.controller.cache import Cache
from torchyard.state import JobInfo, slim_job
from torchyard.state.ownership import controlled_by

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits-ddp.yaml"


def server_job(**status: Any) -> dict[str, Any]:
    """The example's worker Job as the API server returns it: owner, uid, managedFields,
    resourceVersion, a status."""
    doc = yaml.safe_load(EXAMPLE.read_text())
    children = build_children(TrainingJob.model_validate(doc), namespace="ns", default_image="x")
    job = copy.deepcopy(next(o for o in children.all() if o["kind"] == "Job"))
    meta = job["metadata"]
    meta.update(
        uid="job-uid",
        resourceVersion="42",
        ownerReferences=[
            {
                "apiVersion": "torchyard.io/v1alpha1",
                "kind": "TrainingJob",
                "name": "digits",
                "uid": "owner-uid",
                "controller": True,
            }
        ],
        managedFields=[{"manager": "torchyard", "operation": "Update", "fieldsV1": {"f:spec": {}}}],
    )
    meta.setdefault("annotations", {})[Annotation.RESTART_COUNT] = "2"
    meta.setdefault("labels", {})[Label.KUEUE_QUEUE_NAME] = "team-a"
    job["spec"]["suspend"] = True
    job["status"] = status
    return job


@pytest.mark.parametrize(
    "status",
    [
        {},
        {"active": 2, "ready": 1},
        {"succeeded": 2, "conditions": [{"type": "Complete", "status": "True"}]},
        {
            "failed": 1,
            "conditions": [
                {"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "message": "m"}
            ],
        },
    ],
)
def test_a_slim_job_reads_the_same(status: dict[str, Any]) -> None:
    job = server_job(**status)
    slim = slim_job(job)
    assert JobInfo.from_dict(slim) == JobInfo.from_dict(job)
    assert controlled_by(slim, "owner-uid")
    assert not controlled_by(slim, "other")
    assert slim["metadata"]["resourceVersion"] == "42"
    assert "managedFields" not in slim["metadata"]
    assert "template" not in slim["spec"]
    assert len(json.dumps(slim)) < len(json.dumps(job)) / 2


def test_deleting_and_no_status_survive() -> None:
    job = server_job()
    del job["status"]
    job["metadata"]["deletionTimestamp"] = "2026-12-04T00:00:00Z"
    assert JobInfo.from_dict(slim_job(job)) == JobInfo.from_dict(job)
    assert JobInfo.from_dict(slim_job(job)).deleting


def test_the_cache_holds_slim_jobs() -> None:
    enqueued: list[Any] = []
    cache = Cache(lambda key, delay: enqueued.append(key), lambda key: None, 0.0)
    job = server_job(active=2)
    cache.observe_job(job, "ADDED")
    (key,) = cache.jobs
    assert cache.jobs[key] == slim_job(job)
    assert cache.job_name(key) == job["metadata"]["name"]
    assert enqueued == [key]
