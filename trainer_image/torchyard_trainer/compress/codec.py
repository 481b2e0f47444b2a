"""The on-disk codecs of compressed model versions: bit and int4 packing, and the sparse
storage of a tensor as a bit mask + its non-zero values.

A tensor named in the card's ``compression.sparse`` list is stored as ``<name>.__mask`` (the
packed bit mask) and ``<name>.__values`` (the non-zero values): unstructured pruning then really
shrinks the file; it is dense again in memory.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# bit packing


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Bool tensor [..., n] → uint8 [..., ceil(n/8)] (little-endian bit order)."""
    n = bits.shape[-1]
    pad = (-n) % 8
    b = F.pad(bits.to(torch.uint8), (0, pad)).reshape(*bits.shape[:-1], -1, 8)
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
    return (b * weights).sum(-1, dtype=torch.int32).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: uint8 [..., ceil(n/8)] → bool [..., n]."""
    shifts = torch.arange(8, dtype=torch.uint8)
    bits = (packed.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(*packed.shape[:-1], -1)[..., :n].bool()


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """int8 values in [-8, 7], shape [..., n] → uint8 [..., ceil(n/2)] (two per byte)."""
    u = (q.to(torch.int16) + 8).to(torch.uint8)
    if u.shape[-1] % 2:
        u = F.pad(u, (0, 1), value=8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor, n: int) -> torch.Tensor:
    lo = (packed & 0x0F).to(torch.int8) - 8
    hi = (packed >> 4).to(torch.int8) - 8
    return torch.stack([lo, hi], dim=-1).reshape(*packed.shape[:-1], -1)[..., :n]


# ---------------------------------------------------------------------------------------------
# sparse storage: bit mask + non-zero values


MASK_SUFFIX = ".__mask"
VALUES_SUFFIX = ".__values"


def encode_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Store a tensor as (bit mask, non-zero values) when that is smaller than dense."""
    out: dict[str, torch.Tensor] = {}
    sparse: list[str] = []
    for name, t in state.items():
        t = t.detach().cpu().contiguous()
        n = t.numel()
        if t.dim() >= 2 and n >= 64 and t.dtype != torch.uint8:
            nnz = int(torch.count_nonzero(t))
            dense_bytes = n * t.element_size()
            sparse_bytes = math.ceil(n / 8) + nnz * t.element_size()
            if sparse_bytes < dense_bytes:
                flat = t.reshape(-1)
                mask = flat != 0
                out[name + MASK_SUFFIX] = pack_bits(mask)
                out[name + VALUES_SUFFIX] = flat[mask].contiguous()
                sparse.append(name)
                continue
        out[name] = t
    return out, sparse


def decode_state(
    stored: dict[str, torch.Tensor], sparse: list[str], shapes: dict[str, list[int]]
) -> dict[str, torch.Tensor]:
    out = {
        k: v
        for k, v in stored.items()
        if not (k.endswith(MASK_SUFFIX) or k.endswith(VALUES_SUFFIX))
    }
    for name in sparse:
        shape = shapes[name]
        n = math.prod(shape)
        mask = unpack_bits(stored[name + MASK_SUFFIX], n)
        values = stored[name + VALUES_SUFFIX]
        flat = torch.zeros(n, dtype=values.dtype)
        flat[mask] = values
        out[name] = flat.reshape(shape)
    return out


__all__ = [
    "MASK_SUFFIX",
    "VALUES_SUFFIX",
    "decode_state",
    "encode_state",
    "pack_bits",
    "pack_int4",
    "unpack_bits",
    "unpack_int4",
]
