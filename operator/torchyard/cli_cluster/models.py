"""`torchyard models` and `torchyard promote`: model versions, on a cluster or in a local store.

``models`` prints the table ``kubectl get modelversions`` prints (the CRD's printer columns,
:data:`torchyard.crd.MODEL_VERSION_COLUMNS`): from the cluster's ModelVersions, or with
``--store`` from the model cards of a local store (``torchyard run`` writes
``./torchyard-runs/models``), built into the same objects the operator makes.

``promote <model>@<alias> <version>`` adds the alias to that version; the operator takes it off
the version that held it (newest assignment wins, docs/models.md) and records the move in
Events. The command waits for that and names the previous holder.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from torchyard.api.constants import GROUP, VERSION
from torchyard.api.modelversion import (
    MODEL_LABEL,
    MODEL_VERSION_PLURAL,
    parse_version_ref,
    version_name,
)
from torchyard.cli_cluster.kube import (
    ContextOpt,
    KubeconfigOpt,
    NamespaceOpt,
    connect,
    err_usage,
    fail,
    one_line_errors,
)
from torchyard.crd import MODEL_VERSION_COLUMNS
from torchyard.state.modelversion import artifact_phase, version_from_card

out = Console(highlight=False, soft_wrap=True)
LOCAL_STORE = Path("torchyard-runs/models")
PROMOTE_WAIT_SECONDS = 30.0


def _path(body: Any, json_path: str) -> Any:
    for part in json_path.strip(".").split("."):
        body = body.get(part) if isinstance(body, dict) else None
    return body


def _cell(value: Any) -> str:
    if value is None:
        return ""  # kubectl prints a missing value as an empty cell
    if isinstance(value, list):  # kubectl: JSON, an empty list as an empty cell
        return json.dumps(value, separators=(",", ":")) if value else ""
    return str(value)


def table(versions: list[dict[str, Any]]) -> str:
    """NAME and the printer columns (AGE as the creation time), kubectl's layout."""
    head = ["NAME", *(name.upper() for name, _, _ in MODEL_VERSION_COLUMNS), "CREATED"]
    rows = [head]
    for v in sorted(versions, key=lambda v: (v["spec"]["model"], v["spec"]["version"])):
        cells = [_cell(_path(v, p)) for _, _, p in MODEL_VERSION_COLUMNS]
        created = _cell((v.get("metadata") or {}).get("creationTimestamp"))
        rows.append([str(v["metadata"]["name"]), *cells, created])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)  # fmt: skip


def local_versions(store: Path) -> list[dict[str, Any]]:
    """The versions of a local store, from their model cards (hidden entries skipped)."""
    found = []
    for card in sorted(store.glob("*/v*/model-card.json")):
        if card.parent.parent.name.startswith(".") or not card.parent.name[1:].isdigit():
            continue
        try:
            body = version_from_card(json.loads(card.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        weights = card.parent / "model.safetensors"
        digest = _sha256(weights) if weights.is_file() else None
        phase, message = artifact_phase(
            digest is not None, digest, body["spec"]["artifact"].get("sha256")
        )
        body["status"] = {"phase": phase, "message": message}
        found.append(body)
    return found


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def models(
    model: Annotated[str | None, typer.Argument(help="Only this model's versions.")] = None,
    store: Annotated[
        Path | None,
        typer.Option(
            "--store", help="A local model store (torchyard run: ./torchyard-runs/models)."
        ),
    ] = None,
    local: Annotated[
        bool, typer.Option("--local", help="The local store of `torchyard run` in this folder.")
    ] = False,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """List model versions like `kubectl get modelversions` (or those of a local store)."""
    if store is not None or local:
        versions = local_versions(store or LOCAL_STORE)
    else:
        kube = connect(kubeconfig, context, namespace)
        selector = f"{MODEL_LABEL}={model}" if model else None
        got = kube.custom.list_namespaced_custom_object(
            GROUP, VERSION, kube.namespace, MODEL_VERSION_PLURAL, label_selector=selector
        )
        versions = list(got.get("items") or [])
    versions = [v for v in versions if model is None or v["spec"]["model"] == model]
    if not versions:
        out.print("No model versions found.", markup=False)
        return
    out.print(table(versions), markup=False)


def _target(model: str, version: str) -> str:
    """`3`, `v3`, `<model>/v3` or `<model>-v3` -> the ModelVersion's name."""
    text = version.removeprefix(f"{model}/").removeprefix(f"{model}-").removeprefix("v")
    if not text.isdigit() or int(text) < 1:
        err_usage(f"version {version!r}: expected N, vN, {model}/vN or {model}-vN")
    return version_name(model, int(text))


def promote(
    ref: Annotated[str, typer.Argument(help="<model>@<alias>, e.g. digits-mlp@production.")],
    version: Annotated[str, typer.Argument(help="The version to get it: N or vN.")],
    wait: Annotated[
        bool, typer.Option(help="Wait until the operator took the alias off the old holder.")
    ] = True,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Give a model version an alias; the version that held it loses it."""
    try:
        model, alias, _ = parse_version_ref(ref)
    except ValueError as exc:
        err_usage(str(exc))
    if alias is None:
        err_usage(f"{ref!r}: expected <model>@<alias>")
    name = _target(model, version)
    kube = connect(kubeconfig, context, namespace)
    api, ns = kube.custom, kube.namespace

    def others() -> list[str]:
        got = api.list_namespaced_custom_object(
            GROUP, VERSION, ns, MODEL_VERSION_PLURAL, label_selector=f"{MODEL_LABEL}={model}"
        )
        return [
            v["metadata"]["name"]
            for v in got.get("items") or []
            if alias in (v["spec"].get("aliases") or []) and v["metadata"]["name"] != name
        ]

    before = others()
    target = api.get_namespaced_custom_object(GROUP, VERSION, ns, MODEL_VERSION_PLURAL, name)
    aliases = list(target["spec"].get("aliases") or [])
    if alias not in aliases:
        # resourceVersion: a concurrent change of the aliases fails this (409), never lost.
        patch = {
            "metadata": {"resourceVersion": target["metadata"]["resourceVersion"]},
            "spec": {"aliases": [*aliases, alias]},
        }
        api.patch_namespaced_custom_object(GROUP, VERSION, ns, MODEL_VERSION_PLURAL, name, patch)
    deadline = time.monotonic() + PROMOTE_WAIT_SECONDS
    while wait and others() and time.monotonic() < deadline:
        time.sleep(0.5)
    left = others() if wait else []
    if left:
        fail(f"{name} has {alias}, but {', '.join(left)} still holds it: is the operator running?")
    was = f" (was {', '.join(before)})" if before else ""
    out.print(f"{model}@{alias} -> {name}{was}", markup=False)


def register(app: typer.Typer) -> None:
    """Add `models` and `promote` to the `torchyard` CLI."""
    for command in (models, promote):
        app.command(command.__name__)(one_line_errors(command))


__all__ = ["local_versions", "models", "promote", "register", "table"]
