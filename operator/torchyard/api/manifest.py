"""Reading manifests and turning validation failures into field-path messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from torchyard.api.compression import CompressionJob
from torchyard.api.constants import API_VERSION, COMPRESSION_JOB_KIND, TRAINING_JOB_KIND
from torchyard.api.training import TrainingJob

AnyJob = TrainingJob | CompressionJob

KINDS: dict[str, type[TrainingJob] | type[CompressionJob]] = {
    TRAINING_JOB_KIND: TrainingJob,
    COMPRESSION_JOB_KIND: CompressionJob,
}


class ManifestError(ValueError):
    """A manifest that is not a valid torchyard job; `errors` are "field.path: message" lines."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source = source
        self.errors = errors
        super().__init__(f"{source}: " + "; ".join(errors))


# Pydantic puts the union member that failed into `loc` ("int", "constrained-str", ...);
# those are not fields of the manifest.
_UNION_TAGS = {"int", "str", "float", "bool", "dict", "list", "none"}


def _is_union_tag(part: str) -> bool:
    return part in _UNION_TAGS or "-" in part or "[" in part


def _loc_to_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, str) and _is_union_tag(part):
            continue
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def format_validation_error(exc: ValidationError) -> list[str]:
    """One "field.path: message" line per error, paths in the manifest's camelCase spelling."""
    lines: list[str] = []
    for err in exc.errors(include_url=False):
        path = _loc_to_path(err["loc"])
        if err["type"] == "torchyard_rule":
            ctx = err.get("ctx") or {}
            sub_path = str(ctx.get("field_path", ""))
            if sub_path and sub_path != "(object)":
                path = f"{path}.{sub_path}" if path else sub_path
            lines.append(f"{path or '(root)'}: {ctx.get('message', err['msg'])}")
            continue
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "missing":
            msg = "required field is missing"
        line = f"{path or '(root)'}: {msg}"
        previous = next((i for i, old in enumerate(lines) if old.startswith(f"{path}: ")), None)
        if previous is not None:
            # Several members of one union failed: one line, alternatives joined.
            lines[previous] += f", or {msg}"
        else:
            lines.append(line)
    return lines


def parse_job(obj: Any, source: str = "<object>") -> AnyJob:
    """Validate one decoded manifest (a dict) as a TrainingJob or CompressionJob."""
    if not isinstance(obj, dict):
        raise ManifestError(source, ["(root): a manifest must be a mapping"])
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if api_version != API_VERSION:
        raise ManifestError(source, [f"apiVersion: must be {API_VERSION}, got {api_version!r}"])
    model = KINDS.get(str(kind))
    if model is None:
        raise ManifestError(source, [f"kind: must be one of {sorted(KINDS)}, got {kind!r}"])
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise ManifestError(source, format_validation_error(exc)) from None


def load_manifests(path: Path) -> list[AnyJob]:
    """All jobs of a (possibly multi-document) YAML file."""
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as exc:
        raise ManifestError(str(path), [f"(root): not valid YAML: {exc}"]) from None
    if not docs:
        raise ManifestError(str(path), ["(root): the file holds no manifest"])
    return [
        parse_job(doc, f"{path}#{i}" if len(docs) > 1 else str(path)) for i, doc in enumerate(docs)
    ]


def load_manifest(path: Path) -> AnyJob:
    """The single job of a YAML file (multi-document files must hold exactly one job)."""
    jobs = load_manifests(path)
    if len(jobs) != 1:
        raise ManifestError(str(path), [f"(root): expected one job, found {len(jobs)}"])
    return jobs[0]
