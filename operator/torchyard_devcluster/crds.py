"""Install CustomResourceDefinitions from YAML files and wait until they are Established."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml


def load_crds(paths: Iterable[Path]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted(paths):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                out.append(doc)
    return out


def _create_or_replace(ext: Any, name: str, doc: dict[str, Any], attempts: int = 5) -> None:
    """Create the CRD, or replace the live one at its current resourceVersion; a 409 on the
    replace means someone else (another test session on the same dev cluster) changed it in
    between: read it again and retry."""
    from kubernetes import client

    try:
        ext.create_custom_resource_definition(doc)
        return
    except client.ApiException as e:
        if getattr(e, "status", None) != 409:
            raise
    for attempt in range(attempts):
        live = ext.read_custom_resource_definition(name)
        new = {**doc, "metadata": {**doc["metadata"]}}
        new["metadata"]["resourceVersion"] = live.metadata.resource_version
        try:
            ext.replace_custom_resource_definition(name, new)
            return
        except client.ApiException as e:
            if getattr(e, "status", None) != 409 or attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def apply_crds(api_client: Any, crd_dir: Path, *, timeout: float = 60.0) -> list[str]:
    """Create or replace every CRD in ``crd_dir/*.yaml``; return their names once Established."""
    from kubernetes import client

    ext: Any = client.ApiextensionsV1Api(api_client)
    docs = load_crds([*crd_dir.glob("*.yaml"), *crd_dir.glob("*.yml")])
    names: list[str] = []
    for doc in docs:
        name = str(doc["metadata"]["name"])
        names.append(name)
        _create_or_replace(ext, name, doc)
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending:
        for name in list(pending):
            crd = ext.read_custom_resource_definition(name)
            conds = (crd.status.conditions if crd.status else None) or []
            if any(c.type == "Established" and c.status == "True" for c in conds):
                pending.discard(name)
        if not pending:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"CRDs not Established after {timeout:.0f}s: {sorted(pending)}")
        time.sleep(0.2)
    return names
