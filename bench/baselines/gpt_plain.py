"""The plain PyTorch loop of bench/gpu_transformer.py: the same GPT-style model (torchyard's
builtin transformer module), random tokens already on the GPU, fused AdamW, bf16 autocast,
optional torch.compile — and nothing else. Prints one JSON line.

    python bench/baselines/gpt_plain.py --compile
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from torchyard_trainer.data import DataInfo
from torchyard_trainer.models import BUILTINS, flops_per_token

PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--d-model", type=int, default=2048)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--compile", action="store_true")
    args = p.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    info = DataInfo("lm", (args.seq,), args.vocab, seq_len=args.seq)
    torch.manual_seed(0)
    model = BUILTINS["transformer"](
        info, d_model=args.d_model, layers=args.layers, heads=args.heads
    ).to(dev)
    fpt = flops_per_token(model, info)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1, fused=dev.type == "cuda")
    fwd = torch.compile(model) if args.compile else model
    x = torch.randint(0, args.vocab, (args.batch, args.seq), device=dev)
    y = torch.randint(0, args.vocab, (args.batch, args.seq), device=dev)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=dtype, enabled=dev.type == "cuda"):
            logits = fwd(x)
            loss = F.cross_entropy(logits.reshape(-1, args.vocab).float(), y.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    tps = args.steps * args.batch * args.seq / dt
    name = torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu"
    peak = next((v for k, v in PEAK.items() if k in name), None)
    print(
        json.dumps(
            {
                "tokensPerSecond": tps,
                "flopsPerToken": fpt,
                "mfu": tps * fpt / peak if (peak and fpt) else None,
                "device": name,
                "loss": float(loss),
                "compile": args.compile,
            }
        )
    )


if __name__ == "__main__":
    main()
