"""Does the operator's memory grow with finished jobs? (issue 18)

One operator, several bursts in a row on a dev cluster of its own: each burst submits N
TrainingJobs with ``runPolicy.ttlSecondsAfterFinished: 5`` whose KWOK pods run ~1 s and
complete; the burst ends when every one of its jobs has Succeeded and been deleted by the
operator's TTL. After each burst (and before the first) the operator's resident memory (VmRSS)
and its peak (VmHWM) are read. If finished jobs left anything behind, RSS after burst k would
climb with k; memory the allocator keeps for reuse shows as a plateau from the first burst on.

    TORCHYARD_DEV_CLUSTER_DIR=/tmp/mem python bench/operator_memory.py \
        [--jobs 500] [--workers 1] [--bursts 3] [--nodes 100]

Writes bench/results/operator_memory.json and the "Memory over bursts" section of
docs/benchmarks-operator.md. Only our operator: the empty Kopf operator has no TTL.

``--tracemalloc``: where the memory is, not how much (tracing slows the operator and adds its
own overhead, so the RSS figures of such a run are not comparable): the operator runs with
``PYTHONTRACEMALLOC`` and writes the top allocation sites (by size, 10-frame tracebacks) after
each burst, while its jobs are live and at idle to bench/results/logs/memory-tracemalloc.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "operator_memory.json"
DOC = ROOT / "docs" / "benchmarks-operator.md"
SECTION = "## Memory over bursts (bench/operator_memory.py)"
SHARED_DIR = Path.home() / ".cache" / "torchyard" / "dev-cluster"
TTL_SECONDS = 5
# Loaded by the operator process (PYTHONPATH) with --tracemalloc: SIGUSR2 writes a snapshot's
# top allocation sites. A handler of the interpreter's own, so the operator's code is untouched.
SITECUSTOMIZE = """
import os, signal, tracemalloc

def _census(out):
    # TrainingJob bodies still alive (after a burst every job is deleted: each is a leak)
    # and, for three of them, what holds them, three referrers deep.
    import gc
    bodies = [o for o in gc.get_objects() if type(o) is dict and o.get("kind") == "TrainingJob"
              and isinstance(o.get("metadata"), dict)]
    out.write(f"=== census: {len(bodies)} TrainingJob bodies alive\\n")
    for body in bodies[:3]:
        out.write(f"  body {body['metadata'].get('name')}\\n")
        level = [body]
        mine = {id(bodies), id(level)}
        for depth in range(3):
            refs = [r for o in level for r in gc.get_referrers(o)
                    if id(r) not in mine and type(r).__name__ != "frame"]
            mine.add(id(refs))
            out.write(f"    {depth}: " + ", ".join(
                f"{type(r).__module__}.{type(r).__qualname__}" for r in refs[:6]) + "\\n")
            level = refs[:3]
            mine.add(id(level))

def _dump(signum, frame):
    with open(os.environ["TORCHYARD_TRACEMALLOC_OUT"], "a") as out:
        _census(out)
    if not tracemalloc.is_tracing():
        return
    snap = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)]
    )
    stats = snap.statistics("traceback")
    with open(os.environ["TORCHYARD_TRACEMALLOC_OUT"], "a") as out:
        total = sum(s.size for s in stats)
        out.write(f"=== snapshot: {total / 2**20:.1f} MiB traced in {len(stats)} sites\\n")
        for s in snap.statistics("filename")[:15]:
            out.write(f"  by file {s.size / 2**20:8.2f} MiB {s.count:8d} blocks {s.traceback}\\n")
        for s in stats[:25]:
            out.write(f"{s.size / 2**20:8.2f} MiB {s.count:8d} blocks\\n")
            for line in s.traceback.format()[-12:]:
                out.write(f"    {line}\\n")

