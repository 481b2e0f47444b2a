"""GPT-style transformer tokens/s and MFU in bf16 on one GPU: the torchyard worker vs a plain
PyTorch loop of the same model (baselines/gpt_plain.py), eager and torch.compile, same run.

Shape (the issue's reference): d_model 2048, 16 layers, 16 heads, seq 2048, batch 8, vocab
32000, fused AdamW, bf16 autocast; flops/token = 6·N + 12·layers·d·seq (N = non-embedding
parameters incl. the LM head); MFU against the GPU's dense bf16 peak (H100: 989 TFLOP/s).
Target: worker ≥ 0.97× the plain loop's tokens/s.

    python bench/gpu_transformer.py            # on a CUDA machine
    python bench/gpu_transformer.py --smoke    # tiny shape on CPU: checks the harness only
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import yaml
from _common import ROOT, machine, run, torchrun, write

BASELINE = ROOT / "bench" / "baselines" / "gpt_plain.py"


def ours(
    tmp: Path, shape: dict[str, int], steps: int, warmup: int, compile_: bool
) -> dict[str, float]:
    out = tmp / f"ours-{compile_}"
    out.mkdir()
    manifest = {
        "apiVersion": "torchyard.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "gpt-bench"},
        "spec": {
            "model": {
                "builtin": "transformer",
                "args": {"dModel": shape["d"], "layers": shape["layers"], "heads": shape["heads"]},
            },
            "data": {
                "builtin": "synthetic_tokens",
                "validationFraction": 0.0,
                "args": {
                    "seqLen": shape["seq"],
                    "vocabSize": shape["vocab"],
                    "numSamples": shape["batch"] * (steps + warmup + 1),
                },
            },
            "optimizer": {"name": "adamw", "lr": 0.0003, "weightDecay": 0.1},
            "precision": "bf16",
            "compile": compile_,
            "maxSteps": steps + warmup,
            "batchSize": shape["batch"],
            "checkpoint": {"everySteps": 10**9, "asyncSave": True},
            "output": {"storage": f"file://{tmp}/models"},
        },
    }
    (out / "spec.yaml").write_text(yaml.safe_dump(manifest))
    run(torchrun(1), TORCHYARD_SPEC=str(out / "spec.yaml"), TORCHYARD_OUTPUT_DIR=str(out))
    evs = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    stepped = [e for e in evs if e["event"] == "step"]
    first = next(e for e in stepped if e["step"] >= warmup)
    last = stepped[-1]
    tps = (
        (last["step"] - first["step"])
        * shape["batch"]
        * shape["seq"]
        / (last["time"] - first["time"])
    )
    mfus = [e["mfu"] for e in stepped if e["step"] > first["step"] and "mfu" in e]
    return {"tokensPerSecond": tps, "mfu": mfus[-1] if mfus else float("nan")}


def plain(shape: dict[str, int], steps: int, warmup: int, compile_: bool) -> dict[str, float]:
    cmd = [
        sys.executable,
        str(BASELINE),
        "--d-model",
        str(shape["d"]),
        "--layers",
        str(shape["layers"]),
        "--heads",
        str(shape["heads"]),
        "--seq",
        str(shape["seq"]),
        "--vocab",
        str(shape["vocab"]),
        "--batch",
        str(shape["batch"]),
        "--steps",
        str(steps),
        "--warmup",
        str(warmup),
    ] + (["--compile"] if compile_ else [])
    return dict(json.loads(run(cmd).strip().splitlines()[-1]))


def gemm_ceiling() -> float:
    """Achieved bf16 TFLOP/s of one large matrix product on this GPU (median of 10 after 3
    warm-ups): the ceiling MFU is read against besides the datasheet peak."""
    import statistics

    import torch

    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    times = []
    for i in range(13):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        if i >= 3:
            times.append(start.elapsed_time(end) / 1e3)
    return float(2 * n**3 / statistics.median(times) / 1e12)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2, help="eager: ABBA pairs of plain/ours (1 = AB)")
    p.add_argument("--modes", default="eager,compile", help="comma list of eager, compile")
    p.add_argument("--smoke", action="store_true", help="tiny CPU shape: harness check only")
    args = p.parse_args()
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if not cuda and not args.smoke:
        raise SystemExit("no CUDA here: run on a GPU machine (or --smoke to check the harness)")
    shape = (
        {"d": 2048, "layers": 16, "heads": 16, "seq": 2048, "vocab": 32000, "batch": 8}
        if not args.smoke
        else {"d": 64, "layers": 2, "heads": 4, "seq": 64, "vocab": 256, "batch": 4}
    )
    rows: list[list[object]] = []
    figures: dict[str, object] = {}
    if cuda:
        figures["gemm_bf16_tflops"] = round(gemm_ceiling(), 1)
        rows.append(["bf16 GEMM 8192³ (ceiling)", None, None, None])
        print(f"bf16 GEMM: {figures['gemm_bf16_tflops']} TFLOP/s", file=sys.stderr)
    data: dict[str, object] = {
        "title": "GPT-style transformer on one GPU: tokens/s and MFU (bf16)"
        + (" — CPU SMOKE RUN, not a measurement" if args.smoke else ""),
        "description": (
            f"d_model {shape['d']}, {shape['layers']} layers, {shape['heads']} heads, seq "
            f"{shape['seq']}, batch {shape['batch']}, vocab {shape['vocab']}, fused AdamW, bf16 "
            f"autocast; steps {args.warmup}..{args.warmup + args.steps} timed; each mode run "
            "plain/ours in ABBA order (one AB pair per round), figures are the means. MFU "
            "against the datasheet dense bf16 peak (989 TFLOP/s); the GEMM row is what one "
            "8192³ bf16 matrix product reaches here. Target: worker ≥ 0.97× the plain loop."
        ),
        "machine": machine(),
        "table": {"columns": ["run", "tokens/s", "MFU", "ratio vs plain"], "rows": rows},
        "figures": figures,
    }
    if cuda:
        rows[-1][1] = f"{figures['gemm_bf16_tflops']} TFLOP/s"
    with tempfile.TemporaryDirectory() as d:
        for mode in args.modes.split(","):
            compile_ = mode == "compile"
            rounds = args.rounds if not compile_ else 1
            plains: list[dict[str, float]] = []
            mine: list[dict[str, float]] = []
            for r in range(rounds):
                # ABBA: the second of each pair starts with ours, so drift cancels
                order = ("plain", "ours") if r % 2 == 0 else ("ours", "plain")
                for who in order:
                    if who == "plain":
                        plains.append(plain(shape, args.steps, args.warmup, compile_))
                    else:
                        sub = Path(d) / f"{mode}-{r}"
                        sub.mkdir()
                        mine.append(ours(sub, shape, args.steps, args.warmup, compile_))
                    print(mode, who, (plains if who == "plain" else mine)[-1], file=sys.stderr)
            b_tps = statistics.mean(x["tokensPerSecond"] for x in plains)
            m_tps = statistics.mean(x["tokensPerSecond"] for x in mine)
            b_mfu = [x["mfu"] for x in plains if x.get("mfu") is not None]
            ratio = m_tps / b_tps
            figures[f"ratio_{mode}"] = round(ratio, 4)
            figures[f"plain_tokens_per_s_{mode}"] = [round(x["tokensPerSecond"]) for x in plains]
            figures[f"ours_tokens_per_s_{mode}"] = [round(x["tokensPerSecond"]) for x in mine]
            rows.append(
                [
                    f"plain loop ({mode})",
                    round(b_tps),
                    round(statistics.mean(b_mfu), 4) if b_mfu else None,
                    1.0,
                ]
            )
            rows.append(
                [
                    f"torchyard worker ({mode})",
                    round(m_tps),
                    round(statistics.mean(x["mfu"] for x in mine), 4),
                    round(ratio, 3),
                ]
            )
            print(rows[-2:], file=sys.stderr)
            if not args.smoke:  # after each mode: a run cut short keeps what it measured
                write("gpu_transformer", data)
    print(json.dumps(data, indent=2))


if __name__ == "__main__":
    main()
