"""Reading manifests and turning validation failures into field-path messages.

Every message names its file, and the 1-based document number in a multi-document file.
YAML is read as kubectl reads it, except that what kubectl passes over in silence is said: a
key given twice in one mapping is a warning naming both lines (kubectl keeps the last value).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
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


# Pydantic's scalar type errors, in the API server's words ("must be of type integer").
_OPENAPI_TYPE = {
    "int_type": "integer",
    "float_type": "number",
    "string_type": "string",
    "bool_type": "boolean",
}
_TYPE_MESSAGE = re.compile(r"^must be of type (?P<types>[a-z ]+), got (?P<got>.+)$")


def _json_type(value: Any) -> str:
    """The OpenAPI type name of a decoded YAML/JSON value, as the API server reports it."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    return "array" if isinstance(value, list | tuple) else "object"


def _got(value: Any) -> str:
    try:
        shown = json.dumps(value)
    except (TypeError, ValueError):  # e.g. a YAML timestamp: no JSON form to show
        shown = repr(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return f"{_json_type(value)} {shown}"


def _message(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown field"
    if err["type"] == "missing":
        return "required field is missing"
    if err["type"] in _OPENAPI_TYPE:
        return f"must be of type {_OPENAPI_TYPE[err['type']]}, got {_got(err['input'])}"
    return str(err["msg"])


def _join(first: str, second: str) -> str:
    """Two failed members of one union as one message ("string or integer, got number 1.5")."""
    a, b = _TYPE_MESSAGE.match(first), _TYPE_MESSAGE.match(second)
    if a and b and a["got"] == b["got"]:
        return f"must be of type {a['types']} or {b['types']}, got {a['got']}"
    return f"{first}, or {second}"


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
        msg = _message(err)
        head = f"{path or '(root)'}: "
        previous = next((i for i, old in enumerate(lines) if old.startswith(head)), None)
        if previous is not None:
            # Several members of one union failed: one line, alternatives joined.
            lines[previous] = head + _join(lines[previous][len(head) :], msg)
        else:
            lines.append(head + msg)
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


@dataclass(frozen=True)
class DuplicateKey:
    """A key given twice in one YAML mapping (lines 1-based)."""

    key: str
    first_line: int
    line: int
    last_line: int
    """The line whose value kubectl (and PyYAML) keep."""
    document: int


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader that names the file in its marks and records duplicate keys."""

    def __init__(self, text: str, name: str) -> None:
        super().__init__(text)
        # Marks (and so every YAML error) take the reader's name: the file, not the
        # "<unicode string>" PyYAML says for text.
        self.name = name
        self.document = 0
        self.duplicates: list[DuplicateKey] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        lines: dict[Any, list[int]] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` overrides on purpose
            try:
                key = self.construct_object(key_node, deep=True)
                lines.setdefault(key, []).append(key_node.start_mark.line + 1)
            except TypeError:  # an unhashable (complex) key: the constructor says so below
                continue
        for key, at in lines.items():
            self.duplicates += [
                DuplicateKey(str(key), at[0], line, at[-1], self.document) for line in at[1:]
            ]
        return super().construct_mapping(node, deep=deep)


def _yaml_error(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    return f"(root): not valid YAML: {where}{problem}" + (f" ({context})" if context else "")


_SEPARATOR = re.compile(r"^---(\s|$)")


def _document_at(text: str, line: int) -> tuple[int, int]:
    """(the document holding 0-based `line`, how many the text has), counted by `---` lines as
    PyYAML counts documents: a `---` before any content opens the first document."""

    def separators(lines: list[str]) -> int:
        seps = [i for i, raw in enumerate(lines) if _SEPARATOR.match(raw)]
        content = [
            i for i, raw in enumerate(lines) if raw.strip() and not raw.lstrip().startswith("#")
        ]
        leading = bool(seps) and (not content or seps[0] <= content[0])
        return len(seps) - leading

    lines = text.splitlines()
    return 1 + separators(lines[: line + 1]), 1 + separators(lines)


def _source(path: Path, number: int, multi: bool) -> str:
    return f"{path} (document {number})" if multi else str(path)


@dataclass
class FileCheck:
    """What `torchyard validate` says about one file: its jobs, errors and warnings."""

    path: Path
    jobs: list[AnyJob] = field(default_factory=list)
    errors: list[ManifestError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    """Valid, but probably not meant: "source: line N: message" lines."""


def _documents(path: Path, check: FileCheck) -> list[tuple[int, Any]]:
    """The non-empty documents of `path` with their 1-based position; YAML errors to `check`."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        check.errors.append(ManifestError(str(path), [f"(root): cannot read the file: {exc}"]))
        return []
    loader = _Loader(text, str(path))
    docs: list[tuple[int, Any]] = []
    try:
        while loader.check_data():  # type: ignore[no-untyped-call]
            loader.document += 1
            doc = loader.get_data()
            if doc is not None:  # kubectl skips empty documents too
                docs.append((loader.document, doc))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        number, total = _document_at(text, mark.line) if mark is not None else (1, 1)
        check.errors.append(ManifestError(_source(path, number, total > 1), [_yaml_error(exc)]))
        return []
    finally:
        loader.dispose()
    multi = len(docs) > 1
    for dup in loader.duplicates:
        check.warnings.append(
            f"{_source(path, dup.document, multi)}: line {dup.line}: duplicate key "
            f"{dup.key!r} (first at line {dup.first_line}); kubectl keeps the last value, "
            f"from line {dup.last_line}"
        )
    if not docs:
        check.errors.append(ManifestError(str(path), ["(root): the file holds no manifest"]))
    return docs


def check_manifests(path: Path) -> FileCheck:
    """Every document of a (possibly multi-document) YAML file, each checked on its own."""
    check = FileCheck(path)
    docs = _documents(path, check)
    for number, doc in docs:
        try:
            check.jobs.append(parse_job(doc, _source(path, number, len(docs) > 1)))
        except ManifestError as exc:
            check.errors.append(exc)
    return check


def load_manifests(path: Path) -> list[AnyJob]:
    """All jobs of a (possibly multi-document) YAML file; the first bad document raises."""
    check = check_manifests(path)
    if check.errors:
        raise check.errors[0]
    return check.jobs


def load_manifest(path: Path) -> AnyJob:
    """The single job of a YAML file (multi-document files must hold exactly one job)."""
    jobs = load_manifests(path)
    if len(jobs) != 1:
        raise ManifestError(str(path), [f"(root): expected one job, found {len(jobs)}"])
    return jobs[0]
