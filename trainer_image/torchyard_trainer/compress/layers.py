"""Compressed layers and the on-disk layout of compressed model versions.

A compressed model version is still ``model.safetensors`` + ``model-card.json``; the card's
``compression`` section says how to rebuild the network:

* ``moduleShapes``: ``{fqn: weight shape}`` of every Linear/Conv/BatchNorm/Embedding — layers
  that structured pruning shrank are rebuilt at their new size before the weights load
  (:mod:`.surgery`);
* ``quantized``: ``{fqn: {kind, granularity, backend, ...}}`` — layers replaced by one of the
  quantized modules below (their int8/int4/bit-packed weights and scales are plain tensors);
* ``sparse``: names of tensors stored as a bit mask + the non-zero values (unstructured
  pruning then really shrinks the file; they are dense again in memory; :mod:`.codec`).

The quantized modules keep the *portable* representation (integers + scales) as their state and
build the fast backend module (torch.ao fbgemm/x86 or torchao) lazily on first use, so the
same file runs wherever one of the backends exists.

The codecs (:mod:`.codec`), the module surgery (:mod:`.surgery`) and the torch.ao warning capture
(:mod:`.quiet`) live in their own modules; their names are re-exported here, where the
compression runtime has always found them.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchyard_trainer.compress.codec import (
    MASK_SUFFIX,
    VALUES_SUFFIX,
    decode_state,
    encode_state,
    pack_bits,
    pack_int4,
    unpack_bits,
    unpack_int4,
)
from torchyard_trainer.compress.quiet import (
    CAPTURED_WARNINGS,
    drain_warnings,
    quiet_torch_ao,
    quiet_torchao_import,
)
from torchyard_trainer.compress.surgery import (
    RESIZABLE,
    get_module,
    resize_module,
    set_module,
)

Forward = Callable[[torch.Tensor], torch.Tensor]
"""What a quantized layer's backend computes with (a function, a bound forward or a module)."""


def _small_float(t: torch.Tensor) -> torch.Tensor:
    """fp16 storage for biases/scales when it is safe (finite, in range); fp32 otherwise."""
    t = t.detach().float()
    nz = t.abs()[t != 0]
    if t.numel() and float(t.abs().max()) < 6.0e4 and (nz.numel() == 0 or float(nz.min()) > 1e-6):
        return t.half()
    return t


def _scales_of(w: torch.Tensor, granularity: str, qmax: int) -> torch.Tensor:
    """Symmetric scales: one per output row (perChannel) or one for the tensor."""
    if granularity == "perChannel":
        amax = w.detach().abs().amax(dim=1)
    else:
        amax = w.detach().abs().amax().reshape(1)
    return _small_float(torch.clamp(amax, min=1e-8) / qmax)


# ---------------------------------------------------------------------------------------------
# quantized linear layers


