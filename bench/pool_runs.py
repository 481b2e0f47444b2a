"""Ours ÷ another system over every run of several result files, with an interval.

One file of bench/operator_scale.py or bench/kubeflow_compare.py holds two runs of each
system (ABBA), and on this shared 2-core machine single runs of one system move by 5-60 %
and the first slot runs on a quieter machine: one file cannot tell "level" from "1.03x".
This pools the files measured on the same code:

- per file, ratio of the means (ours ÷ the other) of a figure over that file's runs;
- pooled, the geometric mean of those per-file ratios (each file one vote: jobs/s of a
  1,000 x 4 burst and of a 2,000 x 1 burst differ by 2x, a plain mean of runs would weigh
  the larger burst more);
- a 95 % interval of the pooled ratio: a stratified bootstrap (runs resampled with
  replacement within each file and system, 20,000 times, fixed seed: the same files give
  the same interval);
- the slot check: the pooled ratio over the files where ours ran first and over those where
  the other system ran first (a position effect shows as the two disagreeing).

Figures: ``jobs_per_s`` (to all pods created) and the operator's own share (to its child
created: ``operator_jobs_per_s`` of operator_scale, ``child_jobs_per_s`` of
kubeflow_compare).

    python bench/pool_runs.py FILE... [--ours torchyard] [--other baseline] [--out JSON]
        [--code REV]  # the operator code the files share, named in the section
        [--render]    # also write the section of docs/benchmarks-operator.md
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks-operator.md"
SECTION = "## Ours ÷ the empty Kopf operator over many runs (bench/pool_runs.py)"
RESAMPLES = 20_000
SEED = 0

sys.path.insert(0, str(ROOT / "bench"))
from _common import replace_doc_section  # noqa: E402

#: figure -> the keys that hold it in either harness's run records
FIGURES: dict[str, tuple[str, ...]] = {
    "jobs/s to all pods created": ("jobs_per_s",),
    "jobs/s to the child created (the operator's own share)": (
        "operator_jobs_per_s",
        "child_jobs_per_s",
    ),
}


def _system(run: dict[str, Any]) -> str:
    return str(run.get("operator") or run.get("system"))


def _value(run: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    for key in keys:
        v = run.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool) and v > 0:
            return float(v)
    return None


def _samples(
    data: dict[str, Any], ours: str, other: str, keys: tuple[str, ...]
) -> tuple[list[float], list[float]]:
    runs = data["runs"]
    a = [v for r in runs if _system(r) == ours and (v := _value(r, keys)) is not None]
    b = [v for r in runs if _system(r) == other and (v := _value(r, keys)) is not None]
    return a, b


def _geomean(xs: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(x) for x in xs))


def _ratio_of_means(a: list[float], b: list[float]) -> float:
    return statistics.fmean(a) / statistics.fmean(b)


def _pooled(per_file: list[tuple[list[float], list[float]]]) -> float:
    """Geometric mean over files of each file's ratio of the means."""
    return _geomean([_ratio_of_means(a, b) for a, b in per_file])


def pooled_ratio(
    per_file: list[tuple[list[float], list[float]]], resamples: int = RESAMPLES, seed: int = SEED
) -> tuple[float, float, float]:
    """Geometric mean over files of (mean ours ÷ mean other), and its 95 % stratified
    bootstrap interval (resampling runs within each file and system)."""
    point = _pooled(per_file)
    rng = random.Random(seed)
    boots = [
        _pooled([(rng.choices(a, k=len(a)), rng.choices(b, k=len(b))) for a, b in per_file])
        for _ in range(resamples)
    ]
    boots.sort()
    lo, hi = boots[int(0.025 * resamples)], boots[int(0.975 * resamples) - 1]
    return point, lo, hi


