"""`torchyard convert`: Kubeflow PyTorchJob (kubeflow.org/v1) and TrainJob
(trainer.kubeflow.org/v1alpha1, torch runtimes) manifests as TrainingJobs.

Pure functions: YAML text in, TrainingJob dicts and notes out (what was dropped or changed, and
why). Every result is validated with the API models before it is returned, so what `convert`
prints passes `torchyard validate`. docs/from-kubeflow.md has the field mapping.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from torchyard.api import ManifestError, parse_job
from torchyard.convert import pytorchjob, trainjob
from torchyard.convert.notes import ConvertError, Note, Notes

Converter = Callable[[dict[str, Any], Notes, list[str] | None], dict[str, Any]]
CONVERTERS: dict[tuple[str, str], Converter] = {
    (pytorchjob.API_VERSION, pytorchjob.KIND): pytorchjob.convert,
    (trainjob.API_VERSION, trainjob.KIND): trainjob.convert,
}


@dataclass(frozen=True)
class Conversion:
    """One converted document: the TrainingJob and what did not carry over as it was."""

    source: str
    """The source kind and name, e.g. ``PyTorchJob pytorch-simple``."""
    manifest: dict[str, Any]
    notes: list[Note] = field(default_factory=list)


def convert_document(doc: Any, entrypoint: list[str] | None = None) -> Conversion:
    """One decoded Kubeflow manifest as a validated TrainingJob."""
    if not isinstance(doc, dict):
        raise ConvertError("(root): a manifest must be a mapping")
    key = (str(doc.get("apiVersion")), str(doc.get("kind")))
    converter = CONVERTERS.get(key)
    if converter is None:
        known = ", ".join(f"{kind} ({version})" for version, kind in CONVERTERS)
        raise ConvertError(f"{key[1]} ({key[0]}) is not convertible: only {known}")
    notes = Notes()
    try:
        manifest = converter(doc, notes, entrypoint)
    except ConvertError:
        raise
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        # A field of the wrong shape (a string where a mapping belongs, replicas: "two"):
        # Kubeflow's API server would have refused it too; one line, no traceback.
        raise ConvertError(f"malformed {key[1]}: {type(exc).__name__}: {exc}") from None
    try:
        parse_job(manifest, "converted")
    except ManifestError as exc:  # a value the API refuses: say which, on one line
        raise ConvertError(
            "the result is not a valid TrainingJob: " + "; ".join(exc.errors)
        ) from None
    name = (doc.get("metadata") or {}).get("name")
    return Conversion(f"{key[1]} {name}", manifest, notes.items)


def convert_text(text: str, entrypoint: list[str] | None = None) -> list[Conversion]:
    """Every non-empty document of a (multi-document) YAML text; errors name the document."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise ConvertError(f"not valid YAML: {' '.join(str(exc).split())}") from None
    if not docs:
        raise ConvertError("no manifest in the input")
    out = []
    for number, doc in enumerate(docs, start=1):
        try:
            out.append(convert_document(doc, entrypoint))
        except ConvertError as exc:
            where = f"document {number}: " if len(docs) > 1 else ""
            raise ConvertError(f"{where}{exc}") from None
    return out


class _Dumper(yaml.SafeDumper):
    """Block style (``|``) for multi-line strings: an inline script stays readable."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render(conversions: list[Conversion]) -> str:
    """The TrainingJobs as one multi-document YAML text, in input order."""
    return "---\n".join(
        yaml.dump(c.manifest, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
        for c in conversions
    )


__all__ = ["Conversion", "ConvertError", "Note", "convert_document", "convert_text", "render"]
