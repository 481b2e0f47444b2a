"""Child names taken by objects a job does not own, on the real control plane.

A CompressionJob ``x`` names its children ``x-cj``, and so does a TrainingJob ``x-cj``; a user
may also have made an object with a child's name. The operator proves a child is its own only
by the controller ownerReference's uid: an object with the name but another owner (or none) is
never adopted, patched or deleted. The job that comes second is held — ``Created=False``,
reason ``NameConflict``, a message naming the other object and its owner, one Warning Event —
and proceeds by itself once the name is free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from tests.cluster.opkit import (
    PLURAL,
    condition,
    create,
    events,
    example,
    get,
    held,
    running_operator,
    settle,
    wait_phase,
    wait_running_pods,
)

from torchyard.api.constants import (
    COMPRESSION_JOB_KIND,
    GROUP,
    TRAINING_JOB_KIND,
    VERSION,
    ConditionType,
    Phase,
    Reason,
)
from torchyard.builders import configmap_name, service_name, worker_job_name
from torchyard_devcluster.testing import Kube, poll

pytestmark = pytest.mark.cluster

CJ_NAME = "x"
TJ_NAME = worker_job_name(COMPRESSION_JOB_KIND, CJ_NAME)  # "x-cj": the CompressionJob's children
# Longer than the first retries of a held job (0.5, 1, 2 s backoff): time for more retries,
# each of which must neither touch the other object nor post another Event.
RETRIES_SECONDS = 4.0


def _training(name: str) -> dict[str, Any]:
    m = held(example("digits-ddp.yaml"))
    m["metadata"]["name"] = name
    m["spec"]["workers"] = 1
    return m


def _compression(name: str) -> dict[str, Any]:
    m = held(example("compress-quantize.yaml"))
    m["metadata"]["name"] = name
    # a stored checkpoint, so it does not wait for a TrainingJob's model
    m["spec"]["source"] = {"model": {"builtin": "mlp", "checkpoint": "file:///models/digits/v1"}}
    return m


def _children(kube: Kube, namespace: str, kind: str, name: str) -> dict[str, Any]:
    """Name -> (uid, resourceVersion, controller uid, data) of each child that exists."""
    reads = {
        "Job": (kube.batch.read_namespaced_job, worker_job_name(kind, name)),
        "Service": (kube.core.read_namespaced_service, service_name(kind, name)),
        "ConfigMap": (kube.core.read_namespaced_config_map, configmap_name(kind, name)),
    }
    out: dict[str, Any] = {}
    for child, (read, child_name) in reads.items():
        try:
            obj = read(child_name, namespace)
        except client.ApiException as e:
            if e.status == 404:
                continue
            raise
        refs = [r.uid for r in obj.metadata.owner_references or [] if r.controller]
        out[child] = (
            obj.metadata.uid,
            obj.metadata.resource_version if child != "Job" else None,  # status moves
            refs,
            getattr(obj, "data", None),
        )
    return out


def _name_conflict(kube: Kube, namespace: str, kind: str, name: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = get(kube, namespace, kind, name)
        for c in ((obj or {}).get("status") or {}).get("conditions") or []:
            if c["type"] == ConditionType.CREATED and c["reason"] == Reason.NAME_CONFLICT:
                return obj
        return None

    try:
        return poll(check, timeout=120, interval=0.25, what=f"{kind} {name} NameConflict")
    except AssertionError as e:
        obj = get(kube, namespace, kind, name)
        raise AssertionError(f"{e}; status now: {(obj or {}).get('status')}") from None


def _warnings(kube: Kube, namespace: str, name: str, reason: str) -> int:
    return sum(
        int(e.count or 1)
        for e in events(kube, namespace, name)
        if e.reason == reason and e.type == "Warning"
    )


def test_compression_job_does_not_take_a_training_jobs_children(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    with running_operator(kube, namespace, tmp_path):
        tj = create(kube, namespace, _training(TJ_NAME))
        wait_running_pods(kube, namespace, TJ_NAME, 1, kind="trainingjob")
        wait_phase(kube, namespace, TRAINING_JOB_KIND, TJ_NAME, Phase.RUNNING)
        before = _children(kube, namespace, TRAINING_JOB_KIND, TJ_NAME)
        assert set(before) == {"Job", "ConfigMap"}  # one worker: no Service
        assert {tuple(c[2]) for c in before.values()} == {(tj["metadata"]["uid"],)}

        cj = create(kube, namespace, _compression(CJ_NAME))
        held_cj = _name_conflict(kube, namespace, COMPRESSION_JOB_KIND, CJ_NAME)
        c = condition(held_cj, ConditionType.CREATED)
        assert c["status"] == "False"
        assert f"{configmap_name(COMPRESSION_JOB_KIND, CJ_NAME)}" in c["message"]
        assert f"belongs to {TRAINING_JOB_KIND} {TJ_NAME}" in c["message"]
        assert "rename" in c["message"]
        assert held_cj["status"]["phase"] == Phase.PENDING
        assert held_cj["status"]["message"] == c["message"]

        settle(RETRIES_SECONDS)
        # The TrainingJob's children: the same objects, not patched, still only its own.
        assert _children(kube, namespace, TRAINING_JOB_KIND, TJ_NAME) == before
        tj_now = get(kube, namespace, TRAINING_JOB_KIND, TJ_NAME)
        assert tj_now is not None
        assert tj_now["status"]["phase"] == Phase.RUNNING
        # One Warning Event for the conflict, not one per retry.
        assert _warnings(kube, namespace, CJ_NAME, Reason.NAME_CONFLICT) == 1
        assert (get(kube, namespace, COMPRESSION_JOB_KIND, CJ_NAME) or {})["status"][
            "phase"
        ] == Phase.PENDING

        # The name is freed: the CompressionJob proceeds with children of its own.
        kube.custom.delete_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL[TRAINING_JOB_KIND], TJ_NAME
        )
        wait_running_pods(kube, namespace, CJ_NAME, 1, kind="compressionjob")
        running = wait_phase(kube, namespace, COMPRESSION_JOB_KIND, CJ_NAME, Phase.RUNNING)
        c = condition(running, ConditionType.CREATED)
        assert (c["status"], c["reason"]) == ("True", Reason.JOB_CREATED)
        mine = _children(kube, namespace, COMPRESSION_JOB_KIND, CJ_NAME)
        assert set(mine) == {"Job", "ConfigMap"}
        assert {tuple(v[2]) for v in mine.values()} == {(cj["metadata"]["uid"],)}
        assert {v[0] for v in mine.values()}.isdisjoint({v[0] for v in before.values()})


def test_a_users_job_with_the_childs_name_is_left_alone(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    name = "mine"
    users = kube.batch.create_namespaced_job(
        namespace,
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": worker_job_name(TRAINING_JOB_KIND, name)},
            "spec": {
                "suspend": True,  # no pods: only its name matters here
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "c", "image": "registry.invalid/user:1"}],
                    }
                },
            },
        },
    )
    with running_operator(kube, namespace, tmp_path):
        create(kube, namespace, _training(name))
        held_tj = _name_conflict(kube, namespace, TRAINING_JOB_KIND, name)
        message = condition(held_tj, ConditionType.CREATED)["message"]
        assert f"worker Job {name} already exists" in message
        assert "not owned by any job" in message
        settle(RETRIES_SECONDS)
        job = kube.batch.read_namespaced_job(users.metadata.name, namespace)
        assert job.metadata.uid == users.metadata.uid
        assert job.metadata.owner_references is None
        assert job.metadata.labels == users.metadata.labels
        assert job.spec.suspend is True
        assert _warnings(kube, namespace, name, Reason.NAME_CONFLICT) == 1

        kube.batch.delete_namespaced_job(
            users.metadata.name, namespace, propagation_policy="Background"
        )
        wait_running_pods(kube, namespace, name, 1, kind="trainingjob")
        running = wait_phase(kube, namespace, TRAINING_JOB_KIND, name, Phase.RUNNING)
        assert condition(running, ConditionType.CREATED)["reason"] == Reason.JOB_CREATED
