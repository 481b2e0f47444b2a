"""A user script's model as a model version: the built-in trainer's store layout and card
(``torchyard_trainer.artifacts``). Imports torch: :class:`~torchyard_trainer.report.Reporter`
loads this module only when a model is saved."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from torchyard_trainer.artifacts import spec_hash, write_model_version
from torchyard_trainer.env import ConfigError

if TYPE_CHECKING:
    from torchyard_trainer.report import JobContext


def _from_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ConfigError(f"save_model: {path} is not a file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(loaded, Mapping):
        raise ConfigError(f"save_model: {path} holds a {type(loaded).__name__}, not a state dict")
    return dict(loaded)


def state_dict_of(model: Any) -> dict[str, torch.Tensor]:
    """The tensors of an ``nn.Module`` (unwrapping DDP/FSDP's ``.module``), a state dict, or
    a ``.safetensors`` / ``torch.save`` file; non-tensor entries are dropped."""
    if isinstance(model, str | Path):
        state = _from_file(Path(model))
    elif isinstance(model, torch.nn.Module):
        inner = getattr(model, "module", model)
        state = dict(inner.state_dict() if isinstance(inner, torch.nn.Module) else {})
    elif isinstance(model, Mapping):
        state = dict(model)
    else:
        raise ConfigError(
            f"save_model: expected an nn.Module, a state dict or a file, not {type(model).__name__}"
        )
    tensors = {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ConfigError("save_model: the model has no tensors to save")
    # safetensors refuses tensors that share memory (tied weights): each gets its own copy
    seen: set[int] = set()
    for key, tensor in tensors.items():
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen:
            tensors[key] = tensor.detach().clone()
        seen.add(ptr)
    return tensors


def card_of(ctx: JobContext, metrics: dict[str, float], steps: int) -> dict[str, Any]:
    """The model card's job-specific part, with the built-in trainer's keys."""
    spec = ctx.job_spec
    card: dict[str, Any] = {
        "specHash": spec_hash(spec),
        "metrics": metrics,
        "lineage": {
            "job": ctx.job_name,
            "namespace": ctx.namespace,
            "kind": "TrainingJob",
            "strategy": "command",
            "command": spec.get("command"),
            "image": spec.get("image"),
            "steps": steps,
            "restarts": ctx.restart_count,
            "worldSize": ctx.world_size,
        },
    }
    for key in ("model", "data"):  # optional with a command; kept when the job names them
        if spec.get(key):
            card[key] = spec[key]
    return card


def write_version(
    ctx: JobContext, state: dict[str, torch.Tensor], metrics: dict[str, float], steps: int
) -> dict[str, Any]:
    """Write ``state`` as the next version of the job's model; returns the card."""
    return write_model_version(
        ctx.model_store,
        ctx.pvc_root,
        ctx.model_name,
        state,
        card_of(ctx, metrics, steps),
        ctx.output_dir,
    )
