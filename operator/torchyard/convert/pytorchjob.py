"""Kubeflow Training Operator v1 PyTorchJob (kubeflow.org/v1) -> TrainingJob.

A PyTorchJob has a Master replica (rank 0) and Worker replicas, each with its own pod
template; a TrainingJob has one Indexed Job whose pod 0 is rank 0 and plays the master. So the
Master folds into the workers (workers = Master + Worker replicas) and one template runs every
pod.
"""

from __future__ import annotations

from typing import Any

from torchyard.convert.job import (
    MAX_BACKOFF,
    Shape,
    assemble,
    command_of,
    metadata_of,
    shape_from_launch,
)
from torchyard.convert.notes import ConvertError, Notes
from torchyard.convert.pod import read_pod_template

API_VERSION = "kubeflow.org/v1"
KIND = "PyTorchJob"
CONTAINER = "pytorch"  # the name Kubeflow requires of the training container
_REPLICAS = "spec.pytorchReplicaSpecs"
_RESTART = {
    "ExitCode": ("ExitCode", None),
    "Never": ("Never", None),
    "OnFailure": (
        "OnFailure",
        "Kubeflow restarts the failed pod in place; torchyard restarts the whole group from "
        "its checkpoint (DDP ranks hang when one is replaced alone), counted in backoffLimit",
    ),
    "Always": ("OnFailure", "Always (restart even after success) has no equivalent: OnFailure"),
}
_ELASTIC_WHY = {
    "minReplicas": "a TrainingJob has a fixed size: workers = the replicas given",
    "maxReplicas": "a TrainingJob has a fixed size: workers = the replicas given",
    "rdzvBackend": "static rendezvous at pod 0 (PET_MASTER_ADDR/PET_MASTER_PORT)",
    "rdzvHost": "static rendezvous at pod 0 (PET_MASTER_ADDR/PET_MASTER_PORT)",
    "rdzvPort": "static rendezvous at pod 0 (PET_MASTER_ADDR/PET_MASTER_PORT)",
    "rdzvId": "static rendezvous at pod 0 (PET_MASTER_ADDR/PET_MASTER_PORT)",
    "rdzvConf": "static rendezvous at pod 0 (PET_MASTER_ADDR/PET_MASTER_PORT)",
    "maxRestarts": "the operator restarts the whole group; spec.runPolicy.backoffLimit "
    "counts the restarts",
    "metrics": "no autoscaling of a running group",
}


def _replicas(spec: dict[str, Any], notes: Notes) -> tuple[dict[str, Any], int]:
    """The replica whose template runs every pod, and the pod count."""
    replicas = spec.get("pytorchReplicaSpecs")
    if not isinstance(replicas, dict) or not replicas:
        raise ConvertError(f"{_REPLICAS}: required (Master and/or Worker)")
    unknown = sorted(set(replicas) - {"Master", "Worker"})
    if unknown:
        raise ConvertError(f"{_REPLICAS}: unknown replica type(s) {unknown}: Master, Worker")
    counts = {k: int(v.get("replicas", 1)) for k, v in replicas.items()}
    chosen = "Worker" if "Worker" in replicas else "Master"
    if "Master" in replicas and "Worker" in replicas:
        notes.changed(
            f"{_REPLICAS}.Master",
            "folded into the workers: pod 0 is rank 0 and the rendezvous master "
            f"(workers = {counts['Master']} Master + {counts['Worker']} Worker)",
        )
        if replicas["Master"].get("template") != replicas["Worker"].get("template"):
            notes.changed(
                f"{_REPLICAS}.Master.template",
                "differs from the Worker's: one template runs every pod, the Worker's",
            )
    return {"name": chosen, **replicas[chosen]}, sum(counts.values())


