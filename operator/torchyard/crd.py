"""Generate structural CustomResourceDefinitions from the pydantic models.

Kubernetes wants a *structural* OpenAPI v3 schema: every node typed, no ``$ref``, no
``nullable``-by-``anyOf``, unknown-field pruning stated with ``x-kubernetes-*`` extensions.
Pydantic emits JSON Schema 2020-12 with ``$defs``; this module rewrites that into the form the
API server accepts. ``crds/`` holds the output and a unit test fails when it drifts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from torchyard.api import CompressionJob, TrainingJob
from torchyard.api.base import KubeModel
from torchyard.api.constants import (
    COMPRESSION_JOB_KIND,
    COMPRESSION_JOB_PLURAL,
    DNS_1035_LABEL,
    GROUP,
    MAX_JOB_NAME_LENGTH,
    TRAINING_JOB_KIND,
    TRAINING_JOB_PLURAL,
    VERSION,
)
from torchyard.api.modelversion import MODEL_VERSION_KIND, MODEL_VERSION_PLURAL, ModelVersion

Schema = dict[str, Any]

# `kubectl get <short name>`: built-in short names always win over a CRD's (`cj` is CronJob's,
# so a `cj` of ours could never be reached), and a name another operator of the same cluster
# also claims makes kubectl pick one of the two. Checked against, and found in none of:
# Kubernetes 1.37's built-in resources (`kubectl api-resources`: short names, plurals,
# singulars), Kueue (cq, lq, queue(s), rf, flavor(s), kwl, wl...), Volcano (vcjob, vj, vcj,
# pg, q, jf, jt, hn, numatopo...), Kubeflow (TFJob, PyTorchJob, MPIJob, JAXJob, TrainJob,
# (Cluster)TrainingRuntime), Argo (Workflows: wf, cwf, wftmpl, cwftmpl...;
# CD: app, appset, appproj; Rollouts: ro, at, ar, exp; Events: es, sn, eb) and KubeRay
# (RayCluster, RayJob, RayService). tests/unit/test_short_names.py holds that list and the
# cluster tier compares it with the live API server's.
SHORT_NAMES: dict[str, list[str]] = {
    TRAINING_JOB_KIND: ["tj"],
    COMPRESSION_JOB_KIND: ["compj"],
    # `mv` reads as the shell's mv and KubeDL's ModelVersion CRD may claim it: `tymv` is ours.
    MODEL_VERSION_KIND: ["tymv"],
}

# JSON Schema keywords Kubernetes' structural schemas do not take (or we do not want).
_DROPPED_KEYS = {"title", "$defs", "additionalProperties"}


class StructuralError(ValueError):
    """A model produced a schema form Kubernetes would reject."""


def _is_null(node: Schema) -> bool:
    return node == {"type": "null"}


def structural(node: Schema, defs: dict[str, Schema], path: str = "") -> Schema:
    """Rewrite one pydantic JSON-schema node (and its children) into structural form."""
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        # Field-level keys (description, default) win over the referenced model's.
        node = {**target, **node}
    if "allOf" in node and len(node["allOf"]) == 1:
        node = {**structural(node.pop("allOf")[0], defs, path), **node}
    if "anyOf" in node:
        variants = [v for v in node.pop("anyOf") if not _is_null(v)]
        types = {v.get("type") for v in variants}
        if len(variants) == 1:
            node = {**structural(variants[0], defs, path), **node}
        elif types == {"integer", "string"}:
            node["x-kubernetes-int-or-string"] = True
            # Keep the string form's constraints (e.g. the Quantity grammar) the way
            # controller-gen does: they apply to string values only.
            node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
            for v in variants:
                if v.get("type") == "string":
                    for k in ("pattern", "maxLength"):
                        if k in v:
                            node[k] = v[k]
        else:
            raise StructuralError(f"{path or '(root)'}: union {types} has no structural form")
    if node.get("default", 0) is None:
        del node["default"]

    out: Schema = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS:
            continue
        if key == "const":
            out["enum"] = [value]
        elif key == "properties":
            out["properties"] = {
                name: structural(child, defs, f"{path}.{name}") for name, child in value.items()
            }
        elif key == "items":
            out["items"] = structural(value, defs, f"{path}[]")
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            # JSON Schema 2020-12 puts the bound in the keyword; OpenAPI v3.0 (what the
            # API server takes) wants minimum/maximum plus a boolean.
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "description":
            # Docstrings wrap lines; `kubectl explain` re-wraps, so keep one paragraph.
            out["description"] = " ".join(str(value).split())
        else:
            out[key] = value

    extra = node.get("additionalProperties")
    if out.get("type") == "object" and "properties" not in out:
        if isinstance(extra, dict) and extra:
            out["additionalProperties"] = structural(extra, defs, f"{path}.*")
        else:
            # dict[str, Any]: free-form object kept as written.
            out["x-kubernetes-preserve-unknown-fields"] = True
    if out.get("type") == "object" and "properties" in out and extra is True:
        # A model with extra="allow" (a core/v1 object typed only where a rule reads it):
        # its other fields are kept as written, for the API server to judge in the pod.
        out["x-kubernetes-preserve-unknown-fields"] = True
    if "type" not in out and not out.get("x-kubernetes-int-or-string"):
        if set(out) - {"description", "default"}:
            raise StructuralError(f"{path or '(root)'}: untyped schema {sorted(out)}")
        out["x-kubernetes-preserve-unknown-fields"] = True
        out["type"] = "object"
    return out


def _model_schema(model: type[KubeModel]) -> Schema:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return structural(raw, raw.get("$defs", {}))


MODEL_VERSION_COLUMNS: list[tuple[str, str, str]] = [
    # (column, type, jsonPath): shared with `torchyard models`, which prints the same table.
    ("Model", "string", ".spec.model"),
    ("Version", "integer", ".spec.version"),
    ("Aliases", "string", ".spec.aliases"),
    ("Format", "string", ".spec.artifact.formats"),
    ("Source", "string", ".spec.origin.source"),
    ("Parent", "string", ".spec.origin.parent"),
    ("Accuracy", "number", ".spec.metrics.accuracy"),
    ("Size", "integer", ".spec.artifact.bytes"),
    ("Ready", "string", ".status.phase"),
]


def _printer_columns(kind: str) -> list[dict[str, Any]]:
    phase = {"name": "Phase", "type": "string", "jsonPath": ".status.phase"}
    age = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
    if kind == MODEL_VERSION_KIND:
        cols = [{"name": n, "type": t, "jsonPath": p} for n, t, p in MODEL_VERSION_COLUMNS]
        return [*cols, age]
    if kind == TRAINING_JOB_KIND:
        return [
            phase,
            {"name": "Strategy", "type": "string", "jsonPath": ".spec.strategy"},
            {"name": "Workers", "type": "integer", "jsonPath": ".spec.workers"},
            {"name": "Epoch", "type": "integer", "jsonPath": ".status.progress.epoch"},
            {"name": "Step", "type": "integer", "jsonPath": ".status.progress.step"},
            {"name": "Progress", "type": "number", "jsonPath": ".status.progress.percent"},
            {"name": "ETA-Seconds", "type": "integer", "jsonPath": ".status.progress.etaSeconds"},
            {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss"},
            {"name": "Accuracy", "type": "number", "jsonPath": ".status.progress.accuracy"},
            {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts", "priority": 1},
            {
                "name": "Samples/s",
                "type": "number",
                "jsonPath": ".status.progress.samplesPerSecond",
                "priority": 1,
            },
            {
                "name": "Updated",
                "type": "date",
                "jsonPath": ".status.progress.lastUpdateTime",
                "priority": 1,
            },
            {"name": "Model", "type": "string", "jsonPath": ".status.model.uri", "priority": 1},
            age,
        ]
    return [
        phase,
        {"name": "Source", "type": "string", "jsonPath": ".spec.source.trainingJobRef"},
        {"name": "Size-Ratio", "type": "number", "jsonPath": ".status.report.ratios.size"},
        {"name": "Speedup", "type": "number", "jsonPath": ".status.report.ratios.speedup"},
        {"name": "Acc-Delta", "type": "number", "jsonPath": ".status.report.accuracyDelta"},
        {"name": "Passed", "type": "boolean", "jsonPath": ".status.report.passed"},
        {"name": "Model", "type": "string", "jsonPath": ".status.model.uri", "priority": 1},
        age,
    ]


_KINDS: dict[type[KubeModel], tuple[str, str]] = {
    TrainingJob: (TRAINING_JOB_KIND, TRAINING_JOB_PLURAL),
    CompressionJob: (COMPRESSION_JOB_KIND, COMPRESSION_JOB_PLURAL),
    ModelVersion: (MODEL_VERSION_KIND, MODEL_VERSION_PLURAL),
}


def build_crd(
    model: type[TrainingJob] | type[CompressionJob] | type[ModelVersion],
) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind."""
    kind, plural = _KINDS[model]
    short = SHORT_NAMES[kind]
    root = _model_schema(model)
    props = root["properties"]
    props["metadata"] = {
        "type": "object",
        "properties": {
            "name": {
                "type": "string",
                "maxLength": MAX_JOB_NAME_LENGTH,
                "pattern": DNS_1035_LABEL,
                "description": "Job name: a DNS-1035 label of at most 52 characters "
                "(it names the Service and the pods).",
            }
        },
    }
    if model is ModelVersion:
        # <model>-v<N>: a DNS-1035 model name of <= 63 plus the version suffix.
        props["metadata"]["properties"]["name"] = {
            "type": "string",
            "maxLength": 253,
            "pattern": DNS_1035_LABEL,
            "description": "<spec.model>-v<spec.version>.",
        }
    for key in ("apiVersion", "kind"):
        props[key] = {"type": "string", "description": props[key].get("description", "")}
        props[key].pop("default", None)
    root["required"] = ["spec"]
    subresources: dict[str, Any] = {"status": {}}
    if model is TrainingJob:
        subresources["scale"] = {
            "specReplicasPath": ".spec.workers",
            "statusReplicasPath": ".status.workers.active",
            "labelSelectorPath": ".status.selector",
        }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {
                "app.kubernetes.io/name": "torchyard",
                "app.kubernetes.io/part-of": "torchyard",
            },
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": list(short),
                "categories": ["torchyard", "all"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": subresources,
                    "additionalPrinterColumns": _printer_columns(kind),
                }
            ],
        },
    }


