"""A compressed model as stored in a model version: the tensors to write (sparse-coded where
smaller) with the card's ``compression`` section, and the way back from a version directory to
a runnable model.

Hugging Face models (:class:`torchyard_trainer.hf.HFModel`) are stored in one of two layouts,
named by the section's ``huggingface.layout``:

* ``transformers`` — when nothing needs our layers (no quantized layer, the shapes the config
  implies, and bit-mask sparse coding would save under ``SPARSE_WORTH`` of the file):
  ``model.safetensors`` holds the transformers state dict and the directory gets
  ``config.json``, so ``AutoModel.from_pretrained(version_dir)`` reads it;
* ``torchyard`` — otherwise (int8/int4 layers, clearly sparse tensors, structurally pruned
  shapes): our tensors; the config sits in the card and :func:`load_hf_version` rebuilds it.

Both carry the tokenizer files (``AutoTokenizer.from_pretrained(version_dir)``), and
:func:`load_hf_version` reads both.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from torchyard_trainer.compress import layers
from torchyard_trainer.data import DataInfo
from torchyard_trainer.env import ConfigError
from torchyard_trainer.hf import HFModel, auto_class, conv1d_to_linear, load_tokenizer
from torchyard_trainer.models import build_model


def export_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors to write (sparse-coded where smaller) and the card's ``compression`` section."""
    if isinstance(model, HFModel):
        return _export_hf(model)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    encoded, sparse = layers.encode_state(state)
    section = {
        "format": 1,
        "moduleShapes": layers.module_shapes(model),
        "quantized": layers.quant_layout(model),
        "sparse": sparse,
        "tensorShapes": {k: list(v.shape) for k, v in state.items() if k in sparse},
    }
    return encoded, section


def rebuild(
    model_spec: dict[str, Any],
    info: DataInfo,
    section: dict[str, Any] | None,
    stored: dict[str, torch.Tensor],
) -> nn.Module:
    """Build the architecture, reshape/replace layers per ``section``, load ``stored``."""
    from torchyard.api.common import ModelSpec

    if section and "huggingface" in section:
        return rebuild_hf(section, stored)
    spec = ModelSpec.model_validate({k: v for k, v in model_spec.items() if k != "checkpoint"})
    model = build_model(spec, info)
    if not section:
        model.load_state_dict(stored)
        return model
    _reshape(model, section, str(spec))
    state = layers.decode_state(stored, section.get("sparse", []), section.get("tensorShapes", {}))
    model.load_state_dict(state, assign=True)
    return model.eval()


def _reshape(model: nn.Module, section: dict[str, Any], what: str) -> None:
    """Resize pruned layers and put the quantized ones in place, as ``section`` says."""
    shapes = section.get("moduleShapes", {})
    for fqn, shape in shapes.items():
        mod = layers.get_module(model, fqn)
        if isinstance(mod, layers.RESIZABLE) and list(mod.weight.shape) != list(shape):
            layers.set_module(model, fqn, layers.resize_module(mod, shape))
    for fqn, cfg in section.get("quantized", {}).items():
        mod = layers.get_module(model, fqn)
        if not isinstance(mod, nn.Linear):
            raise ConfigError(f"model version: quantized layer {fqn} is not a Linear in {what}")
        layers.set_module(model, fqn, layers.empty_quant_module(cfg, mod))


def load_version(vdir: Path, info: DataInfo) -> tuple[nn.Module, dict[str, Any]]:
    """A model version directory (plain or compressed) → (model, card)."""
    from torchyard_trainer.artifacts import CARD, WEIGHTS, read_card

    if not (vdir / CARD).is_file() or not (vdir / WEIGHTS).is_file():
        raise ConfigError(f"{vdir}: not a model version (needs {WEIGHTS} and {CARD})")
    card = read_card(vdir)
    if "huggingface" in (card.get("compression") or {}):
        return rebuild_hf(card["compression"], load_file(str(vdir / WEIGHTS))), card
    if "model" not in card:
        raise ConfigError(f"{vdir / CARD}: has no model spec to rebuild the network from")
    model = rebuild(card["model"], info, card.get("compression"), load_file(str(vdir / WEIGHTS)))
    return model, card


# ---------------------------------------------------------------------------------------------
# Hugging Face models


