"""Model versions and the result file.

A model version is a directory ``<store>/<modelName>/v<N>/`` holding

* ``model.safetensors`` — the weights (full model, parameter FQNs as keys);
* ``model-card.json``   — name, version, spec hash, model spec, data, metrics, lineage, torch
  version, sha256 of the weights;
* for a Hugging Face model, its tokenizer files (and config.json where the weights are in the
  transformers layout: ``compress/stored.py``).

It is written into a temporary directory beside the versions and renamed to ``v<N>``; a rename
onto an existing (non-empty) version fails, so concurrent writers each get their own N
(mkdir-race-safe without locks).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from torchyard_trainer import __version__
from torchyard_trainer.env import ConfigError
from torchyard_trainer.result import write_result as write_result  # torch-free: report/ too
from torchyard_trainer.storage import (
    fsync_dir,
    fsync_tree,
    is_remote,
    local_path,
    upload_dir,
)

VERSION_DIR = re.compile(r"^v(\d+)$")
WEIGHTS = "model.safetensors"
CARD = "model-card.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def spec_hash(spec: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a job spec (lineage: same hash = same recipe)."""
    return hashlib.sha256(
        json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(m.group(1)) for p in model_dir.iterdir() if (m := VERSION_DIR.match(p.name)))


def write_model_version(
    store_uri: str,
    pvc_root: Path,
    name: str,
    state_dict: dict[str, torch.Tensor],
    card: dict[str, Any],
    staging_dir: Path,
    extra_files: Callable[[Path], None] | None = None,
) -> dict[str, Any]:
    """Write weights + card as the next version of ``name``; returns the card (with uri).
    ``extra_files(directory)`` adds files beside them (a Hugging Face model's tokenizer and
    config) before the version appears."""
    remote = is_remote(store_uri)
    root = staging_dir / "model-store" if remote else local_path(store_uri, pvc_root)
    model_dir = root / name
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=model_dir))
    try:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
        if extra_files is not None:
            extra_files(tmp)
        digest = sha256_file(tmp / WEIGHTS)
        card = {
            **card,
            "name": name,
            "sha256": digest,
            "bytes": (tmp / WEIGHTS).stat().st_size,
            "parameters": int(sum(t.numel() for t in tensors.values())),
            "torch": torch.__version__,
            "trainer": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        version = (versions(model_dir) or [0])[-1] + 1
        while True:
            card["version"] = version
            card["uri"] = f"{store_uri.rstrip('/')}/{name}/v{version}"
            (tmp / CARD).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
            fsync_tree(tmp)
            try:
                os.rename(tmp, model_dir / f"v{version}")
                break
            except OSError:  # another writer took this number
                version += 1
        fsync_dir(model_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if remote:
        upload_dir(model_dir / f"v{card['version']}", card["uri"])
    return card


def resolve_version_dir(store: Path, name: str, version: int | None) -> Path:
    have = versions(store / name)
    if not have:
        raise ConfigError(f"no model versions of {name!r} under {store}")
    v = version if version is not None else have[-1]
    if v not in have:
        raise ConfigError(f"model {name!r} has no version {v} under {store} (have {have})")
    return store / name / f"v{v}"


def find_by_job(store: Path, job: str) -> Path | None:
    """The newest model version (by creation time, then version number) whose lineage says
    TrainingJob ``job`` produced it, under any model name of ``store``; None when there is none
    (or no store yet). Hidden entries, unreadable cards and versions made by other kinds of job
    of the same name (a CompressionJob's output) are skipped."""
    best: tuple[str, int, Path] | None = None
    if not store.is_dir():
        return None
    for model_dir in store.iterdir():
        if not model_dir.is_dir() or model_dir.name.startswith("."):
            continue
        for v in versions(model_dir):
            vdir = model_dir / f"v{v}"
            try:
                card = read_card(vdir)
            except (OSError, ValueError):
                continue
            lineage = card.get("lineage") or {}
            if lineage.get("job") == job and lineage.get("kind", "TrainingJob") == "TrainingJob":
                key = (str(card.get("created", "")), v, vdir)
                if best is None or key[:2] > best[:2]:
                    best = key
    return None if best is None else best[2]


def read_card(version_dir: Path) -> dict[str, Any]:
    return dict(json.loads((version_dir / CARD).read_text()))


def load_weights(path: Path, model: torch.nn.Module) -> None:
    """Load weights from a model version directory, a .safetensors file or a DCP checkpoint."""
    from torchyard_trainer.checkpoint import load_model_weights

    if path.is_dir() and (path / WEIGHTS).is_file():
        path = path / WEIGHTS
    if path.is_file():
        sd = load_file(str(path))
        model.load_state_dict(sd)
    elif path.is_dir() and (path / ".metadata").is_file():
        load_model_weights(path, model)
    else:
        raise ConfigError(f"{path}: not a model version, safetensors file or DCP checkpoint")
