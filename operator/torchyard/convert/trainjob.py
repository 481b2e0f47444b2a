"""Kubeflow Trainer v2 TrainJob (trainer.kubeflow.org/v1alpha1, torch runtimes) -> TrainingJob.

A TrainJob names a runtime (a JobSet template: image, pod settings, the torch policy) and
overrides parts of it: ``spec.trainer`` for the training container and group shape,
``podTemplateOverrides`` (v2.0) or ``runtimePatches`` (later) for the pods. The runtime itself
lives in the cluster and is not read: what it adds (its image, security context, volumes) is
named in the notes so the user can carry it over by hand.
"""

from __future__ import annotations

from typing import Any

from torchyard.api.contract import Label
from torchyard.convert.job import (
    Shape,
    assemble,
    command_of,
    cpu_count,
    metadata_of,
    shape_from_launch,
)
from torchyard.convert.notes import ConvertError, Notes
from torchyard.convert.pod import (
    PodParts,
    read_container,
    read_env,
    read_pod_spec,
    read_resources,
)

API_VERSION = "trainer.kubeflow.org/v1alpha1"
KIND = "TrainJob"
# The training job of Kubeflow's torch runtimes is "node" ("trainer-node" in early ones).
NODE_JOBS = frozenset({"node", "trainer-node", "trainer"})
# Runtimes of other frameworks: their launchers (mpirun, deepspeed, jax) are not torchrun.
_OTHER_FRAMEWORKS = ("deepspeed", "mpi", "mlx", "jax", "xgboost", "flux", "tensorflow", "paddle")
_TRAINER_KEYS = {
    "image",
    "command",
    "args",
    "env",
    "numNodes",
    "numProcPerNode",
    "resourcesPerNode",
}


def check_runtime(spec: dict[str, Any], notes: Notes) -> None:
    """A torch runtime, or one whose framework is not known (converted as torch)."""
    ref = spec.get("runtimeRef") or {}
    name = str(ref.get("name") or "")
    if not name:
        raise ConvertError("spec.runtimeRef.name: required")
    if any(word in name for word in _OTHER_FRAMEWORKS) and not name.startswith("torch"):
        raise ConvertError(
            f"spec.runtimeRef.name: {name!r} is not a torch-distributed runtime "
            "(a TrainingJob runs torchrun)"
        )
    if not name.startswith("torch"):
        notes.changed(
            "spec.runtimeRef",
            f"{name!r} is not one of Kubeflow's torch runtimes: converted as torch-distributed",
        )
    notes.dropped(
        "spec.runtimeRef",
        f"the runtime {name!r} is not read: what it sets (image, securityContext, volumes, "
        "workingDir) is not carried over; add what your job needs",
    )


def _trainer(spec: dict[str, Any], parts: PodParts, notes: Notes) -> dict[str, Any]:
    trainer = dict(spec.get("trainer") or {})
    container = {key: trainer[key] for key in ("image", "command", "args", "env") if key in trainer}
    read_container(container, "spec.trainer", parts, notes)
    if "resourcesPerNode" in trainer:
        read_resources(
            trainer["resourcesPerNode"] or {}, "spec.trainer.resourcesPerNode", parts, notes
        )
    if "image" not in trainer:
        notes.changed(
            "spec.trainer.image",
            "not set: Kubeflow uses the runtime's image; torchyard its trainer image (torch "
            "included); set spec.image for your own",
        )
    for key in sorted(set(trainer) - _TRAINER_KEYS):
        notes.dropped(
            f"spec.trainer.{key}",
            "not a field of a TrainJob's trainer (Kubeflow's API server drops it too)",
        )
    return trainer


def _num_proc_per_node(trainer: dict[str, Any], notes: Notes) -> Any:
    """numProcPerNode; unset, the torch runtimes' default: auto."""
    if "numProcPerNode" in trainer:
        return trainer["numProcPerNode"]
    if "resourcesPerNode" not in trainer:
        return None  # Kubeflow passes auto to torchrun, which counts the node: not known here
    notes.changed(
        "spec.trainer.numProcPerNode",
        "not set: Kubeflow's torch runtimes default to auto, resolved from resourcesPerNode",
    )
    return "auto"


def _cpus(trainer: dict[str, Any]) -> int | None:
    """The pod's CPUs as Kubeflow Trainer counts them: limits, else requests."""
    res = trainer.get("resourcesPerNode") or {}
    for kind in ("limits", "requests"):
        cpus = cpu_count((res.get(kind) or {}).get("cpu"))
        if cpus:
            return cpus
    return None


def _override_containers(
    containers: list[dict[str, Any]], path: str, parts: PodParts, notes: Notes
) -> None:
    """Overrides of the training container (env, volumeMounts, ...); others name no container
    of the pod the operator builds."""
    for i, c in enumerate(containers):
        cpath = f"{path}[{i}]"
        if c.get("name") not in NODE_JOBS:
            notes.dropped(cpath, f"{c.get('name')!r} is not the training container")
            continue
        for key, value in c.items():
            if key == "env":
                read_env(list(value or []), f"{cpath}.env", parts, notes)
            elif key != "name":
                existing = parts.container.get(key)
                parts.container[key] = existing + value if isinstance(existing, list) else value
                parts.leave(f"{cpath}.{key}")


