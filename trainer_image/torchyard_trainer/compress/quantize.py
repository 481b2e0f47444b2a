"""Quantization: dynamicInt8, staticInt8 (calibrated), qat, weightOnlyInt4, binarize.

Backends (recorded in the report):

* ``torch.ao`` — eager dynamic/static quantized Linear on fbgemm/x86 kernels. Upstream marks
  ``torch.ao.quantization`` deprecated (torchao is the successor), but on CPU without
  ``torch.compile`` its kernels are the fastest we measured (bench/compression.py), so ``auto``
  uses it there. Its deprecation warnings are captured and turned into one report warning.
* ``torchao`` — ``quantize_`` with ``Int8DynamicActivationInt8WeightConfig`` /
  ``Int4WeightOnlyConfig``: the maintained path, chosen by ``auto`` on CUDA.
* ``reference`` — our own dequantize-once float layer: runs everywhere, gives the size gain only
  (used by ``auto`` for binarize, and for int4 where the platform has no int4 kernels).

Layers covered: ``nn.Linear`` (the bulk of MLP/transformer weights); Conv/Embedding stay float
and the report says so.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from torchyard_trainer.compress import layers
from torchyard_trainer.compress.context import Context, train_epochs
from torchyard_trainer.env import ConfigError

if TYPE_CHECKING:
    from torchyard.api.compression import QuantizeStep

INT4_GROUP = 32


@functools.cache
def torch_ao_engine() -> str | None:
    """The quantized CPU engine torch.ao would use, or None when this build has none."""
    engines = [e for e in ("x86", "fbgemm", "onednn", "qnnpack")
               if e in torch.backends.quantized.supported_engines]
    return engines[0] if engines else None


@functools.cache
def torchao_probe(method: str) -> str | None:
    """None when torchao can run ``method`` here, else why not (tried on a tiny layer)."""
    try:
        with layers.quiet_torchao_import():
            from torchao.quantization import (
                Int4WeightOnlyConfig,
                Int8DynamicActivationInt8WeightConfig,
                quantize_,
            )

            lin = nn.Linear(64, 32)
            if method == "weightOnlyInt4":
                # probed on the CPU, where the compression runtime computes (a CUDA-only
                # kernel would pass a CUDA probe and then fail inside the search)
                lin = lin.to(torch.bfloat16)
                quantize_(lin, Int4WeightOnlyConfig(group_size=INT4_GROUP))
                lin(torch.randn(2, 64, dtype=torch.bfloat16))
            else:
                quantize_(lin, Int8DynamicActivationInt8WeightConfig())
                lin(torch.randn(2, 64))
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    return None


SUPPORTED = {
    "dynamicInt8": ("torch.ao", "torchao"),
    "qat": ("torch.ao", "torchao"),
    "staticInt8": ("torch.ao",),
    "weightOnlyInt4": ("torchao", "reference"),
    "binarize": ("reference",),
}


def resolve_backend(method: str, requested: str) -> tuple[str, str | None]:
    """(backend that will run, warning or None); ConfigError when the platform lacks it."""
    options = SUPPORTED.get(method)
    if options is None:
        raise ConfigError(f"unknown quantize method {method!r}")
    if requested not in ("auto", *options):
        raise ConfigError(
            f"quantize {method}: backend {requested!r} does not implement it; available: "
            f"{', '.join(options)} (or auto)"
        )
    def why_not(b: str) -> str | None:
        if b == "torch.ao":
            return None if torch_ao_engine() else "this torch build has no quantized engine"
        if b == "torchao":
            return torchao_probe("weightOnlyInt4" if method == "weightOnlyInt4" else "int8")
        return None

    if requested != "auto":
        why = why_not(requested)
        if why is not None:
            raise ConfigError(f"quantize {method} with backend {requested} is not available on "
                              f"this platform ({why})")
        return requested, None
    # the runtime computes on the CPU (fine-tuning, evaluation, latency), where torch.ao's
    # fbgemm/x86 kernels are the fastest int8 path; torchao's are the fallback
    order = ("torch.ao", "torchao", "reference")
    tried: dict[str, str | None] = {}
    for b in order:  # probed lazily: torchao is imported only when it may be chosen
        if b not in options:
            continue
        tried[b] = why_not(b)
        if tried[b] is None:
            note = None
            if method == "weightOnlyInt4" and b == "reference":
                note = ("weightOnlyInt4: torchao's int4 kernels are not available here "
                        f"({tried.get('torchao')}); weights are stored as int4 and dequantized "
                        "to float once at load: smaller, not faster")
            return b, note
    raise ConfigError(f"quantize {method}: no backend available on this platform: {tried}")


def target_linears(model: nn.Module, keep_float: list[str]) -> list[tuple[str, nn.Linear]]:
    names = {n for n, _ in model.named_modules()}
    unknown = [k for k in keep_float if k not in names]
    if unknown:
        raise ConfigError(f"quantize.keepFloat names unknown modules {unknown}")

    def kept(n: str) -> bool:
        return any(n == k or n.startswith(k + ".") for k in keep_float)

    out = [(n, m) for n, m in model.named_modules()
           if type(m) is nn.Linear and not kept(n)]
    if not out:
        raise ConfigError("quantize found no nn.Linear layer to quantize (keepFloat excludes all?)")
    return out


# ---------------------------------------------------------------------------------------------
# QAT / binarize fine-tuning with straight-through estimators


class _FakeQuantLinear(nn.Module):
    """Linear whose forward sees quantized weights (and int8 activations for int8), gradients
    passing straight through the rounding."""

    def __init__(self, lin: nn.Linear, mode: str, granularity: str) -> None:
        super().__init__()
        self.lin = lin
        self.mode = mode
        self.granularity = granularity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.lin.weight
        if self.mode == "binary":
            alpha = w.abs().mean(dim=1, keepdim=True)
            wq = torch.where(w >= 0, alpha, -alpha)
        else:
            amax = w.abs().amax(dim=1, keepdim=True) if self.granularity == "perChannel" \
                else w.abs().amax()
            s = amax.clamp_min(1e-8) / 127.0
            wq = torch.clamp(torch.round(w / s), -127, 127) * s
            xs = x.abs().amax().clamp_min(1e-8) / 127.0
            x = x + (torch.round(x / xs) * xs - x).detach()
        w_ste = w + (wq - w).detach()
        return nn.functional.linear(x, w_ste, self.lin.bias)


def _ste_finetune(model: nn.Module, targets: list[tuple[str, nn.Linear]], mode: str,
                  granularity: str, epochs: int, ctx: Context) -> None:
    for n, lin in targets:
        layers.set_module(model, n, _FakeQuantLinear(lin, mode, granularity))
    try:
        train_epochs(model, ctx, epochs, lr_scale=0.3)
    finally:
        for n, lin in targets:
            layers.set_module(model, n, lin)


@torch.no_grad()
def _calibrate(model: nn.Module, targets: list[tuple[str, nn.Linear]], ctx: Context,
               samples: int) -> dict[str, tuple[tuple[float, float], tuple[float, float]]]:
    ranges: dict[str, list[float]] = {n: [0.0, 0.0, 0.0, 0.0] for n, _ in targets}

    def hook(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
        def fn(_m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            r = ranges[name]
            r[0], r[1] = min(r[0], float(inp[0].min())), max(r[1], float(inp[0].max()))
            r[2], r[3] = min(r[2], float(out.min())), max(r[3], float(out.max()))
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in targets]
    try:
        model.eval()
        x = ctx.ds.train_x[: max(1, samples)]
        for i in range(0, len(x), ctx.batch_size):
            model(x[i : i + ctx.batch_size])
    finally:
        for h in handles:
            h.remove()
    return {n: ((r[0], r[1]), (r[2], r[3])) for n, r in ranges.items()}


def apply(model: nn.Module, step: QuantizeStep, granularity: str, ctx: Context
          ) -> dict[str, Any]:
    """Quantize ``model`` in place per ``step`` with the given weight granularity."""
    if any(isinstance(m, layers.QuantLinear) for m in model.modules()):
        raise ConfigError("the model is already quantized: one quantize step per job")
    method = step.method
    backend, note = resolve_backend(method, step.backend)
    if note and note not in ctx.notes:
        ctx.notes.append(note)
    if granularity == "auto":
        granularity = "perChannel"
    targets = target_linears(model, list(step.keep_float))
    skipped = sorted(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Embedding))
    if skipped:
        msg = f"quantize covers nn.Linear layers; {len(skipped)} Conv2d/Embedding layers stay float"
        if msg not in ctx.notes:
            ctx.notes.append(msg)
    info: dict[str, Any] = {"method": method, "backend": backend, "layers": len(targets)}
    if method in ("dynamicInt8", "qat", "staticInt8"):
        info["granularity"] = granularity
    if method == "qat":
        _ste_finetune(model, targets, "int8", granularity, step.qat_epochs, ctx)
        info["qatEpochs"] = step.qat_epochs
    if method == "binarize" and step.qat_epochs > 0:
        _ste_finetune(model, targets, "binary", granularity, step.qat_epochs, ctx)
        info["steEpochs"] = step.qat_epochs
    calib = _calibrate(model, targets, ctx, step.calibration_samples) if method == "staticInt8" \
        else {}
    new: layers.QuantLinear
    with layers.quiet_torch_ao():
        for n, lin in targets:
            if method in ("dynamicInt8", "qat"):
                new = layers.Int8Linear.from_float(lin, granularity, backend)
            elif method == "staticInt8":
                in_r, out_r = calib[n]
                new = layers.StaticInt8Linear.from_float(lin, granularity, backend, in_r, out_r)
            elif method == "weightOnlyInt4":
                group = INT4_GROUP if lin.in_features % INT4_GROUP == 0 else lin.in_features
                new = layers.Int4Linear.from_float(lin, group, backend)
            else:
                new = layers.BinaryLinear.from_float(lin, backend)
            layers.set_module(model, n, new)
    label = f"{method}: {backend}"
    if backend == "torch.ao":
        label += f" ({torch_ao_engine()} engine)"
    if method == "qat":
        label += " after torchyard STE fake-quant fine-tune"
    ctx.backends["quantize"] = label
    return info