def _dedupe(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Each storage once (safetensors refuses shared tensors): ``{name: tensor}`` without the
    aliases of tied weights, and ``{alias: name}`` to tie them again."""
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    out: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), int(t.storage_offset()), tuple(t.shape))
        if t.numel() and key in seen:
            tied[name] = seen[key]
            continue
        seen[key] = name
        out[name] = t
    return out, tied


SPARSE_WORTH = 0.10
"""A Hugging Face model's file is sparse-coded (our layout) only when that saves at least this
share of it: below that, a file ``from_pretrained`` reads is worth more (an embedding whose
padding row is zero alone would otherwise make a version unreadable to transformers)."""


def _sparse_gain(dense: dict[str, torch.Tensor], encoded: dict[str, torch.Tensor]) -> float:
    size = sum(t.numel() * t.element_size() for t in dense.values())
    coded = sum(t.numel() * t.element_size() for t in encoded.values())
    return 1.0 - coded / size if size else 0.0


def _config_shapes_match(model: HFModel) -> bool:
    """Whether a model built from the config alone has ``model``'s layer shapes (then
    ``from_pretrained`` can load it)."""
    try:
        with torch.device("meta"):
            fresh = auto_class(model.task).from_config(model.model.config)
        conv1d_to_linear(fresh)
    except Exception:  # a config transformers cannot build from: use our layout
        return False
    return layers.module_shapes(HFModel(fresh, model.task)) == layers.module_shapes(model)


def _export_hf(model: HFModel) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state, tied = _dedupe({k: v.detach().cpu() for k, v in model.state_dict().items()})
    encoded, sparse = layers.encode_state(state)
    quantized = layers.quant_layout(model)
    info: dict[str, Any] = {**model.settings(), "config": model.model.config.to_dict()}
    if not quantized and _sparse_gain(state, encoded) < SPARSE_WORTH and \
            _config_shapes_match(model):
        hf_state, hf_tied = _dedupe(model.hf_state_dict())
        info.update(layout="transformers", tied=hf_tied)
        return ({k: v.cpu().contiguous() for k, v in hf_state.items()},
                {"format": 1, "huggingface": info})
    info.update(layout="torchyard", tied=tied)
    section = {
        "format": 1,
        "moduleShapes": layers.module_shapes(model),
        "quantized": quantized,
        "sparse": sparse,
        "tensorShapes": {k: list(v.shape) for k, v in state.items() if k in sparse},
        "huggingface": info,
    }
    return encoded, section


def _retie(model: nn.Module, tied: dict[str, str]) -> None:
    for alias, name in tied.items():
        owner, _, attr = alias.rpartition(".")
        setattr(model.get_submodule(owner), attr, model.get_parameter(name))


def rebuild_hf(section: dict[str, Any], stored: dict[str, torch.Tensor]) -> HFModel:
    """The adapter of a Hugging Face model version from its card section and tensors."""
    from transformers import AutoConfig

    info = dict(section["huggingface"])
    cfg = dict(info["config"])
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    inner = auto_class(info["task"]).from_config(config)
    tied = dict(info.get("tied", {}))
    if info.get("layout") == "transformers":
        missing, unexpected = inner.load_state_dict(stored, strict=False)
        _check_keys(missing, unexpected, tied)
        _retie(inner, tied)
        conv = conv1d_to_linear(inner)
        return HFModel(inner, info["task"], info["pooling"], info["normalize"], conv).eval()
    conv1d_to_linear(inner)
    model = HFModel(inner, info["task"], info["pooling"], info["normalize"], info["conv1d"])
    _reshape(model, section, f"{config.model_type} model")
    state = layers.decode_state(stored, section.get("sparse", []), section.get("tensorShapes", {}))
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    _check_keys(missing, unexpected, tied)
    _retie(model, tied)
    return model.eval()


def _check_keys(missing: list[str], unexpected: list[str], tied: dict[str, str]) -> None:
    lost = [k for k in missing if k not in tied]
    if lost or unexpected:
        raise ConfigError(f"model version does not fit its config: missing {lost[:5]}, "
                          f"unexpected {list(unexpected)[:5]}")


def hf_files(model: HFModel, section: dict[str, Any], tokenizer: Any) -> Callable[[Path], None]:
    """Writes the files beside ``model.safetensors`` of a Hugging Face version: the tokenizer,
    and config.json where the weights are in the transformers layout (only then, so
    ``from_pretrained`` never loads our tensors as if they were its own)."""

    def write(directory: Path) -> None:
        if tokenizer is not None:
            tokenizer.save_pretrained(str(directory))
        if section["huggingface"]["layout"] == "transformers":
            model.model.config.save_pretrained(str(directory))

    return write


def load_hf_version(path: str | Path) -> tuple[HFModel, Any]:
    """(model, tokenizer) of a Hugging Face model version directory, whichever its layout.

    ``model`` is the adapter (``model(x)`` with ``x`` from ``textdata.tokenize``, as the job
    measured it); ``model.model`` is the transformers model (called with the tokenizer's
    output like any other, its quantized layers included)."""
    from torchyard_trainer.artifacts import CARD, read_card

    vdir = Path(path)
    if not (vdir / CARD).is_file():
        raise ConfigError(f"{vdir}: not a model version (no {CARD})")
    section = read_card(vdir).get("compression") or {}
    if "huggingface" not in section:
        raise ConfigError(f"{vdir}: not a Hugging Face model version")
    from torchyard_trainer.artifacts import WEIGHTS

    model = rebuild_hf(section, load_file(str(vdir / WEIGHTS)))
    return model, load_tokenizer(vdir)
