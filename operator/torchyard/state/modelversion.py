"""ModelVersion objects and their aliases — pure.

:func:`build_version` turns a job's produced model (its ``status.model``, and the model card
where the operator can read the store) into the ModelVersion object; :func:`alias_moves`
decides, per model, which version keeps an alias several versions hold; :func:`resolve_ref`
finds the version a ``<model>@<alias>`` / ``<model>/v<N>`` reference names;
:func:`artifact_phase` says Ready or Missing from what was found in the store.

Alias order: the operator stamps ``status.aliasSince[alias]`` on a version once it is the only
holder. A holder without a stamp therefore got the alias after the last resolution, so it is
newer than every stamped holder; among unstamped holders the higher ``resourceVersion`` was
written later (one etcd revision counter orders every write of the cluster; the operator only
compares revisions of objects of one resource read in one list).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from torchyard.api.constants import API_VERSION, COMPRESSION_JOB_KIND
from torchyard.api.modelversion import (
    MODEL_LABEL,
    MODEL_VERSION_KIND,
    SHA256,
    parse_version_ref,
    version_name,
)

Body = dict[str, Any]

# What a CompressionJob step makes of the weights, for the Format column.
_STEP_FORMATS = {
    "dynamicInt8": "int8",
    "staticInt8": "int8",
    "qat": "int8",
    "weightOnlyInt4": "int4",
    "binarize": "binary",
    "structured": "structured",
    "magnitude": "sparse",
    "l1Threshold": "sparse",
}


def formats_of(kind: str, job_spec: Body) -> list[str]:
    """safetensors, plus the variant each compression step makes (int8, sparse, structured)."""
    out = ["safetensors"]
    if kind != COMPRESSION_JOB_KIND:
        return out
    for step in job_spec.get("steps") or []:
        for body in step.values() if isinstance(step, dict) else ():
            fmt = _STEP_FORMATS.get(str((body or {}).get("method")))
            if fmt and fmt not in out:
                out.append(fmt)
    return out


def parent_from(
    kind: str, job_spec: Body, card: Body | None, source_model: Body | None
) -> str | None:
    """The ModelVersion a job's model came from: the card's lineage where it was read, else
    what the job's spec names (a modelRef with a version, or the model its source TrainingJob
    produced, ``source_model``)."""
    lineage = (card or {}).get("lineage") or {}
    src = lineage.get("source") if kind == COMPRESSION_JOB_KIND else lineage.get("initFrom")
    if isinstance(src, dict) and src.get("name") and isinstance(src.get("version"), int):
        return version_name(str(src["name"]), int(src["version"]))
    source = job_spec.get("source") or job_spec.get("initFrom") or {}
    ref = source.get("modelVersion")
    if isinstance(ref, str):
        model, _alias, number = parse_version_ref(ref)
        if number is not None:
            return version_name(model, number)
    resolved = source_model or {}
    if resolved.get("name") and isinstance(resolved.get("version"), int):
        return version_name(str(resolved["name"]), int(resolved["version"]))
    model_ref = source.get("modelRef") or {}
    if model_ref.get("name") and model_ref.get("version"):
        return version_name(str(model_ref["name"]), int(model_ref["version"]))
    return None


def _metrics(*sources: Any) -> dict[str, float]:
    for src in sources:
        if isinstance(src, dict) and src:
            return {
                str(k): float(v)
                for k, v in src.items()
                if isinstance(v, int | float) and not isinstance(v, bool)
            }
    return {}


def build_version(kind: str, job: Body, card: Body | None, parent: str | None) -> Body:
    """The ModelVersion of the model ``job`` (a TrainingJob/CompressionJob body) produced."""
    meta, spec = job.get("metadata") or {}, job.get("spec") or {}
    model = (job.get("status") or {}).get("model") or {}
    card = card or {}
    name, number = str(model["name"]), int(model["version"])
    sha = model.get("sha256") or card.get("sha256")
    artifact: Body = {
        "uri": str(model["uri"]),
        "formats": formats_of(kind, spec),
        **({"sha256": sha} if isinstance(sha, str) and re.fullmatch(SHA256[1:-1], sha) else {}),
    }
    for key in ("bytes", "parameters"):
        if isinstance(card.get(key), int):
            artifact[key] = card[key]
    lineage = card.get("lineage") or {"job": meta.get("name"), "kind": kind}
    origin: Body = {
        "source": f"{kind}/{meta.get('name')}",
        "data": card.get("data") or spec.get("data") or {},
        "lineage": lineage,
    }
    if parent:
        origin["parent"] = parent
    if isinstance(card.get("specHash"), str):
        origin["specHash"] = card["specHash"]
    return {
        "apiVersion": API_VERSION,
        "kind": MODEL_VERSION_KIND,
        "metadata": {
            "name": version_name(name, number),
            "namespace": meta.get("namespace"),
            "labels": {MODEL_LABEL: name},
        },
        "spec": {
            "model": name,
            "version": number,
            "artifact": artifact,
            "origin": origin,
            "metrics": _metrics(model.get("metrics"), card.get("metrics")),
        },
    }


@dataclass(frozen=True)
class AliasMove:
    """``alias`` stays on ``winner`` and is taken off ``losers``."""

    alias: str
    winner: str
    losers: tuple[str, ...]


def _rv(body: Body) -> int:
    try:
        return int((body.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def _since(body: Body, alias: str) -> str | None:
    value = ((body.get("status") or {}).get("aliasSince") or {}).get(alias)
    return str(value) if value else None


def _holders(versions: list[Body]) -> dict[str, list[Body]]:
    held: dict[str, list[Body]] = {}
    for v in versions:
        if (v.get("metadata") or {}).get("deletionTimestamp"):
            continue  # a version being deleted keeps nothing
        for alias in (v.get("spec") or {}).get("aliases") or []:
            held.setdefault(str(alias), []).append(v)
    return held


def alias_moves(versions: list[Body]) -> list[AliasMove]:
    """For each alias several versions of one model hold: who keeps it (see module doc)."""
    moves = []
    for alias, holders in sorted(_holders(versions).items()):
        if len(holders) < 2:
            continue

        def newest(v: Body, alias: str = alias) -> tuple[int, str, int]:
            stamp = _since(v, alias)
            return (0 if stamp else 1, stamp or "", _rv(v))

        ordered = sorted(holders, key=newest)
        losers = tuple(str(v["metadata"]["name"]) for v in ordered[:-1])
        moves.append(AliasMove(alias, str(ordered[-1]["metadata"]["name"]), losers))
    return moves


def stamp_patches(versions: list[Body], now: str) -> dict[str, dict[str, str | None]]:
    """``status.aliasSince`` changes once every alias has one holder: the sole holder gets a
    stamp where it has none; a stamp of an alias the version no longer holds goes."""
    out: dict[str, dict[str, str | None]] = {}
    held = _holders(versions)
    for v in versions:
        name = str(v["metadata"]["name"])
        have = (v.get("status") or {}).get("aliasSince") or {}
        aliases = set((v.get("spec") or {}).get("aliases") or [])
        patch: dict[str, str | None] = {a: None for a in have if a not in aliases}
        for alias in aliases:
            if alias not in have and len(held.get(alias, [])) == 1:
                patch[alias] = now
        if patch:
            out[name] = patch
    return out


def resolve_ref(ref: str, versions: list[Body]) -> Body | None:
    """The version ``<model>@<alias>`` or ``<model>/v<N>`` names among ``versions``."""
    model, alias, number = parse_version_ref(ref)
    for v in versions:
        spec = v.get("spec") or {}
        if spec.get("model") != model or (v.get("metadata") or {}).get("deletionTimestamp"):
            continue
        if number is not None and spec.get("version") == number:
            return v
        if alias is not None and alias in (spec.get("aliases") or []):
            return v
    return None


def artifact_phase(found: bool, digest: str | None, expected: str | None) -> tuple[str, str]:
    """Ready or Missing, with why."""
    if not found:
        return "Missing", "the artifact is gone from the store"
    if expected and digest != expected:
        return "Missing", f"the weights' sha256 is {digest}, not {expected}"
    return "Ready", "artifact present" + (", sha256 verified" if expected else "")


__all__ = [
    "AliasMove",
    "alias_moves",
    "artifact_phase",
    "build_version",
    "formats_of",
    "parent_from",
    "resolve_ref",
    "stamp_patches",
    "version_from_card",
]


def version_from_card(card: Body, namespace: str | None = None) -> Body:
    """The ModelVersion a model card describes (``torchyard models`` on a local store: the
    same object, so the same columns, as the operator makes on a cluster)."""
    lineage = card.get("lineage") or {}
    kind = str(lineage.get("kind") or "TrainingJob")
    job = {
        "metadata": {"name": lineage.get("job"), "namespace": namespace},
        "spec": {"steps": [{s: {"method": m}} for s, m in _steps(lineage.get("steps"))]},
        "status": {"model": card},
    }
    body = build_version(kind, job, card, parent_from(kind, {}, card, None))
    body["metadata"]["creationTimestamp"] = card.get("created")
    return body


def _steps(steps: Any) -> list[tuple[str, str]]:
    """(step kind, method) pairs of a compression card's lineage steps, where it names them."""
    out = []
    for step in steps if isinstance(steps, list) else []:
        if isinstance(step, dict):
            out += [(k, str(v.get("method"))) for k, v in step.items() if isinstance(v, dict)]
    return out