def read_pod_override(
    meta: dict[str, Any], pod: dict[str, Any], path: str, parts: PodParts, notes: Notes
) -> None:
    """One pod-level override of the training job (either API generation)."""
    for key in ("labels", "annotations"):
        if meta.get(key):
            parts.spec.setdefault("podMetadata", {}).setdefault(key, {}).update(meta[key])
    pod = dict(pod)
    _override_containers(
        list(pod.pop("containers", None) or []), f"{path}.containers", parts, notes
    )
    read_pod_spec(pod, path, parts, notes)


def _template_overrides(spec: dict[str, Any], parts: PodParts, notes: Notes) -> None:
    for i, entry in enumerate(spec.get("podTemplateOverrides") or []):
        path = f"spec.podTemplateOverrides[{i}]"
        targets = {str(t.get("name")) for t in entry.get("targetJobs") or []}
        if not targets & NODE_JOBS:
            notes.dropped(path, f"targets {sorted(targets)}: only the training pods exist")
            continue
        read_pod_override(
            entry.get("metadata") or {}, entry.get("spec") or {}, f"{path}.spec", parts, notes
        )


def _runtime_patches(spec: dict[str, Any], parts: PodParts, notes: Notes) -> None:
    for i, patch in enumerate(spec.get("runtimePatches") or []):
        base = f"spec.runtimePatches[{i}].trainingRuntimeSpec.template"
        template = ((patch.get("trainingRuntimeSpec") or {}).get("template")) or {}
        if template.get("metadata"):
            notes.dropped(f"{base}.metadata", "JobSet metadata: there is no JobSet")
        jobs = (template.get("spec") or {}).get("replicatedJobs") or []
        for j, job in enumerate(jobs):
            path = f"{base}.spec.replicatedJobs[{j}]"
            if job.get("name") not in NODE_JOBS:
                notes.dropped(path, f"{job.get('name')!r}: only the training pods exist")
                continue
            pod = ((job.get("template") or {}).get("spec") or {}).get("template") or {}
            read_pod_override(
                pod.get("metadata") or {},
                pod.get("spec") or {},
                f"{path}.template.spec.template.spec",
                parts,
                notes,
            )


def _job_policy(spec: dict[str, Any], metadata: dict[str, Any], notes: Notes) -> dict[str, Any]:
    run_policy: dict[str, Any] = {}
    if "suspend" in spec:
        run_policy["suspend"] = bool(spec["suspend"])
    if "activeDeadlineSeconds" in spec:
        run_policy["activeDeadlineSeconds"] = spec["activeDeadlineSeconds"]
    for key in ("labels", "annotations"):
        for name, value in (spec.get(key) or {}).items():
            if name in (Label.KUEUE_QUEUE_NAME, Label.KUEUE_PRIORITY_CLASS):
                metadata.setdefault("labels", {}).setdefault(name, value)
                notes.moved(f"spec.{key}.{name}", "to the TrainingJob's labels")
            else:
                notes.dropped(f"spec.{key}.{name}", "labels of the JobSet: there is no JobSet")
    if spec.get("initializer"):
        notes.dropped(
            "spec.initializer",
            "no initializers: fetch data/models in your command, or in an init container "
            "of the pod template",
        )
    known = {
        "runtimeRef",
        "trainer",
        "podTemplateOverrides",
        "runtimePatches",
        "suspend",
        "activeDeadlineSeconds",
        "labels",
        "annotations",
        "initializer",
    }
    for key in sorted(set(spec) - known):
        notes.dropped(f"spec.{key}", "no equivalent")
    return run_policy


def convert(doc: dict[str, Any], notes: Notes, entrypoint: list[str] | None) -> dict[str, Any]:
    """One TrainJob as a TrainingJob dict (not yet validated)."""
    spec = dict(doc.get("spec") or {})
    metadata = metadata_of(dict(doc.get("metadata") or {}), notes)
    check_runtime(spec, notes)
    parts = PodParts()
    trainer = _trainer(spec, parts, notes)
    _template_overrides(spec, parts, notes)
    _runtime_patches(spec, parts, notes)
    command = command_of(parts, entrypoint, "spec.trainer")
    gpus = int(parts.spec.get("resources", {}).get("gpu", 0))
    workers = int(trainer.get("numNodes", 1))
    shape = Shape(
        workers, _num_proc_per_node(trainer, notes), "spec.trainer.numProcPerNode", _cpus(trainer)
    )
    launch = shape_from_launch(command, shape, gpus, "spec.trainer.command", notes)
    extra = {"runPolicy": _job_policy(spec, metadata, notes)}
    return assemble(metadata, parts, launch, extra, notes)