signal.signal(signal.SIGUSR2, _dump)
"""

sys.path.insert(0, str(ROOT / "operator"))
sys.path.insert(0, str(ROOT / "bench"))

from _common import replace_doc_section  # noqa: E402
from kubernetes import client  # noqa: E402
from operator_scale import _manifest, _proc_stats, _rss_now, _start_operator  # noqa: E402

import torchyard_devcluster as devcluster  # noqa: E402


def _left(custom: Any, ns: str) -> int:
    # limit=1: the count is in remainingItemCount, not every object read each poll
    page = custom.list_namespaced_custom_object(
        "torchyard.io", "v1alpha1", ns, "trainingjobs", limit=1
    )
    return len(page["items"]) + int(page["metadata"].get("remainingItemCount") or 0)


def burst(
    custom: Any,
    ns: str,
    k: int,
    jobs: int,
    workers: int,
    timeout: float,
    on_submitted: Callable[[], None] = lambda: None,
) -> float:
    """Submit ``jobs`` jobs whose pods complete (no hold), call ``on_submitted`` (the jobs are
    live then) and wait until the operator has deleted them all. Seconds taken; raises if they
    are not gone in ``timeout``."""

    def submit(i: int) -> None:
        body = _manifest(f"b{k}-j{i:04d}", workers, TTL_SECONDS)
        body["spec"].pop("podMetadata")  # not held: KWOK completes the pods after ~1 s
        custom.create_namespaced_custom_object("torchyard.io", "v1alpha1", ns, "trainingjobs", body)

    t0 = time.time()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(submit, range(jobs)))
    on_submitted()
    deadline = time.monotonic() + timeout
    while (left := _left(custom, ns)) and time.monotonic() < deadline:
        time.sleep(2.0)
    if left:
        raise RuntimeError(f"burst {k}: {left} jobs not deleted after {timeout:.0f} s")
    return time.time() - t0


def section(data: dict[str, Any]) -> str:
    lines = [
        SECTION,
        "",
        f"One operator, {len(data['bursts'])} bursts of {data['jobs']} TrainingJobs × "
        f"{data['workers']} worker(s) in a row on {data['nodes']} KWOK nodes; each job's pods "
        f"run ~1 s and complete, the job Succeeds and the operator deletes it "
        f"{TTL_SECONDS} s later (`ttlSecondsAfterFinished`); a burst ends when all its jobs "
        "are gone. RSS = VmRSS read then (5 s after the last deletion), peak = VmHWM so far. "
        f"Machine: {data['machine']}.",
        "",
        "| after | jobs finished and deleted so far | seconds | RSS (MiB) | peak RSS (MiB) "
        "| CPU (s) | load 1m |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| start (idle) | 0 | – | {data['idle_rss_mib']} | {data['idle_peak_mib']} | – | "
        f"{data['load_1m_before']} |",
    ]
    for b in data["bursts"]:
        lines.append(
            f"| burst {b['burst']} | {b['finished_total']} | {b['seconds']} | {b['rss_mib']} | "
            f"{b['peak_rss_mib']} | {b['cpu_s']} | {b['load_1m']} |"
        )
    lines.append("")
    for note in data.get("notes", []):
        lines.append(f"- {note}")
    return "\n".join(lines) + "\n"


def write_doc(data: dict[str, Any]) -> None:
    replace_doc_section(DOC, SECTION, section(data))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--jobs", type=int, default=500)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--bursts", type=int, default=3)
    p.add_argument("--nodes", type=int, default=100)
    p.add_argument("--timeout", type=float, default=1200.0, help="seconds per burst")
    p.add_argument("--render", action="store_true", help="only rewrite the doc section")
    p.add_argument("--tracemalloc", action="store_true", help="allocation sites, not figures")
    p.add_argument(
        "--census-only",
        action="store_true",
        help="with --tracemalloc: only count live TrainingJob bodies and their holders",
    )
    args = p.parse_args()
    if args.render:
        write_doc(json.loads(RESULTS.read_text()))
        return
    state_dir = Path(os.environ.get("TORCHYARD_DEV_CLUSTER_DIR", SHARED_DIR))
    if state_dir.resolve() == SHARED_DIR.resolve():
        raise SystemExit("refusing the shared dev cluster: set TORCHYARD_DEV_CLUSTER_DIR")
    cluster = devcluster.up(nodes=args.nodes, gpus_per_node=8, timeout=400)
    api = cluster.api_client()
    from torchyard_devcluster.crds import apply_crds

    apply_crds(api, ROOT / "crds")
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    ns = f"mem-{uuid.uuid4().hex[:5]}"
    core.create_namespace({"metadata": {"name": ns}})
    time.sleep(2.0)  # the namespace's default ServiceAccount
    log_dir = ROOT / "bench" / "results" / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    trace_out = log_dir / "memory-tracemalloc.txt"
    if args.tracemalloc:
        site = log_dir / "memory-site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
        trace_out.unlink(missing_ok=True)
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(site), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        if not args.census_only:
            os.environ["PYTHONTRACEMALLOC"] = "10"
        os.environ["TORCHYARD_TRACEMALLOC_OUT"] = str(trace_out)
    proc, _port = _start_operator("torchyard", ns, cluster.kubeconfig, log_dir / "memory.log")

    def snapshot() -> None:
        if args.tracemalloc:
            proc.send_signal(signal.SIGUSR2)
            time.sleep(15.0)  # a traced snapshot of ~100 MiB takes seconds

    bursts: list[dict[str, Any]] = []
    try:
        cpu0, peak0 = _proc_stats(proc.pid)
        idle = round(_rss_now(proc.pid), 1)
        load0 = round(os.getloadavg()[0], 2)
        snapshot()
        for k in range(1, args.bursts + 1):
            seconds = burst(custom, ns, k, args.jobs, args.workers, args.timeout, snapshot)
            time.sleep(5.0)  # the operator forgets a job on its delete event
            cpu, peak = _proc_stats(proc.pid)
            bursts.append(
                {
                    "burst": k,
                    "finished_total": k * args.jobs,
                    "seconds": round(seconds, 1),
                    "rss_mib": round(_rss_now(proc.pid), 1),
                    "peak_rss_mib": round(peak, 1),
                    "cpu_s": round(cpu - cpu0, 2),
                    "load_1m": round(os.getloadavg()[0], 2),
                }
            )
            print(json.dumps(bursts[-1]), flush=True)
            snapshot()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        core.delete_namespace(ns, propagation_policy="Background")
    rss = [b["rss_mib"] for b in bursts]
    data = {
        "title": "Operator memory over bursts of finished, TTL-deleted jobs",
        "jobs": args.jobs,
        "workers": args.workers,
        "nodes": args.nodes,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "idle_rss_mib": idle,
        "idle_peak_mib": round(peak0, 1),
        "load_1m_before": load0,
        "bursts": bursts,
        "rss_growth_after_first_burst_mib": round(rss[-1] - rss[0], 1) if len(rss) > 1 else None,
        "rss_growth_per_1000_jobs_after_first_mib": (
            round((rss[-1] - rss[0]) / ((len(rss) - 1) * args.jobs) * 1000, 1)
            if len(rss) > 1
            else None
        ),
        "notes": [],
    }
    if args.tracemalloc:
        print(f"allocation sites: {trace_out} (figures not written: tracing distorts them)")
        return
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    write_doc(data)
    print(json.dumps({k: v for k, v in data.items() if k != "bursts"}))
    api.close()


if __name__ == "__main__":
    main()
