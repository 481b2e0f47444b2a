"""The framework baseline of bench/operator_scale.py: an "empty" Kopf operator that only
creates the same child objects (ConfigMap, Service, Indexed Job — the same builders) from a
plain ``@kopf.on.create`` handler, with Kopf's default settings (progress kept in
annotations: our CRD's status schema has no room for Kopf's fields). No status, no events,
no restarts — what a minimal Kopf operator costs.

With ``TORCHYARD_BASELINE_STATUS=1`` it also makes the writes a user saw from ours at one
worker per job before ours held a new job's first status for its workers
(controller/status_writer.py), and nothing else: a ``Pending`` status and a ``JobCreated``
Event once the children exist, a ``Running`` status and a ``WorkersRunning`` Event once the
Job's pods are ready (status shaped by our own condition helper, merge-patched like ours).
Measured beside both, it tells how much of a gap two status writes per job are.

Run: ``kopf run --standalone --namespace NS bench/baseline_operator.py``
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes import client, config

from torchyard.api import TrainingJob
from torchyard.api.constants import GROUP, VERSION, ConditionType, Phase, Reason
from torchyard.builders import build_children
from torchyard.state.conditions import set_condition
from torchyard.state.observed import rfc3339

WRITE_STATUS = os.environ.get("TORCHYARD_BASELINE_STATUS") == "1"

_api: dict[str, Any] = {}
_running: set[str] = set()  # uids of TrainingJobs already written Running


@kopf.on.startup()
def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage()
    config.load_kube_config()  # type: ignore[no-untyped-call]
    cfg = client.Configuration.get_default_copy()
    cfg.connection_pool_maxsize = 32
    api = client.ApiClient(cfg)
    _api["core"] = client.CoreV1Api(api)
    _api["batch"] = client.BatchV1Api(api)
    _api["custom"] = client.CustomObjectsApi(api)


@kopf.on.create("torchyard.io", "v1alpha1", "trainingjobs")
def create(body: Any, namespace: str, **_: Any) -> None:
    meta = body["metadata"]
    job = TrainingJob.model_validate(
        {
            "apiVersion": body["apiVersion"],
            "kind": body["kind"],
            "metadata": {"name": meta["name"], "namespace": namespace},
            "spec": dict(body["spec"]),
        }
    )
    children = build_children(
        job, namespace=namespace, default_image="registry.invalid/trainer:bench"
    )
    objs = children.all()
    kopf.adopt(objs)
    for obj in objs:
        try:
            if obj["kind"] == "ConfigMap":
                _api["core"].create_namespaced_config_map(namespace, obj)
            elif obj["kind"] == "Service":
                _api["core"].create_namespaced_service(namespace, obj)
            elif obj["kind"] == "Job":
                _api["batch"].create_namespaced_job(namespace, obj)
        except client.ApiException as e:
            if e.status != 409:
                raise
    if WRITE_STATUS:
        now = datetime.now(UTC)
        workers = job.spec.workers
        status: dict[str, Any] = {
            "phase": Phase.PENDING,
            "message": f"0/{workers} workers ready",
            "startTime": rfc3339(now),
            "restarts": 0,
            "workers": {"active": 0, "ready": 0, "succeeded": 0, "failed": 0},
        }
        set_condition(
            status, ConditionType.CREATED, True, Reason.JOB_CREATED, "worker Job created", now
        )
        _write_status(namespace, meta["name"], status)
        _post_event(body, Reason.JOB_CREATED, f"created the worker Job ({workers} workers)")


def _write_status(namespace: str, name: str, status: dict[str, Any]) -> None:
    _api["custom"].patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        namespace,
        "trainingjobs",
        name,
        {"status": status},
        _content_type="application/merge-patch+json",
    )


def _post_event(body: Any, why: str, message: str) -> None:
    meta = body["metadata"]
    now = rfc3339(datetime.now(UTC))
    _api["core"].create_namespaced_event(
        meta["namespace"],
        {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": body["apiVersion"],
                "kind": body["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "reason": why,
            "message": message,
            "type": "Normal",
            "source": {"component": "baseline-operator"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        },
    )


if WRITE_STATUS:

    @kopf.on.event("batch", "v1", "jobs")
    def job_changed(body: Any, namespace: str, **_: Any) -> None:
        """Running once every worker of the Job is ready (an event handler: Kopf keeps no
        state on the Job, so this adds no write of its own)."""
        owner = next(
            (
                ref
                for ref in body["metadata"].get("ownerReferences") or []
                if ref.get("kind") == "TrainingJob"
            ),
            None,
        )
        workers = (body.get("spec") or {}).get("parallelism") or 0
        ready = (body.get("status") or {}).get("ready") or 0
        if owner is None or owner["uid"] in _running or not workers or ready < workers:
            return
        _running.add(owner["uid"])
        now = datetime.now(UTC)
        message = f"{workers}/{workers} workers running"
        status: dict[str, Any] = {
            "phase": Phase.RUNNING,
            "message": message,
            "workers": {"active": workers, "ready": ready, "succeeded": 0, "failed": 0},
        }
        set_condition(status, ConditionType.RUNNING, True, Reason.WORKERS_RUNNING, message, now)
        # merge patch replaces the list: keep Created beside Running, as ours does
        created: dict[str, Any] = {}
        set_condition(
            created, ConditionType.CREATED, True, Reason.JOB_CREATED, "worker Job created", now
        )
        status["conditions"] = created["conditions"] + status["conditions"]
        _write_status(namespace, owner["name"], status)
        owner_body = {
            "apiVersion": owner["apiVersion"],
            "kind": owner["kind"],
            "metadata": {"name": owner["name"], "namespace": namespace, "uid": owner["uid"]},
        }
        _post_event(owner_body, Reason.WORKERS_RUNNING, message)
