"""A job that starts from a model version — a CompressionJob's ``source.modelVersion``, a
TrainingJob's ``initFrom.modelVersion`` (fine-tuning) — pure: waiting for the version and
handing it to the workers.

The operator resolves ``<model>@<alias>`` / ``<model>/v<N>`` when the job starts (aliases
live only in ModelVersion objects, which workers cannot read): :func:`wait_for_version`
keeps the job Waiting until the version exists and is not Missing, then records it in
``status.sourceVersion``; :func:`with_resolved_source` turns the reference into what the
workers already understand: a CompressionJob's ``source.modelRef`` (name, version, store
root), a TrainingJob's ``model.checkpoint`` (the version's directory).
"""

from __future__ import annotations

from typing import Any

from torchyard.api import CompressionJob, TrainingJob
from torchyard.api.common import ModelVersionRef
from torchyard.api.constants import (
    COMPRESSION_JOB_KIND,
    TRAINING_JOB_KIND,
    ConditionType,
    Phase,
    Reason,
)
from torchyard.api.modelversion import version_name
from torchyard.state.conditions import condition_true
from torchyard.state.decision import Decision
from torchyard.state.draft import StatusDraft
from torchyard.state.observed import Observed

# The spec field, per kind, that names the version a job starts from.
VERSION_REF_FIELD: dict[str, tuple[str, str]] = {
    COMPRESSION_JOB_KIND: ("source", "modelVersion"),
    TRAINING_JOB_KIND: ("initFrom", "modelVersion"),
}


def version_ref_field(kind: str) -> str:
    """``spec.source.modelVersion`` / ``spec.initFrom.modelVersion`` (for messages)."""
    return "spec." + ".".join(VERSION_REF_FIELD[kind])


def version_ref_of(kind: str, body: dict[str, Any]) -> str | None:
    """The ``<model>@<alias>`` / ``<model>/v<N>`` a job's spec starts from, if any."""
    path = VERSION_REF_FIELD.get(kind)
    if path is None:
        return None
    parent = (body.get("spec") or {}).get(path[0]) or {}
    ref = parent.get(path[1]) if isinstance(parent, dict) else None
    return str(ref) if ref else None


def ref_model(ref: str) -> str:
    """The model name of a version reference."""
    return ref.split("@")[0].split("/")[0]


def wait_for_version(
    draft: StatusDraft, obs: Observed, ref: str, field: str = "spec.source.modelVersion"
) -> Decision | None:
    """Waiting (reason WaitingForSourceModel, ``field`` named) until ``ref`` resolves."""
    if obs.job is not None or condition_true(draft.status, ConditionType.CREATED):
        return None
    if obs.source is None:
        return draft.need_source()
    src, model = obs.source, obs.source.model or {}
    if src.found and model and src.phase != "Missing":
        name = version_name(str(model["name"]), int(model["version"]))
        text = f"{field} {ref} resolved to {name} ({model.get('uri')})"
        draft.status["sourceVersion"] = model
        draft.cond(ConditionType.WAITING, False, Reason.SOURCE_READY, text)
        if draft.old_phase == Phase.WAITING:
            draft.event(Reason.SOURCE_READY, text)
        # Written before the worker Job is made: the workers' spec is built from the
        # recorded version (the status write brings the job back here at once).
        return None if draft.view.status.get("sourceVersion") == model else draft.done()
    why = (
        f"{field} {ref}: its artifact is Missing"
        if src.found
        else f"{field} {ref}: no such ModelVersion in this namespace (yet)"
    )
    draft.phase(Phase.WAITING, why)
    if draft.cond(ConditionType.WAITING, True, Reason.WAITING_FOR_SOURCE, why):
        draft.event(Reason.WAITING_FOR_SOURCE, why)
    return draft.done()


def store_root(uri: str, model: str, version: int) -> str:
    """``<root>/<model>/v<N>`` -> ``<root>``."""
    return uri.rstrip("/").removesuffix(f"/{model}/v{version}")


def with_resolved_source(
    job: TrainingJob | CompressionJob, status: dict[str, Any]
) -> TrainingJob | CompressionJob:
    """The job as its workers get it: ``source.modelVersion`` replaced by the ``modelRef``
    it resolved to (``status.sourceVersion``), ``initFrom`` by ``model.checkpoint`` (the
    version's directory, mounted like any checkpoint); other jobs unchanged."""
    resolved = status.get("sourceVersion") or {}
    if not resolved:
        return job
    if isinstance(job, TrainingJob):
        if job.spec.init_from is None or job.spec.model is None:
            return job
        trained = job.model_copy(deep=True)
        assert trained.spec.model is not None
        trained.spec.init_from = None
        trained.spec.model.checkpoint = str(resolved["uri"])
        return trained
    if not job.spec.source.model_version:
        return job
    name, number = str(resolved["name"]), int(resolved["version"])
    out = job.model_copy(deep=True)
    out.spec.source.model_version = None
    out.spec.source.model_ref = ModelVersionRef(
        name=name, version=number, storage=store_root(str(resolved["uri"]), name, number)
    )
    return out


__all__ = [
    "VERSION_REF_FIELD",
    "ref_model",
    "store_root",
    "version_ref_field",
    "version_ref_of",
    "wait_for_version",
    "with_resolved_source",
]