class QuantLinear(nn.Module):
    """Base of the quantized Linear layers: integer weights + scales as state, float bias."""

    kind = "base"

    def __init__(self, in_features: int, out_features: int, has_bias: bool, backend: str) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.backend = backend
        self.bias: torch.Tensor | None
        self.register_buffer("bias", torch.zeros(out_features) if has_bias else None)
        self.__dict__["_impl"] = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_impl"] = None  # backend modules are rebuilt, never copied or pickled
        return state

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__["_impl"] = None  # rebuilt from the new integers on next use
        super()._load_from_state_dict(*args, **kwargs)

    def dequantized_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def weight_storage_bytes(self) -> int:
        """Bytes of the stored weight representation (integers + scales)."""
        return sum(b.numel() * b.element_size() for n, b in self.named_buffers() if n != "bias")

    def float_bias(self) -> torch.Tensor | None:
        return None if self.bias is None else self.bias.float()

    def _build(self) -> Forward:
        w = self.dequantized_weight()
        bias = self.float_bias()
        return lambda x: F.linear(x, w.to(x.dtype), None if bias is None else bias.to(x.dtype))

    def _torchao_linear(self, config: object, dtype: torch.dtype | None = None) -> nn.Linear:
        """An ``nn.Linear`` holding the dequantized weights (in ``dtype`` when given), quantized
        in place by torchao's ``quantize_`` with ``config``."""
        with quiet_torchao_import():
            from torchao.quantization import quantize_

        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(self.dequantized_weight())
            if self.bias is not None:
                lin.bias.copy_(self.bias.float())
        if dtype is not None:
            lin = lin.to(dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_(lin, config)
        return lin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        impl = self.__dict__["_impl"]
        if impl is None:
            impl = self._build()
            self.__dict__["_impl"] = impl
        return impl(x)  # type: ignore[no-any-return]

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, backend={self.backend}"


class _Int8Weights(QuantLinear):
    """int8 weights (symmetric) with one scale per output row (perChannel) or per tensor: the
    state the dynamic and the static int8 layers share."""

    weight_int8: torch.Tensor
    weight_scale: torch.Tensor

    def __init__(
        self, in_features: int, out_features: int, has_bias: bool, backend: str, granularity: str
    ) -> None:
        super().__init__(in_features, out_features, has_bias, backend)
        self.granularity = granularity
        n_scales = out_features if granularity == "perChannel" else 1
        self.register_buffer(
            "weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8)
        )
        self.register_buffer("weight_scale", torch.ones(n_scales, dtype=torch.float16))

    def dequantized_weight(self) -> torch.Tensor:
        s = self.weight_scale.float()
        s = s.reshape(-1, 1) if self.granularity == "perChannel" else s
        return self.weight_int8.float() * s

    def _torch_ao_weight(self) -> torch.Tensor:
        """The weights as a torch quantized tensor (qint8, per channel or per tensor)."""
        if self.granularity == "perChannel":
            return torch._make_per_channel_quantized_tensor(
                self.weight_int8,
                self.weight_scale.double(),
                torch.zeros(self.out_features, dtype=torch.long),
                0,
            )
        return torch._make_per_tensor_quantized_tensor(
            self.weight_int8, float(self.weight_scale.float()[0]), 0
        )


class Int8Linear(_Int8Weights):
    """int8 weights (symmetric, per-tensor or per-channel), activations quantized per call.

    backends: ``torch.ao`` (fbgemm/x86 dynamic quantized linear — fastest on CPU), ``torchao``
    (``Int8DynamicActivationInt8WeightConfig``, the maintained path, best on GPU / compiled),
    ``reference`` (dequantize once, float matmul: runs everywhere, saves only size).
    """

    kind = "int8"

    @classmethod
    def from_float(
        cls, lin: nn.Linear, granularity: str, backend: str, weight: torch.Tensor | None = None
    ) -> Int8Linear:
        w = (lin.weight if weight is None else weight).detach().float()
        m = cls(lin.in_features, lin.out_features, lin.bias is not None, backend, granularity)
        scale = _scales_of(w, granularity, 127)
        s = scale.float().reshape(-1, 1) if granularity == "perChannel" else scale.float()
        m.weight_int8.copy_(torch.clamp(torch.round(w / s), -127, 127).to(torch.int8))
        m.weight_scale = scale
        if lin.bias is not None:
            m.bias = _small_float(lin.bias)
        return m

    def _build(self) -> Forward:
        if self.backend == "torch.ao":
            with quiet_torch_ao():
                from torch.ao.nn.quantized.dynamic import Linear as DynLinear

                q = DynLinear(self.in_features, self.out_features, dtype=torch.qint8)  # type: ignore[no-untyped-call]
                q.set_weight_bias(self._torch_ao_weight(), self.float_bias())

            return q.forward  # no second nn.Module __call__ per layer: this is the hot path
        if self.backend == "torchao":
            with quiet_torchao_import():
                from torchao.quantization import Int8DynamicActivationInt8WeightConfig
                from torchao.quantization.granularity import PerRow, PerTensor

            gran = PerRow() if self.granularity == "perChannel" else PerTensor()
            return self._torchao_linear(Int8DynamicActivationInt8WeightConfig(granularity=gran))
        return super()._build()


class StaticInt8Linear(_Int8Weights):
    """int8 weights and int8 activations with ranges calibrated ahead of time (torch.ao
    quantized Linear, fbgemm/x86): input quantized with the calibrated scale, int8 GEMM,
    output requantized with the calibrated output scale, dequantized for the next layer."""

    kind = "staticInt8"
    act_qparams: torch.Tensor

    def __init__(
        self, in_features: int, out_features: int, has_bias: bool, backend: str, granularity: str
    ) -> None:
        super().__init__(in_features, out_features, has_bias, backend, granularity)
        # activation qparams (quint8 affine): [scale, zero_point] of the input and of the output
        self.register_buffer("act_qparams", torch.tensor([1.0, 0.0, 1.0, 0.0]))

    @classmethod
    def from_float(
        cls,
        lin: nn.Linear,
        granularity: str,
        backend: str,
        in_range: tuple[float, float],
        out_range: tuple[float, float],
    ) -> StaticInt8Linear:
        base = Int8Linear.from_float(lin, granularity, backend)
        m = cls(lin.in_features, lin.out_features, lin.bias is not None, backend, granularity)
        m.weight_int8.copy_(base.weight_int8)
        m.weight_scale = base.weight_scale
        m.bias = base.bias
        m.act_qparams = torch.tensor([*_affine_qparams(*in_range), *_affine_qparams(*out_range)])
        return m

    def _build(self) -> Forward:
        with quiet_torch_ao():
            from torch.ao.nn.quantized import Linear as QLinear

            q = QLinear(self.in_features, self.out_features, dtype=torch.qint8)  # type: ignore[no-untyped-call]
            q.set_weight_bias(self._torch_ao_weight(), self.float_bias())
            in_s, in_z, out_s, out_z = self.act_qparams.tolist()
            q.scale, q.zero_point = float(out_s), int(out_z)

            # the per-call quantize warns like the rest of torch.ao: captured here, once
            torch.quantize_per_tensor(torch.zeros(1), in_s, int(in_z), torch.quint8)

        return _QuantizeThen(q, in_s, int(in_z))


class _QuantizeThen(nn.Module):
    """Quantize the float input with the calibrated qparams, run the quantized Linear,
    dequantize: a real module (not a closure) so ``serving_copy`` can hand it to a tracer."""

    def __init__(self, q: nn.Module, scale: float, zero_point: int) -> None:
        super().__init__()
        self.q = q
        self.scale = scale
        self.zero_point = zero_point

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq = torch.quantize_per_tensor(x.float(), self.scale, self.zero_point, torch.quint8)
        return self.q(xq).dequantize()  # type: ignore[no-any-return]


def _affine_qparams(lo: float, hi: float) -> tuple[float, float]:
    """quint8 affine scale/zero-point covering [lo, hi] (which always contains 0)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / 255.0, 1e-8)
    zp = round(-lo / scale)
    return scale, float(min(255, max(0, zp)))


class Int4Linear(QuantLinear):
    """Weight-only int4 (symmetric, per group of input features), two values per byte.
    Computed by dequantizing once (``reference``) or with torchao's int4 kernels where the
    platform has them (``torchao``)."""

    kind = "int4"
    weight_int4: torch.Tensor
    weight_scale: torch.Tensor

    def __init__(
        self, in_features: int, out_features: int, has_bias: bool, backend: str, group_size: int
    ) -> None:
        super().__init__(in_features, out_features, has_bias, backend)
        self.group_size = group_size
        groups = math.ceil(in_features / group_size)
        self.register_buffer(
            "weight_int4", torch.zeros(out_features, math.ceil(in_features / 2), dtype=torch.uint8)
        )
        self.register_buffer("weight_scale", torch.ones(out_features, groups, dtype=torch.float16))

    @classmethod
    def from_float(cls, lin: nn.Linear, group_size: int, backend: str) -> Int4Linear:
        w = lin.weight.detach().float()
        m = cls(lin.in_features, lin.out_features, lin.bias is not None, backend, group_size)
        pad = (-w.shape[1]) % group_size
        wg = F.pad(w, (0, pad)).reshape(w.shape[0], -1, group_size)
        scale = _small_float(torch.clamp(wg.abs().amax(-1), min=1e-8) / 7.0)
        q = torch.clamp(torch.round(wg / scale.float().unsqueeze(-1)), -8, 7).reshape(
            w.shape[0], -1
        )
        m.weight_int4.copy_(pack_int4(q[:, : w.shape[1]].to(torch.int8)))
        m.weight_scale = scale
        if lin.bias is not None:
            m.bias = _small_float(lin.bias)
        return m

    def dequantized_weight(self) -> torch.Tensor:
        q = unpack_int4(self.weight_int4, self.in_features).float()
        s = self.weight_scale.float().repeat_interleave(self.group_size, dim=1)[
            :, : self.in_features
        ]
        return q * s

    def _build(self) -> Forward:
        if self.backend == "torchao":
            with quiet_torchao_import():
                from torchao.quantization import Int4WeightOnlyConfig

            lin = self._torchao_linear(
                Int4WeightOnlyConfig(group_size=self.group_size), torch.bfloat16
            )

            def run(x: torch.Tensor) -> torch.Tensor:
                return lin(x.to(torch.bfloat16)).to(x.dtype)  # type: ignore[no-any-return]

            return run
        return super()._build()


class BinaryLinear(QuantLinear):
    """Binarized weights: sign(w) × one scale per output row (mean |w| of the row, which
    minimises the L2 error — XNOR-Net's alpha), stored as bits (32× smaller than fp32)."""

    kind = "binary"
    weight_bits: torch.Tensor
    weight_scale: torch.Tensor

    def __init__(self, in_features: int, out_features: int, has_bias: bool, backend: str) -> None:
        super().__init__(in_features, out_features, has_bias, backend)
        self.register_buffer(
            "weight_bits", torch.zeros(out_features, math.ceil(in_features / 8), dtype=torch.uint8)
        )
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float16))

    @classmethod
    def from_float(cls, lin: nn.Linear, backend: str) -> BinaryLinear:
        w = lin.weight.detach().float()
        m = cls(lin.in_features, lin.out_features, lin.bias is not None, backend)
        m.weight_bits.copy_(pack_bits(w >= 0))
        m.weight_scale = _small_float(torch.clamp(w.abs().mean(dim=1), min=1e-8))
        if lin.bias is not None:
            m.bias = _small_float(lin.bias)
        return m

    def dequantized_weight(self) -> torch.Tensor:
        sign = unpack_bits(self.weight_bits, self.in_features).float() * 2.0 - 1.0
        return sign * self.weight_scale.float().reshape(-1, 1)


