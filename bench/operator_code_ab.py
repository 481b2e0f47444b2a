"""Our operator before and after a change, in one run: the same burst of TrainingJobs on one
dev cluster, the operator started from an earlier revision's code (``--rev``) and from the
working tree in turn, ABBA, so that drift in the machine's load falls on both alike.

The figure to read is the operator's CPU seconds per burst (and its peak RSS): throughput at
these sizes is the control plane's on 2 shared cores and moves little with the operator's own
cost. Each run is bench/operator_scale.py's ``run_one`` (same measurements, same JSON keys),
the earlier code exported with ``git archive`` into a temporary directory and put first on
the operator process's PYTHONPATH.

    python bench/operator_code_ab.py --rev db731f1 [--jobs 1000] [--workers 1] [--nodes 200]

Writes bench/results/operator_code_ab_<jobs>x<workers>.json and its section of
docs/benchmarks-operator.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "operator"))

import operator_scale  # noqa: E402
from _common import replace_doc_section  # noqa: E402
from kubernetes import client  # noqa: E402

import torchyard_devcluster as devcluster  # noqa: E402

DOC = operator_scale.DOC
SECTION = "## Ours before and after a change (bench/operator_code_ab.py)"
KEYS = (
    "operator_cpu_s",
    "operator_peak_rss_mib",
    "operator_jobs_per_s",
    "jobs_per_s",
    "job_created_p50_s",
    "job_created_p99_s",
    "api_requests_per_job",
)


def export(rev: str, into: Path) -> str:
    """The operator package of ``rev`` under ``into``; returns the full commit id."""
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "archive", commit, "operator"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return commit


def head() -> str:
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "operator"], cwd=ROOT, capture_output=True, text=True
    )
    return out.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")


def _median(runs: list[dict[str, Any]], code: str) -> dict[str, float]:
    mine = [r for r in runs if r["code"] == code]
    return {
        k: round(statistics.median(r[k] for r in mine), 3)
        for k in KEYS
        if all(isinstance(r.get(k), int | float) for r in mine)
    }


def section(data: dict[str, Any]) -> str:
    cols = [
        ("CPU (s)", "operator_cpu_s"),
        ("peak RSS (MiB)", "operator_peak_rss_mib"),
        ("jobs/s (Job created)", "operator_jobs_per_s"),
        ("jobs/s (all pods)", "jobs_per_s"),
        ("submit→Job created p50 (s)", "job_created_p50_s"),
        ("p99 (s)", "job_created_p99_s"),
        ("API writes/job", "api_requests_per_job"),
    ]
    lines = [
        SECTION,
        "",
        f"`python bench/operator_code_ab.py --rev {data['rev']} --jobs {data['jobs']} "
        f"--workers {data['workers']} --nodes {data['nodes']}`: one burst per run on one dev "
        f"cluster ({data['nodes']} KWOK nodes × 8 GPUs), waited to all pods created, our "
        f"operator from {data['before']} (before) and from {data['after']} (after), in the "
        f"order {', '.join(data['order'])}. Machine: {data['machine']}.",
        "",
        "| run | code | " + " | ".join(c for c, _ in cols) + " | load 1m before/after |",
        "|---|---|" + "---:|" * (len(cols) + 1),
    ]
    for i, r in enumerate(data["runs"], 1):
        cells = " | ".join(str(r.get(k, "–")) for _, k in cols)
        lines.append(
            f"| {i} | {r['code']} | {cells} | {r['load_1m_before']}/{r['load_1m_after']} |"
        )
    for code in ("before", "after"):
        cells = " | ".join(str(data["medians"][code].get(k, "–")) for _, k in cols)
        lines.append(f"| median | {code} | {cells} | |")
    lines.append("")
    for k, v in data["ratios"].items():
        lines.append(f"- after ÷ before, {k}: **{v}**")
    lines += [f"- {n}" for n in data.get("notes", [])]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rev", required=True, help="the earlier revision (git)")
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--nodes", type=int, default=200)
    p.add_argument("--order", default="before,after,after,before")
    p.add_argument("--render", action="store_true", help="only rewrite the doc section")
    args = p.parse_args()
    out = ROOT / "bench" / "results" / f"operator_code_ab_{args.jobs}x{args.workers}.json"
    if args.render:
        replace_doc_section(DOC, SECTION, section(json.loads(out.read_text())))
        return
    order = args.order.split(",")
    cluster = devcluster.up(nodes=args.nodes, gpus_per_node=8, timeout=400)
    api = cluster.api_client()
    from torchyard_devcluster.crds import apply_crds

    apply_crds(api, ROOT / "crds")
    log_dir = ROOT / "bench" / "results" / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    original = os.environ.get("PYTHONPATH")
    with tempfile.TemporaryDirectory(prefix="torchyard-before-") as tmp:
        commit = export(args.rev, Path(tmp))
        paths = {"before": str(Path(tmp) / "operator"), "after": str(ROOT / "operator")}
        try:
            for i, code in enumerate(order):
                print(f"== run {i + 1}: {code}", flush=True)
                # First on the path: ahead of the editable install of the working tree.
                os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (paths[code], original) if p)
                r = operator_scale.run_one(
                    "torchyard",
                    cluster,
                    api,
                    args.jobs,
                    args.workers,
                    log_dir,
                    wait_gone=i < len(order) - 1,
                    wait="created",
                )
                r["code"] = code
                print(json.dumps({k: r.get(k) for k in ("code", *KEYS)}), flush=True)
                runs.append(r)
        finally:
            if original is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = original
    medians = {code: _median(runs, code) for code in ("before", "after")}
    ratios = {
        label: round(medians["after"][key] / medians["before"][key], 2)
        for label, key in (
            ("CPU seconds", "operator_cpu_s"),
            ("peak RSS", "operator_peak_rss_mib"),
            ("jobs/s to all pods", "jobs_per_s"),
        )
        if medians["before"].get(key) and medians["after"].get(key)
    }
    data = {
        "title": "Our operator before and after a change (same cluster, ABBA)",
        "rev": args.rev,
        "before": commit[:7],
        "after": head(),
        "jobs": args.jobs,
        "workers": args.workers,
        "nodes": args.nodes,
        "order": order,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}",
        "runs": runs,
        "medians": medians,
        "ratios": ratios,
        "notes": [],
    }
    out.write_text(json.dumps(data, indent=2) + "\n")
    replace_doc_section(DOC, SECTION, section(data))
    print(f"wrote {out} and {DOC}")
    if isinstance(api, client.ApiClient):
        api.close()


if __name__ == "__main__":
    main()
