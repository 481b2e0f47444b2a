"""What both Kubeflow kinds share on the way to a TrainingJob: metadata, procs per node, the
command and its launch flags, Kueue labels, the limits of the API, the pod template override."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from torchyard.api.constants import API_VERSION, MAX_JOB_NAME_LENGTH, TRAINING_JOB_KIND
from torchyard.api.contract import Label
from torchyard.api.training import TrainingJobSpec
from torchyard.convert.launch import strip_launch_flags
from torchyard.convert.notes import ConvertError, Notes
from torchyard.convert.pod import PodParts

POD_TEMPLATE_FIELD = "podTemplate"
MAX_WORKERS, MAX_PROCS, MAX_BACKOFF = 1024, 64, 100
_LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
_SPEC_ORDER = (
    "image",
    "imagePullPolicy",
    "command",
    "env",
    "workers",
    "procsPerWorker",
    "resources",
    "podMetadata",
    POD_TEMPLATE_FIELD,
    "runPolicy",
    "scheduling",
)


@dataclass(frozen=True)
class Shape:
    """The group as Kubeflow gave it: pods, and processes per pod as written (int or word)."""

    workers: int
    procs: Any = None
    procs_path: str = ""
    cpus: int | None = None
    """CPUs of a pod, where the manifest says (for procs auto|cpu)."""


def pod_template_supported() -> bool:
    """Whether this torchyard's TrainingJob has the pod template override."""
    return any(
        (f.alias or name) == POD_TEMPLATE_FIELD for name, f in TrainingJobSpec.model_fields.items()
    )


def metadata_of(meta: dict[str, Any], notes: Notes) -> dict[str, Any]:
    """name (a DNS-1035 label of at most 52 characters), namespace, labels, annotations."""
    name = str(meta.get("name") or "")
    if not name:
        raise ConvertError("metadata.name: required (generateName is not converted)")
    fixed = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    fixed = re.sub(r"^[^a-z]+", "", fixed)[:MAX_JOB_NAME_LENGTH].rstrip("-") or "job"
    if fixed != name:
        notes.changed(
            "metadata.name",
            f"{name!r} -> {fixed!r}: a TrainingJob name is a DNS-1035 label of at most "
            f"{MAX_JOB_NAME_LENGTH} characters (it names the pods and the Service)",
        )
    out: dict[str, Any] = {"name": fixed}
    if meta.get("namespace"):
        out["namespace"] = meta["namespace"]
    if meta.get("labels"):
        out["labels"] = dict(meta["labels"])
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != _LAST_APPLIED}
    if annotations:
        out["annotations"] = annotations
    return out


def procs_per_worker(
    value: Any, gpus: int, cpus: int | None, path: str, notes: Notes
) -> int | None:
    """Kubeflow's nprocPerNode/numProcPerNode (a number, or auto|gpu|cpu) as a number, the
    way Kubeflow Trainer resolves the words: one per GPU, else one per CPU of the pod (`cpus`:
    known only from a TrainJob's resourcesPerNode); torchrun itself counts the node's."""
    if value is None:
        return None
    if isinstance(value, int) or str(value).isdigit():
        return int(value)
    word = str(value)
    if word not in ("auto", "gpu", "cpu"):
        raise ConvertError(f"{path}: {word!r} is not a number, auto, gpu or cpu")
    if word in ("auto", "gpu") and gpus:
        chosen, why = gpus, f"one process per GPU (resources.gpu = {gpus})"
    elif word in ("auto", "cpu") and cpus:
        chosen, why = cpus, f"one process per CPU of the pod ({cpus})"
    else:
        chosen, why = 1, "the pod's GPUs/CPUs are not known from the manifest"
    notes.changed(path, f"{word!r} -> procsPerWorker {chosen}: {why}; set it explicitly")
    return chosen


def cpu_count(quantity: Any) -> int | None:
    """A CPU quantity rounded up to whole CPUs ("500m" is 1), as Kubeflow Trainer counts."""
    if quantity is None:
        return None
    text = str(quantity)
    try:
        value = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        return None
    return max(1, math.ceil(value))


def command_of(parts: PodParts, entrypoint: list[str] | None, path: str) -> list[str]:
    """The container's command + args; with no command, the image's ENTRYPOINT (given by
    the user: a manifest does not say it) before the args."""
    if parts.command:
        return [*parts.command, *parts.args]
    if entrypoint:
        return [*entrypoint, *parts.args]
    shown = f" (args {parts.args})" if parts.args else ""
    raise ConvertError(
        f"{path}: no command{shown}: the image's ENTRYPOINT runs it, which a manifest does "
        "not say; pass it with --entrypoint 'python /path/train.py'"
    )


