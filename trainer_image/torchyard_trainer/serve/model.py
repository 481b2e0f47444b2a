"""A model version loaded for serving: the network as the compression code saved it, put in its
CPU serving form, with its v2 metadata (one input, one output) and what kind of version it is.

Plain and compressed versions load through :func:`torchyard_trainer.compress.stored.load_version`
— the same code that verifies a CompressionJob's report — so a served int8 or structurally
pruned model is the saved one. Its quantized layers are then swapped for their torch.ao backend
modules (:func:`torchyard_trainer.compress.layers.serving_copy`), the path the compression
benchmarks time. Rebuilding a non-Hugging-Face network needs the input shape and class count
(``DataInfo``), which the card records as the data spec: a built-in source is generated here, a
``uri`` source must be readable from the serving pod (the same store volume, usually).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchyard_trainer.artifacts import CARD, WEIGHTS, read_card, sha256_file
from torchyard_trainer.data import DataInfo
from torchyard_trainer.env import ConfigError
from torchyard_trainer.serve.protocol import TensorSpec

log = logging.getLogger("torchyard_trainer.serve")

INPUT = "input"
OUTPUT = "output"
PLATFORM = "torchyard_pytorch"
"""The ``platform`` of the model metadata (the v2 protocol leaves its values to the server)."""


@dataclass
class ServedModel:
    """A loaded version and what the server says about it."""

    name: str
    version: str
    model: nn.Module
    card: dict[str, Any]
    input: TensorSpec
    output: TensorSpec
    variant: str
    """fp32, int8, pruned, structured, distilled or a '+' chain of them (:func:`variant_of`)."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = self.model(torch.from_numpy(np.ascontiguousarray(x)))
        return np.asarray(out.float().numpy())


def variant_of(card: dict[str, Any]) -> str:
    """What was done to a version, from its card's lineage steps: ``fp32`` for a trained one."""
    if not card.get("compression"):
        return "fp32"
    names: list[str] = []
    for step in (card.get("lineage") or {}).get("steps") or []:
        if "quantize" in step:
            method = str(step["quantize"].get("method", ""))
            names.append({"dynamicInt8": "int8", "staticInt8": "int8", "qat": "int8",
                          "weightOnlyInt4": "int4", "binarize": "binary"}.get(method, method))
        elif "prune" in step:
            structured = step["prune"].get("method") == "structured"
            names.append("structured" if structured else "pruned")
        elif "distill" in step:
            names.append("distilled")
    return "+".join(names) or "compressed"


def data_info(card: dict[str, Any], pvc_root: Path) -> DataInfo:
    """The ``DataInfo`` the network was built with, from the card's data spec."""
    from torchyard.api.common import DataSpec
    from torchyard_trainer.data import load_dataset

    known = {f.alias or n for n, f in DataSpec.model_fields.items()} | set(DataSpec.model_fields)
    data = {k: v for k, v in (card.get("data") or {}).items() if k in known}
    if not data:
        raise ConfigError(f"{CARD}: has no data spec to size the network from")
    with tempfile.TemporaryDirectory(prefix="torchyard-serve-") as cache:
        return load_dataset(DataSpec.model_validate(data), 0, pvc_root, Path(cache)).info


def _io(card: dict[str, Any], model: nn.Module, info: DataInfo | None, rows: int
        ) -> tuple[TensorSpec, TensorSpec]:
    """The input and output specs, the output's shape from one forward pass of a sample."""
    if info is None:  # Hugging Face: (N, rows, L) int64: ids, mask[, token types]
        length = int(((card.get("data") or {}).get("maxLength")) or 16)
        sample = torch.ones((1, rows, length), dtype=torch.int64)
        spec = TensorSpec(INPUT, "INT64", (-1, rows, -1))
    elif info.task == "lm":
        sample = torch.zeros((1, *info.input_shape), dtype=torch.int64)
        spec = TensorSpec(INPUT, "INT64", (-1, *info.input_shape))
    else:
        sample = torch.zeros((1, *info.input_shape), dtype=torch.float32)
        spec = TensorSpec(INPUT, "FP32", (-1, *info.input_shape))
    with torch.inference_mode():
        out = model(sample)
    return spec, TensorSpec(OUTPUT, "FP32", (-1, *out.shape[1:]))


def load(version_dir: Path, pvc_root: Path, name: str | None = None,
         verify: bool = True) -> ServedModel:
    """Load ``version_dir`` for serving; with ``verify`` its weights must match the card's
    sha256 (a half-copied or replaced file is refused, not served)."""
    from torchyard_trainer.compress.layers import serving_copy
    from torchyard_trainer.compress.stored import load_version

    if not (version_dir / CARD).is_file() or not (version_dir / WEIGHTS).is_file():
        raise ConfigError(f"{version_dir}: not a model version (needs {WEIGHTS} and {CARD})")
    card = read_card(version_dir)
    if verify and card.get("sha256") and sha256_file(version_dir / WEIGHTS) != card["sha256"]:
        raise ConfigError(f"{version_dir / WEIGHTS}: sha256 differs from the card's "
                          f"{card['sha256']}: the version is damaged or was replaced")
    hf = "huggingface" in (card.get("compression") or {}) or "huggingface" in (
        card.get("model") or {})
    info = None if hf else data_info(card, pvc_root)
    rows = 0
    model: nn.Module
    if hf:
        from torchyard_trainer.compress.stored import load_hf_version

        model, tokenizer = load_hf_version(version_dir)
        rows = 3 if "token_type_ids" in tokenizer.model_input_names else 2
    else:
        assert info is not None
        model = load_version(version_dir, info)[0]
    model = serving_copy(model.eval())
    spec_in, spec_out = _io(card, model, info, rows)
    served = ServedModel(
        name=name or str(card.get("name") or version_dir.parent.name),
        version=str(card.get("version") or version_dir.name.removeprefix("v")),
        model=model, card=card, input=spec_in, output=spec_out, variant=variant_of(card),
    )
    log.info("loaded %s v%s (%s) from %s: input %s %s, output %s", served.name, served.version,
             served.variant, version_dir, spec_in.datatype, list(spec_in.shape),
             list(spec_out.shape))
    return served