QUANT_KINDS: dict[str, type[QuantLinear]] = {
    "int8": Int8Linear,
    "staticInt8": StaticInt8Linear,
    "int4": Int4Linear,
    "binary": BinaryLinear,
}


def empty_quant_module(cfg: dict[str, Any], lin: nn.Linear) -> QuantLinear:
    """An unloaded quantized layer shaped like ``lin`` described by a card entry ``cfg``."""
    kind = cfg["kind"]
    has_bias = lin.bias is not None
    backend = str(cfg.get("backend", "reference"))
    if kind in ("int8", "staticInt8"):
        cls = Int8Linear if kind == "int8" else StaticInt8Linear
        return cls(lin.in_features, lin.out_features, has_bias, backend, str(cfg["granularity"]))
    if kind == "int4":
        return Int4Linear(
            lin.in_features, lin.out_features, has_bias, backend, int(cfg["groupSize"])
        )
    if kind == "binary":
        return BinaryLinear(lin.in_features, lin.out_features, has_bias, backend)
    raise ValueError(f"unknown quantized layer kind {kind!r}")


def serving_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for serving: each quantized layer whose backend is an nn.Module
    (torch.ao's dynamic and static quantized Linear, torchao's Linear) is replaced by that
    module itself. Ours hide the backend (it is rebuilt, never saved), which ``torch.jit.trace``
    refuses (the packed weights are not a registered submodule); the copy traces and freezes —
    ``torch.jit.freeze(torch.jit.trace(serving_copy(m), example))`` is the CPU serving path
    whose int8 speed-ups docs/benchmarks-compression.md measures. Layers with other backends
    stay as they are (their float weights become trace constants)."""
    out = copy.deepcopy(model)
    for fqn, mod in list(out.named_modules()):
        if isinstance(mod, QuantLinear):
            impl = mod._build()
            backend_module = getattr(impl, "__self__", impl)  # torch.ao returns its forward
            if isinstance(backend_module, nn.Module):
                set_module(out, fqn, backend_module)
    return out.eval()


# ---------------------------------------------------------------------------------------------
# the card's layout of a model, and its logical (dequantized) weights


def module_shapes(model: nn.Module) -> dict[str, list[int]]:
    """Weight shape of every resizable module (quantized ones report their logical shape)."""
    out: dict[str, list[int]] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, QuantLinear):
            out[name] = [mod.out_features, mod.in_features]
        elif isinstance(mod, RESIZABLE) and getattr(mod, "weight", None) is not None:
            out[name] = list(mod.weight.shape)
    return out


def quant_layout(model: nn.Module) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, QuantLinear):
            cfg: dict[str, Any] = {"kind": mod.kind, "backend": mod.backend}
            if isinstance(mod, Int8Linear | StaticInt8Linear):
                cfg["granularity"] = mod.granularity
            if isinstance(mod, Int4Linear):
                cfg["groupSize"] = mod.group_size
            out[name] = cfg
    return out


def logical_weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Every parameter of the model as float, quantized layers dequantized."""
    for mname, mod in model.named_modules():
        prefix = f"{mname}." if mname else ""
        if isinstance(mod, QuantLinear):
            yield prefix + "weight", mod.dequantized_weight()
            if mod.bias is not None:
                yield prefix + "bias", mod.bias.float()
            continue
        for pname, p in mod.named_parameters(recurse=False):
            yield prefix + pname, p.detach()


__all__ = [
    "CAPTURED_WARNINGS",
    "MASK_SUFFIX",
    "QUANT_KINDS",
    "RESIZABLE",
    "VALUES_SUFFIX",
    "BinaryLinear",
    "Int4Linear",
    "Int8Linear",
    "QuantLinear",
    "StaticInt8Linear",
    "decode_state",
    "drain_warnings",
    "empty_quant_module",
    "encode_state",
    "get_module",
    "logical_weights",
    "module_shapes",
    "pack_bits",
    "pack_int4",
    "quant_layout",
    "quiet_torch_ao",
    "quiet_torchao_import",
    "resize_module",
    "serving_copy",
    "set_module",
    "unpack_bits",
    "unpack_int4",
]