def all_crds() -> dict[str, dict[str, Any]]:
    """File name -> CRD, for every kind."""
    return {
        f"{GROUP}_{TRAINING_JOB_PLURAL}.yaml": build_crd(TrainingJob),
        f"{GROUP}_{COMPRESSION_JOB_PLURAL}.yaml": build_crd(CompressionJob),
        f"{GROUP}_{MODEL_VERSION_PLURAL}.yaml": build_crd(ModelVersion),
    }


class _NoAliasDumper(yaml.SafeDumper):
    """Repeated sub-schemas are written out in full: YAML anchors confuse readers and tools."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


HEADER = (
    "# Generated by `torchyard crds --output-dir crds/` from operator/torchyard/api. Do not edit.\n"
)


def render(crd: dict[str, Any]) -> str:
    body = yaml.dump(crd, Dumper=_NoAliasDumper, sort_keys=False, width=100, allow_unicode=True)
    return HEADER + body


def write_crds(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, crd in all_crds().items():
        path = directory / name
        path.write_text(render(crd))
        written.append(path)
    return written


def _doc_rows(node: Schema, path: str, rows: list[tuple[str, str, str, str]]) -> None:
    for name, child in node.get("properties", {}).items():
        child_path = f"{path}.{name}" if path else name
        kind = child.get("type", "int-or-string")
        if "enum" in child:
            kind = " \\| ".join(f"`{v}`" for v in child["enum"])
        elif kind == "array" and "type" in child.get("items", {}):
            kind = f"[]{child['items']['type']}"
        default = child.get("default")
        flow = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip()
        shown = "" if default is None else f"`{flow}`"
        rows.append((child_path, kind, shown, child.get("description", "")))
        _doc_rows(child, child_path, rows)
        if child.get("type") == "array":
            _doc_rows(child.get("items", {}), f"{child_path}[]", rows)


def _rule_lines(node: Schema, path: str) -> list[str]:
    lines = [
        f"- `{path}{rule.get('fieldPath', '')}`: {rule['message']}"
        for rule in node.get("x-kubernetes-validations", [])
    ]
    for name, child in node.get("properties", {}).items():
        lines += _rule_lines(child, f"{path}.{name}" if path else name)
    if "items" in node:
        lines += _rule_lines(node["items"], f"{path}[]")
    return lines


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_api_docs() -> str:
    """docs/api.md: every spec field with its type, default and description, and every rule."""
    out = [
        "# API reference (torchyard.io/v1alpha1)",
        "",
        "Generated from the pydantic models by `make docs` (the same source as `crds/`); "
        "a unit test fails when it drifts. `kubectl explain trainingjob.spec` shows the same "
        "descriptions.",
    ]
    for crd in all_crds().values():
        (version,) = crd["spec"]["versions"]
        schema = version["schema"]["openAPIV3Schema"]
        kind = crd["spec"]["names"]["kind"]
        short = crd["spec"]["names"]["shortNames"][0]
        out += ["", f"## {kind} (`{short}`)", "", schema.get("description", ""), ""]
        rows: list[tuple[str, str, str, str]] = []
        _doc_rows(schema["properties"]["spec"], "spec", rows)
        out += ["| field | type | default | description |", "|---|---|---|---|"]
        out += [f"| `{p}` | {t} | {d} | {_cell(desc)} |" for p, t, d, desc in rows]
        out += ["", f"### {kind} validation rules (CEL, also checked by `torchyard validate`)", ""]
        out += _rule_lines(schema, "")
    return "\n".join(out) + "\n"
