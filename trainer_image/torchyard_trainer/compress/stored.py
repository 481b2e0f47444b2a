"""A compressed model as stored in a model version: the tensors to write (sparse-coded where
smaller) with the card's ``compression`` section, and the way back from a version directory to
a runnable model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from torchyard_trainer.compress import layers
from torchyard_trainer.data import DataInfo
from torchyard_trainer.env import ConfigError
from torchyard_trainer.models import build_model


def export_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors to write (sparse-coded where smaller) and the card's ``compression`` section."""
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

    spec = ModelSpec.model_validate({k: v for k, v in model_spec.items() if k != "checkpoint"})
    model = build_model(spec, info)
    if not section:
        model.load_state_dict(stored)
        return model
    shapes = section.get("moduleShapes", {})
    for fqn, shape in shapes.items():
        mod = layers.get_module(model, fqn)
        if isinstance(mod, layers.RESIZABLE) and list(mod.weight.shape) != list(shape):
            layers.set_module(model, fqn, layers.resize_module(mod, shape))
    for fqn, cfg in section.get("quantized", {}).items():
        mod = layers.get_module(model, fqn)
        if not isinstance(mod, nn.Linear):
            raise ConfigError(f"model version: quantized layer {fqn} is not a Linear in {spec}")
        layers.set_module(model, fqn, layers.empty_quant_module(cfg, mod))
    state = layers.decode_state(stored, section.get("sparse", []), section.get("tensorShapes", {}))
    model.load_state_dict(state, assign=True)
    return model.eval()


def load_version(vdir: Path, info: DataInfo) -> tuple[nn.Module, dict[str, Any]]:
    """A model version directory (plain or compressed) → (model, card)."""
    from torchyard_trainer.artifacts import CARD, WEIGHTS, read_card

    if not (vdir / CARD).is_file() or not (vdir / WEIGHTS).is_file():
        raise ConfigError(f"{vdir}: not a model version (needs {WEIGHTS} and {CARD})")
    card = read_card(vdir)
    if "model" not in card:
        raise ConfigError(f"{vdir / CARD}: has no model spec to rebuild the network from")
    model = rebuild(card["model"], info, card.get("compression"), load_file(str(vdir / WEIGHTS)))
    return model, card
