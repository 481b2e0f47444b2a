"""Measurements and the report: accuracy, parameters, non-zero parameters, bytes on disk and
CPU latency of a model, baseline ÷ compressed ratios, and the human table.

Every figure is measured on the model as it is *saved* (the same tensors that go into
``model.safetensors``), so a test or a user can recompute each of them from the model version.
"""

from __future__ import annotations

import contextlib
import platform
import statistics
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save as st_save
from torch import nn

from torchyard_trainer.compress import layers
from torchyard_trainer.compress.context import Context
from torchyard_trainer.compress.fidelity import gate_passes, gate_scores
from torchyard_trainer.compress.stored import export_state

if TYPE_CHECKING:
    from torchyard.api.compression import AccuracyCriterion


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def saved_bytes(model: nn.Module) -> int:
    """Size of ``model.safetensors`` as the model version would store it."""
    tensors, _ = export_state(model)
    return len(st_save(tensors, metadata={"format": "pt"}))


def param_counts(model: nn.Module) -> tuple[int, int]:
    """(parameters, non-zero parameters); quantized layers count their logical weights."""
    total = nz = 0
    for _, t in layers.logical_weights(model):
        total += t.numel()
        nz += int(torch.count_nonzero(t))
    return total, nz


@torch.no_grad()
def latency_ms(model: nn.Module, x: torch.Tensor, n_threads: int, repeats: int = 30,
               warmup: int = 10) -> float:
    """p50 wall time of one forward pass over the batch ``x`` on ``n_threads`` CPU threads."""
    model.eval()
    with threads(n_threads):
        t_end = time.perf_counter() + 0.2  # first calls pay one-time set-up: not latency
        for i in range(10_000):
            model(x)
            if i >= warmup and time.perf_counter() > t_end:
                break
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def linear_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of the Linear/Conv2d layers for one forward of ``x``."""
    total = [0]

    def hook(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        if isinstance(m, nn.Conv2d):
            k = m.weight[0].numel()
            total[0] += out.numel() * k
        elif isinstance(m, nn.Linear | layers.QuantLinear):
            fan_in = m.in_features
            total[0] += out.numel() * fan_in

    hs = [m.register_forward_hook(hook) for m in model.modules()
          if isinstance(m, nn.Linear | nn.Conv2d | layers.QuantLinear)]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in hs:
            h.remove()
    return total[0]


def latency_batch(ctx: Context) -> torch.Tensor:
    """The input of every latency figure (also compress/timing.py's interleaved rounds)."""
    return ctx.ds.val_x[: min(len(ctx.ds.val_x), ctx.batch_size)]


def measure(model: nn.Module, ctx: Context, n_threads: int, with_latency: bool = True
            ) -> dict[str, Any]:
    params, nz = param_counts(model)
    batch = latency_batch(ctx)
    return {
        **gate_scores(model, ctx),
        "params": params,
        "nonZeroParams": nz,
        "bytes": saved_bytes(model),
        "latencyMs": round(latency_ms(model, batch, n_threads), 4) if with_latency else None,
    }


def ratios(base: dict[str, Any], comp: dict[str, Any]) -> dict[str, float | None]:
    def r(key: str) -> float | None:
        b, c = base.get(key), comp.get(key)
        return round(b / c, 4) if b and c else None

    return {"size": r("bytes"), "params": r("nonZeroParams"), "speedup": r("latencyMs")}


def versions() -> str:
    parts = [f"torch {torch.__version__}"]
    try:  # the version only: importing torchao costs seconds and logs at import
        from importlib.metadata import version

        parts.append(f"torchao {version('torchao')}")
    except Exception:
        pass
    parts.append(f"python {platform.python_version()} ({platform.machine()})")
    return ", ".join(parts)


def passes(baseline: float, value: float, criterion: AccuracyCriterion) -> bool:
    """The gate: the metric worsens by at most tolerableLoss (absolute units, or a fraction of
    the baseline) — a drop for accuracy-like metrics, a rise for perplexity and kl."""
    return gate_passes(baseline, value, criterion)


FIDELITY_ROWS = (("fidelityMean", "cosine mean"), ("fidelityWorst", "cosine p{p} (worst)"),
                 ("top1Agreement", "top-1 agreement"), ("kl", "KL(original ‖ model)"),
                 ("perplexity", "perplexity"))


def _fidelity_rows(report: dict[str, Any], b: dict[str, Any], c: dict[str, Any]) -> list[str]:
    """Rows of the fidelity figures the stats hold (the candidate against the original)."""
    p = report.get("percentile", 5)
    gated = {"cosine": "fidelityMean"}.get(str(report.get("metric")), report.get("metric"))
    rows = []
    for key, label in FIDELITY_ROWS:
        if c.get(key) is None or key == gated:  # the gate's own row is the first one
            continue
        base = "-" if b.get(key) is None else f"{b[key]:.4f}"
        rows.append(f"| {label.format(p=p)} | {base} | {c[key]:.4f} | |")
    return rows


def table(report: dict[str, Any]) -> str:
    """A human table of the report (Markdown)."""
    b, c = report.get("baseline") or {}, report.get("compressed") or {}
    rat = report.get("ratios") or {}

    def f(v: Any, fmt: str = "{}") -> str:
        return "-" if v is None else fmt.format(v)

    lines = [
        "| | baseline | compressed | ratio |", "|---|---|---|---|",
        f"| {report.get('metric', 'accuracy')} | {f(b.get('accuracy'), '{:.4f}')} | "
        f"{f(c.get('accuracy'), '{:.4f}')} | Δ {f(report.get('accuracyDelta'), '{:+.4f}')} |",
        *_fidelity_rows(report, b, c),
        f"| params | {f(b.get('params'))} | {f(c.get('params'))} | |",
        f"| non-zero params | {f(b.get('nonZeroParams'))} | {f(c.get('nonZeroParams'))} | "
        f"{f(rat.get('params'), '{:.2f}×')} |",
        f"| bytes on disk | {f(b.get('bytes'))} | {f(c.get('bytes'))} | "
        f"{f(rat.get('size'), '{:.2f}×')} |",
        f"| CPU latency p50 (ms, {report.get('threads')} threads) | "
        f"{f(b.get('latencyMs'), '{:.3f}')} | {f(c.get('latencyMs'), '{:.3f}')} | "
        f"{f(rat.get('speedup'), '{:.2f}× speedup')} |",
        "",
        f"Gate passed: {report.get('passed')}  ·  backend: {report.get('backend')}",
    ]
    if report.get("summary"):
        lines += ["", f"Summary: {report['summary']}"]
    trials = report.get("trials") or []
    if trials:
        lines += ["", f"| trial | passed | {report.get('metric', 'accuracy')} | non-zero params "
                  "| bytes | latency ms |",
                  "|---|---|---|---|---|---|"]
        for t in trials:
            s = t.get("stats") or {}
            lines.append(
                f"| {t['name']} | {t['passed']} | {f(s.get('accuracy'), '{:.4f}')} | "
                f"{f(s.get('nonZeroParams'))} | {f(s.get('bytes'))} | "
                f"{f(s.get('latencyMs'), '{:.3f}')} |"
            )
    for w in report.get("warnings") or []:
        lines.append(f"- warning: {w}")
    return "\n".join(lines) + "\n"
