"""Module surgery: get, replace and resize the layers of a model by fully qualified name
(structured pruning rebuilds layers smaller; loading a compressed model version rebuilds them
at the size its card records)."""

from __future__ import annotations

from typing import Any, TypeVar, cast

from torch import nn

RESIZABLE = (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)

Resizable = nn.Linear | nn.Conv2d | nn.BatchNorm1d | nn.BatchNorm2d | nn.LayerNorm
R = TypeVar("R", bound=Resizable)


def get_module(model: nn.Module, fqn: str) -> Any:  # the caller knows the layer type
    return model.get_submodule(fqn) if fqn else model


def set_module(model: nn.Module, fqn: str, new: nn.Module) -> None:
    parent_name, _, child = fqn.rpartition(".")
    setattr(get_module(model, parent_name), child, new)


def resize_module(mod: R, shape: list[int]) -> R:
    """A fresh module of the same type as ``mod`` whose weight has ``shape``."""
    if isinstance(mod, nn.Linear):
        return cast(R, nn.Linear(shape[1], shape[0], bias=mod.bias is not None))
    if isinstance(mod, nn.Conv2d):
        return cast(R, nn.Conv2d(
            shape[1] * mod.groups,
            shape[0],
            mod.kernel_size,  # type: ignore[arg-type]
            mod.stride,  # type: ignore[arg-type]
            mod.padding,  # type: ignore[arg-type]
            mod.dilation,  # type: ignore[arg-type]
            mod.groups,
            bias=mod.bias is not None,
        ))
    if isinstance(mod, nn.BatchNorm2d | nn.BatchNorm1d):
        return cast(R, type(mod)(
            shape[0], mod.eps, mod.momentum, mod.affine, mod.track_running_stats
        ))
    if isinstance(mod, nn.LayerNorm):
        return cast(R, nn.LayerNorm(shape, mod.eps, mod.elementwise_affine))
    raise ValueError(f"cannot resize a {type(mod).__name__}")


__all__ = ["RESIZABLE", "Resizable", "get_module", "resize_module", "set_module"]
