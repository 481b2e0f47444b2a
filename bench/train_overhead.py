"""Runtime overhead of the torchyard DDP worker vs a bare torchrun DDP script.

Same model (MLP 768-512-512-10), same data (an npz the worker reads by file:// URI, the script
by path), same global batch, optimizer and step count, 2 ranks on CPU (gloo). Both time the same
window (steps warmup..end); runs alternate (baseline, ours, baseline, ours, ...) and the medians
are compared. Target: samples/s ratio ≥ 0.97.

    python bench/train_overhead.py [--repeats 3] [--steps 300]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml
from _common import ROOT, machine, run, torchrun, write

BASELINE = ROOT / "bench" / "baselines" / "ddp_plain.py"


def ours(
    tmp: Path,
    npz: Path,
    steps: int,
    warmup: int,
    batch: int,
    hidden: list[int],
    i: int,
    checkpoint_every: int | None,
) -> float:
    out = tmp / f"ours-{i}"
    manifest = {
        "apiVersion": "torchyard.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": f"overhead-{i}"},
        "spec": {
            "workers": 1,
            "procsPerWorker": 2,
            "model": {"builtin": "mlp", "args": {"hidden": hidden}},
            "data": {"uri": f"file://{npz}", "format": "npz", "validationFraction": 0.0},
            "optimizer": {"name": "adamw", "lr": 0.001},
            "epochs": 1000,
            "maxSteps": steps,
            "batchSize": batch,
            "checkpoint": {"everySteps": checkpoint_every or 10**9},
            "output": {"storage": f"file://{tmp}/models"},
        },
    }
    out.mkdir(parents=True)
    (out / "spec.yaml").write_text(yaml.safe_dump(manifest))
    run(torchrun(2), TORCHYARD_SPEC=str(out / "spec.yaml"), TORCHYARD_OUTPUT_DIR=str(out))
    evs = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    stepped = [e for e in evs if e["event"] == "step"]
    first = next(e for e in stepped if e["step"] >= warmup)
    last = stepped[-1]
    return (last["step"] - first["step"]) * batch / (last["time"] - first["time"])


def baseline(npz: Path, steps: int, warmup: int, batch: int, hidden: list[int]) -> float:
    out = run(
        [
            *torchrun(2),
            str(BASELINE),
            "--npz",
            str(npz),
            "--steps",
            str(steps),
            "--warmup",
            str(warmup),
            "--batch",
            str(batch),
            "--hidden",
            *map(str, hidden),
        ]
    )
    return float(json.loads(out.strip().splitlines()[-1])["samplesPerSecond"])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--samples", type=int, default=16384)
    p.add_argument("--features", type=int, default=768)
    args = p.parse_args()
    hidden = [512, 512]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rng = np.random.default_rng(1234)
        npz = tmp / "data.npz"
        np.savez(
            npz,
            x=rng.normal(size=(args.samples, args.features)).astype(np.float32),
            label=rng.integers(0, 10, size=args.samples).astype(np.int64),
        )
        base, mine, mine_ckpt = [], [], []
        for i in range(args.repeats):
            if i % 2:  # alternate who goes first, so drifting load favours neither
                mine.append(ours(tmp, npz, args.steps, args.warmup, args.batch, hidden, i, None))
                base.append(baseline(npz, args.steps, args.warmup, args.batch, hidden))
            else:
                base.append(baseline(npz, args.steps, args.warmup, args.batch, hidden))
                mine.append(ours(tmp, npz, args.steps, args.warmup, args.batch, hidden, i, None))
            mine_ckpt.append(
                ours(tmp, npz, args.steps, args.warmup, args.batch, hidden, 100 + i, 64)
            )
            print(
                f"run {i}: baseline {base[-1]:.0f}  ours {mine[-1]:.0f}  "
                f"ours+ckpt {mine_ckpt[-1]:.0f} samples/s",
                file=sys.stderr,
            )
    b, m, mc = (statistics.median(v) for v in (base, mine, mine_ckpt))
    # adjacent runs share the machine's load best: the median of per-pair ratios is the figure
    pair = statistics.median(o / x for o, x in zip(mine, base, strict=True))
    pair_ckpt = statistics.median(o / x for o, x in zip(mine_ckpt, base, strict=True))
    data = {
        "title": "DDP runtime overhead (CPU, 2 ranks, gloo)",
        "description": (
            f"torchyard worker vs a bare torchrun DDP script ({BASELINE.name}): MLP "
            f"{args.features}-{'-'.join(map(str, hidden))}-10, global batch {args.batch}, AdamW, "
            f"steps {args.warmup}..{args.steps} timed, {args.repeats} alternating runs; "
            "the ratio is the median of adjacent-pair ratios. "
            "Target: ratio ≥ 0.97."
        ),
        "machine": machine(),
        "table": {
            "columns": [
                "run",
                "samples/s (median)",
                "ratio of medians",
                "median pair ratio",
                "all runs",
            ],
            "rows": [
                [
                    "bare torchrun DDP script",
                    round(b, 1),
                    1.0,
                    1.0,
                    ", ".join(f"{v:.0f}" for v in base),
                ],
                [
                    "torchyard worker",
                    round(m, 1),
                    round(m / b, 3),
                    round(pair, 3),
                    ", ".join(f"{v:.0f}" for v in mine),
                ],
                [
                    "torchyard worker + async DCP checkpoint every 64 steps",
                    round(mc, 1),
                    round(mc / b, 3),
                    round(pair_ckpt, 3),
                    ", ".join(f"{v:.0f}" for v in mine_ckpt),
                ],
            ],
        },
        "ratio": round(pair, 4),
        "ratioWithCheckpoints": round(pair_ckpt, 4),
        "notes": [
            "The worker keeps its metrics endpoint, JSONL progress log and per-interval loss "
            "all-reduce on; the checkpoint row adds an async torch.distributed.checkpoint save "
            "every 64 steps inside the timed window.",
            "Shared 2-core machine: other processes compete for the cores; see all runs for "
            "the spread.",
        ],
    }
    print(json.dumps(data, indent=2))
    write("train_overhead", data)


if __name__ == "__main__":
    main()