def shape_from_launch(
    command: list[str], shape: Shape, gpus: int, path: str, notes: Notes
) -> tuple[list[str], int, int]:
    """The command without operator-owned torchrun flags, workers and procsPerWorker."""
    launch = strip_launch_flags(command, path, notes)
    procs = procs_per_worker(shape.procs, gpus, shape.cpus, shape.procs_path, notes)
    if launch.nproc_per_node is not None:
        flag = procs_per_worker(
            launch.nproc_per_node, gpus, shape.cpus, f"{path}: --nproc-per-node", notes
        )
        if procs is not None and flag != procs:
            notes.changed(
                shape.procs_path,
                f"{procs} disagrees with the command's --nproc-per-node {flag}; torchrun "
                f"used the flag, so procsPerWorker is {flag}",
            )
        procs = flag
    if launch.nnodes is not None and launch.nnodes != str(shape.workers):
        notes.changed(
            f"{path}: --nnodes {launch.nnodes}",
            f"workers is the pod count, {shape.workers}; a min:max range is not kept "
            "(a TrainingJob has a fixed size)",
        )
    return launch.command, shape.workers, procs or 1


def kueue_labels(metadata: dict[str, Any], spec: dict[str, Any], notes: Notes) -> None:
    """Kueue's queue-name/priority-class labels belong on the TrainingJob itself (the operator
    copies them to its worker Job); on the pods they would be read by nobody."""
    pod_labels = spec.get("podMetadata", {}).get("labels", {})
    for key in (Label.KUEUE_QUEUE_NAME, Label.KUEUE_PRIORITY_CLASS):
        if key in pod_labels:
            value = pod_labels.pop(key)
            metadata.setdefault("labels", {}).setdefault(key, value)
            notes.moved(
                f"pod label {key}", "to the TrainingJob's labels, where the operator reads it"
            )
    if not pod_labels and "labels" in spec.get("podMetadata", {}):
        del spec["podMetadata"]["labels"]
    queue = spec.get("scheduling", {}).get("queue")
    label = metadata.get("labels", {}).get(Label.KUEUE_QUEUE_NAME)
    if (queue or label) and spec.get("runPolicy", {}).get("suspend") is True:
        del spec["runPolicy"]["suspend"]
        notes.dropped(
            "suspend: true",
            "a Kubeflow job is created suspended for Kueue to admit it; the operator creates "
            "its worker Job suspended for Kueue itself, and runPolicy.suspend: true would hold "
            "the job until you resume it",
        )
    if queue and label and queue != label:
        del spec["scheduling"]["queue"]
        notes.dropped(
            "schedulingPolicy.queue",
            f"{queue!r} contradicts the {Label.KUEUE_QUEUE_NAME} label {label!r}, which wins",
        )


def _limit(value: int, most: int, path: str, notes: Notes) -> int:
    if value > most:
        notes.changed(path, f"{value} is over torchyard's limit: {most}")
        return most
    return value


def _place_override(spec: dict[str, Any], parts: PodParts, notes: Notes) -> None:
    override = parts.override()
    if not override:
        return
    if pod_template_supported():
        spec[POD_TEMPLATE_FIELD] = override
        for source in parts.sources:
            notes.moved(source, f"to spec.{POD_TEMPLATE_FIELD} (merged into the built pod)")
        return
    for source in parts.sources:
        notes.dropped(source, "no TrainingJob field for it in this torchyard version")


def assemble(
    metadata: dict[str, Any],
    parts: PodParts,
    shape: tuple[list[str], int, int],
    extra: dict[str, Any],
    notes: Notes,
) -> dict[str, Any]:
    """The TrainingJob: the pod parts, the command and shape, `extra` spec fields (runPolicy,
    scheduling) merged over them."""
    command, workers, procs = shape
    spec: dict[str, Any] = {**parts.spec, "command": command}
    spec["workers"] = _limit(workers, MAX_WORKERS, "(workers)", notes)
    spec["procsPerWorker"] = _limit(procs, MAX_PROCS, "(procsPerWorker)", notes)
    gpus = int(spec.get("resources", {}).get("gpu", 0))
    if gpus and spec["procsPerWorker"] > gpus:
        notes.changed(
            "(procsPerWorker)",
            f"{spec['procsPerWorker']} processes on {gpus} GPU(s): torchyard runs one process "
            f"per GPU, so {gpus}",
        )
        spec["procsPerWorker"] = gpus
    for key, value in extra.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    _place_override(spec, parts, notes)
    kueue_labels(metadata, spec, notes)
    ordered = {k: spec[k] for k in _SPEC_ORDER if spec.get(k) not in (None, {}, [])}
    return {
        "apiVersion": API_VERSION,
        "kind": TRAINING_JOB_KIND,
        "metadata": metadata,
        "spec": ordered,
    }
