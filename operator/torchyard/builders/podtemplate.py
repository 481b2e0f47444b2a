"""Merge a job's ``spec.podTemplate`` into the worker pod template the operator built.

Strategic-merge-like, as ``kubectl patch`` has it for core/v1 pods: lists of named things are
merged item by item on their key (containers, initContainers, volumes, imagePullSecrets and env
by ``name``, volumeMounts by ``mountPath``, ports by ``containerPort``), tolerations and envFrom
are appended, maps are merged key by key, and anything else in the override replaces the
built value. The API rejects overrides of the fields the operator owns
(:mod:`torchyard.api.podtemplate`); :func:`owned_field_changes` checks the merged result
again, so that a rule missing there can never quietly break the worker contract here.

Pure: dicts in, dicts out.
"""

from __future__ import annotations

import copy
from typing import Any

from torchyard.api.contract import RESERVED_ENV_NAMES, RESERVED_ENV_PREFIXES, WORKER_CONTAINER
from torchyard.api.podtemplate import OWNED_POD_FIELDS, OWNED_WORKER_FIELDS

Obj = dict[str, Any]

MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "imagePullSecrets": "name",
    "env": "name",
    "resourceClaims": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "ports": "containerPort",
    "hostAliases": "ip",
}
"""List fields merged item by item, and the key that identifies an item."""
APPENDED = frozenset({"tolerations", "envFrom", "topologySpreadConstraints"})
"""List fields whose override items are added after the built ones."""


class PodTemplateConflict(ValueError):
    """The merged pod changed a field the operator owns (the message names it)."""


def merge(base: Obj, override: Obj) -> Obj:
    """`base` with `override` merged in (neither is modified)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = _merge_value(key, out.get(key), value)
    return out


def _merge_value(key: str, base: Any, value: Any) -> Any:
    if isinstance(base, dict) and isinstance(value, dict):
        return merge(base, value)
    if isinstance(base, list) and isinstance(value, list):
        if key in MERGE_KEYS:
            return _merge_by(MERGE_KEYS[key], base, value)
        if key in APPENDED:
            return base + [copy.deepcopy(v) for v in value if v not in base]
    return copy.deepcopy(value)


def _merge_by(item_key: str, base: list[Any], override: list[Any]) -> list[Any]:
    """Items of `override` merged into the `base` item with the same key, new ones appended."""
    out = copy.deepcopy(base)
    where = {item.get(item_key): i for i, item in enumerate(out) if isinstance(item, dict)}
    for item in override:
        i = where.get(item.get(item_key)) if isinstance(item, dict) else None
        if i is None:
            out.append(copy.deepcopy(item))
        else:
            out[i] = merge(out[i], item)
    return out


def _worker(pod_spec: Obj) -> Obj:
    return next(
        (c for c in pod_spec.get("containers") or [] if c.get("name") == WORKER_CONTAINER), {}
    )


def _contract_env(name: str) -> bool:
    return name in RESERVED_ENV_NAMES or name.startswith(RESERVED_ENV_PREFIXES)


def owned_field_changes(built: Obj, merged: Obj) -> list[str]:
    """Paths of the operator-owned fields whose value `merged` changed from `built` (pod
    template specs): the pod fields, the worker's command/args/termination message/image and
    every variable of the worker contract (the job's own ``env`` the override may patch)."""
    changed = [f"podTemplate.spec.{f}" for f in OWNED_POD_FIELDS if built.get(f) != merged.get(f)]
    before, after = _worker(built), _worker(merged)
    worker = f"podTemplate.spec.containers[{WORKER_CONTAINER}]"
    changed += [f"{worker}.{f}" for f in OWNED_WORKER_FIELDS if before.get(f) != after.get(f)]
    env_after = {e.get("name"): e for e in after.get("env") or []}
    changed += [
        f"{worker}.env[{e['name']}]"
        for e in before.get("env") or []
        if _contract_env(e["name"]) and env_after.get(e["name"]) != e
    ]
    return changed


def apply_pod_template(template: Obj, override: Obj | None) -> Obj:
    """The worker Job's pod template (``{metadata, spec}``) with the job's override merged in.

    Raises :class:`PodTemplateConflict` naming every operator-owned field the override would
    change (the operator's labels and annotations are kept: they win over the override's).
    """
    if not override:
        return template
    merged = merge(template, override)
    meta, built_meta = merged.setdefault("metadata", {}), template.get("metadata") or {}
    for part in ("labels", "annotations"):
        # The operator's selectors and restart count are never the override's to change.
        meta[part] = {**(meta.get(part) or {}), **(built_meta.get(part) or {})}
    changed = owned_field_changes(template.get("spec") or {}, merged.get("spec") or {})
    if changed:
        raise PodTemplateConflict(
            "spec.podTemplate overrides fields the operator owns: " + ", ".join(changed)
        )
    return merged


__all__ = [
    "APPENDED",
    "MERGE_KEYS",
    "PodTemplateConflict",
    "apply_pod_template",
    "merge",
    "owned_field_changes",
]