def _elastic(spec: dict[str, Any], notes: Notes) -> Any:
    """Notes for elasticPolicy; its (deprecated) nProcPerNode is returned."""
    elastic = dict(spec.get("elasticPolicy") or {})
    procs = elastic.pop("nProcPerNode", None)
    for key in elastic:
        why = _ELASTIC_WHY.get(key, "no equivalent")
        notes.dropped(f"spec.elasticPolicy.{key}", why)
    return procs


def _scheduling_policy(policy: dict[str, Any], notes: Notes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    path = "spec.runPolicy.schedulingPolicy"
    for key, value in policy.items():
        if key == "queue":
            out["queue"] = value
        elif key == "priorityClass":
            out["priorityClassName"] = value
            notes.changed(f"{path}.priorityClass", "the worker pods' priorityClassName")
        elif key == "scheduleTimeoutSeconds":
            out["scheduleTimeoutSeconds"] = value
        elif key == "minAvailable":
            notes.dropped(f"{path}.minAvailable", "the gang is always every worker pod")
        else:
            notes.dropped(f"{path}.{key}", "no equivalent (the operator sizes the gang)")
    return out


def run_policy_of(
    policy: dict[str, Any], restart: str | None, notes: Notes
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(spec.runPolicy, spec.scheduling) from runPolicy and the replica's restartPolicy."""
    out: dict[str, Any] = {}
    scheduling: dict[str, Any] = {}
    if restart is not None:
        if restart not in _RESTART:
            raise ConvertError(f"restartPolicy: {restart!r} is not one of {sorted(_RESTART)}")
        out["retryPolicy"], why = _RESTART[restart]
        if why:
            notes.changed(f"{_REPLICAS}.*.restartPolicy ({restart})", why)
    for key, value in policy.items():
        path = f"spec.runPolicy.{key}"
        if key in ("cleanPodPolicy", "ttlSecondsAfterFinished", "activeDeadlineSeconds"):
            out[key] = value
        elif key == "suspend":
            out[key] = bool(value)
        elif key == "backoffLimit":
            out[key] = min(int(value), MAX_BACKOFF)
            if int(value) > MAX_BACKOFF:
                notes.changed(path, f"{value} is over torchyard's limit: {MAX_BACKOFF}")
        elif key == "schedulingPolicy":
            scheduling = _scheduling_policy(dict(value or {}), notes)
        else:
            notes.dropped(path, "no equivalent")
    return out, scheduling


def convert(doc: dict[str, Any], notes: Notes, entrypoint: list[str] | None) -> dict[str, Any]:
    """One PyTorchJob as a TrainingJob dict (not yet validated)."""
    spec = dict(doc.get("spec") or {})
    metadata = metadata_of(dict(doc.get("metadata") or {}), notes)
    replica, workers = _replicas(spec, notes)
    path = f"{_REPLICAS}.{replica['name']}.template"
    parts = read_pod_template(dict(replica.get("template") or {}), CONTAINER, path, notes)
    procs = spec.get("nprocPerNode")
    elastic_procs = _elastic(spec, notes)
    if procs is None and elastic_procs is not None:
        procs = elastic_procs
        notes.moved("spec.elasticPolicy.nProcPerNode", "to spec.procsPerWorker")
    command = command_of(parts, entrypoint, f"{path}.spec.containers[{CONTAINER}]")
    gpus = int(parts.spec.get("resources", {}).get("gpu", 0))
    shape = shape_from_launch(
        command, Shape(workers, procs, "spec.nprocPerNode"), gpus, f"{path} command", notes
    )
    run_policy, scheduling = run_policy_of(
        dict(spec.get("runPolicy") or {}), replica.get("restartPolicy"), notes
    )
    for key in sorted(
        set(spec) - {"pytorchReplicaSpecs", "runPolicy", "elasticPolicy", "nprocPerNode"}
    ):
        notes.dropped(f"spec.{key}", "no equivalent")
    extra = {"runPolicy": run_policy, "scheduling": scheduling}
    return assemble(metadata, parts, shape, extra, notes)