def pool(paths: list[Path], ours: str, other: str) -> dict[str, Any]:
    files = []
    for path in paths:
        data = json.loads(path.read_text())
        first = next((_system(r) for r in data["runs"] if _system(r) in (ours, other)), None)
        entry: dict[str, Any] = {
            "file": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
            "size": f"{data['jobs']} x {data['workers']}",
            "first": first,
            "figures": {},
        }
        for name, keys in FIGURES.items():
            a, b = _samples(data, ours, other, keys)
            if a and b:
                entry["figures"][name] = {
                    ours: a,
                    other: b,
                    "ratio_of_means": round(_ratio_of_means(a, b), 3),
                }
        files.append(entry)
    out: dict[str, Any] = {
        "title": f"{ours} ÷ {other} over {len(files)} files",
        "method": (
            "per file the ratio of the means; pooled the geometric mean of the per-file "
            f"ratios; 95% interval: stratified bootstrap, {RESAMPLES:,} resamples, seed {SEED}"
        ),
        "ours": ours,
        "other": other,
        "files": files,
        "pooled": {},
    }
    for name in FIGURES:
        have = [f for f in files if name in f["figures"]]
        if not have:
            continue
        samples = [(f["figures"][name][ours], f["figures"][name][other]) for f in have]
        point, lo, hi = pooled_ratio(samples)
        by_first = {}
        for who in (ours, other):
            sub = [
                (f["figures"][name][ours], f["figures"][name][other])
                for f in have
                if f["first"] == who
            ]
            if sub:
                by_first[f"{who} first"] = {
                    "files": len(sub),
                    "ratio": round(_pooled(sub), 3),
                }
        out["pooled"][name] = {
            "files": len(have),
            "runs": sum(len(a) + len(b) for a, b in samples),
            "ratio": round(point, 3),
            "ci95": [round(lo, 3), round(hi, 3)],
            "by_first_slot": by_first,
        }
    return out


def section(data: dict[str, Any]) -> str:
    ours, other = data["ours"], data["other"]
    lines = [
        SECTION,
        "",
        "`python bench/pool_runs.py FILE...`: the files below, "
        + (f"all measured on operator code {data['code']}; " if data.get("code") else "")
        + f"{data['method']}. One file of two runs per system cannot separate level from a "
        "few percent on this machine; this can say how far apart they are.",
        "",
        "| file | size | first slot | figure | "
        + f"{ours} (jobs/s) | {other} (jobs/s) | ratio of means |",
        "|---|---|---|---|---|---|---:|",
    ]
    for f in data["files"]:
        for name, fig in f["figures"].items():
            a = ", ".join(f"{v:g}" for v in fig[ours])
            b = ", ".join(f"{v:g}" for v in fig[other])
            lines.append(
                f"| {Path(f['file']).name} | {f['size']} | {f['first']} | {name} | {a} | {b} | "
                f"{fig['ratio_of_means']} |"
            )
    lines.append("")
    for name, p in data["pooled"].items():
        slots = "; ".join(
            f"{k}: {v['ratio']} ({v['files']} files)" for k, v in p["by_first_slot"].items()
        )
        lines.append(
            f"- {name}: **{p['ratio']}x** {ours} ÷ {other} over {p['files']} files "
            f"({p['runs']} runs), 95% interval {p['ci95'][0]}–{p['ci95'][1]}; "
            f"by first slot: {slots}"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("files", type=Path, nargs="+")
    p.add_argument("--ours", default="torchyard")
    p.add_argument("--other", default="baseline")
    p.add_argument("--out", type=Path, help="write the pooled figures as JSON")
    p.add_argument("--code", help="the operator code every file was measured on (a revision)")
    p.add_argument("--render", action="store_true", help=f"write '{SECTION}' of {DOC.name}")
    args = p.parse_args()
    data = pool([f.resolve() for f in args.files], args.ours, args.other)
    if args.code:
        data["code"] = args.code
    if args.out:
        args.out.write_text(json.dumps(data, indent=2) + "\n")
    if args.render:
        replace_doc_section(DOC, SECTION, section(data))
    print(section(data))


if __name__ == "__main__":
    main()
