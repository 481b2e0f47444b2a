"""Serving latency and throughput of a model version: fp32 vs its int8 and structured versions.

Each version is served by ``python -m torchyard_trainer.serve`` (one torch thread each, the
three servers up at once) and asked over real HTTP (keep-alive client, v2 JSON) by one client,
one request at a time. The variants are measured **interleaved**: in each of ``--rounds``
rounds every variant gets a warm-up request and then ``--requests`` timed ones, in an order
rotated by one per round, so a burst of load on this shared machine hits all of them alike.
Latency is client-side (request sent to answer parsed: what a caller feels); the ratios against
fp32 from the same run are what count here, absolute times only say how loaded the machine was.

Models: the digits MLP of the tests (64-128-64-10) and a wide one (64-2048-2048-1024-10) whose
Linear layers are big enough for int8 kernels and pruning to matter. Versions are made by the
project's own code (tests/worker/serve_versions.py: a short training run, then real
CompressionJobs: dynamic int8 per channel, structured pruning at 50 %).

Run: ``python bench/serving.py`` (writes bench/results/serving.json and the "Serving" section
of docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "## Serving:"
MODELS = {"digits-mlp": [128, 64], "wide-mlp": [2048, 2048, 1024]}
VARIANTS = ("fp32", "int8", "structured")


def _start(version_dir: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    from tests.worker.helpers import base_env, free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "torchyard_trainer.serve", "--model-dir", str(version_dir),
         "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0", "--threads", "1"],
        env=base_env(), stdout=log.open("w"), stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}/v2/models/{version_dir.parent.name}/infer"


def _wait(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    import httpx

    ready = url.split("/v2/")[0] + "/v2/health/ready"
    for _ in range(1200):
        if proc.poll() is not None:
            raise SystemExit(f"server exited {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(ready, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"server not ready:\n{log.read_text()}")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def measure(urls: dict[str, str], x: Any, rounds: int, requests: int) -> dict[str, Any]:
    """Interleaved rounds; per variant: every latency (s) and the total busy time."""
    import httpx

    body = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.reshape(-1).tolist()}]}).encode()
    headers = {"content-type": "application/json"}
    lat: dict[str, list[float]] = {v: [] for v in urls}
    order = list(urls)
    with httpx.Client(timeout=120) as client:
        for r in range(rounds):
            for v in order[r % len(order):] + order[: r % len(order)]:
                client.post(urls[v], content=body, headers=headers).raise_for_status()
                for _ in range(requests):
                    start = time.perf_counter()
                    client.post(urls[v], content=body, headers=headers).raise_for_status()
                    lat[v].append(time.perf_counter() - start)
    return lat


def _rows(model: str, versions: dict[str, Path], lat: dict[str, list[float]], batch: int
          ) -> list[dict[str, Any]]:
    base_p50 = _percentile(lat["fp32"], 50)
    base_rate = len(lat["fp32"]) / sum(lat["fp32"])
    rows = []
    for v, values in lat.items():
        card = json.loads((versions[v] / "model-card.json").read_text())
        rate = len(values) / sum(values)
        p50 = _percentile(values, 50)
        rows.append({
            "model": model, "variant": v, "batch": batch, "params": card["parameters"],
            "file KB": round(card["bytes"] / 1024, 1),
            "p50 ms": round(p50 * 1e3, 3), "p99 ms": round(_percentile(values, 99) * 1e3, 3),
            "req/s": round(rate, 1), "samples/s": round(rate * batch, 1),
            "p50 vs fp32": f"{base_p50 / p50:.2f}×", "throughput vs fp32":
                f"{rate / base_rate:.2f}×",
        })
    return rows


def bench_model(model: str, hidden: list[int], work: Path, args: argparse.Namespace
                ) -> list[dict[str, Any]]:
    from tests.worker.serve_versions import digits, make_versions

    versions = make_versions(work / model, hidden, epochs=args.epochs)
    servers = {v: _start(versions[v], work / f"{model}-{v}.log") for v in VARIANTS}
    rows: list[dict[str, Any]] = []
    try:
        for v, (proc, url) in servers.items():
            _wait(url, proc, work / f"{model}-{v}.log")
        urls = {v: url for v, (_, url) in servers.items()}
        val = digits().val_x.numpy()
        for batch in args.batches:
            lat = measure(urls, val[:batch], args.rounds, args.requests)
            rows += _rows(model, versions, lat, batch)
            print(json.dumps(rows[-len(VARIANTS):]), flush=True)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
        for proc, _ in servers.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return rows


def write_doc(result: dict[str, Any]) -> None:
    """Replace (or append) this benchmark's section of docs/benchmarks.md, nothing else."""
    sys.path.insert(0, str(ROOT / "bench"))
    from report import render_one

    section = "\n".join(render_one("serving", result)).rstrip() + "\n"
    text = DOC.read_text()
    start = text.find(SECTION)
    if start < 0:
        text = text.rstrip() + "\n\n" + section
    else:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + ("" if end < 0 else "\n" + text[end + 1:])
    DOC.write_text(text)


def result_of(rows: list[dict[str, Any]], rounds: int, requests: int) -> dict[str, Any]:
    return {
        "title": "Serving: fp32 vs int8 vs structured versions over HTTP (OIP v2, CPU)",
        "description": (
            "`python -m torchyard_trainer.serve` per version (1 torch thread each), one "
            f"keep-alive client, {rounds} interleaved rounds × {requests} requests "
            "per variant and batch (order rotated each round). Latency is client-side: JSON "
            "encode/decode and HTTP included. Ratios are against fp32 of the same run."),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, shared 2-core "
                   "dev machine (load from other users during the run)",
        "rows": rows,
        "notes": ["int8: dynamic int8 per channel (torch.ao); structured: 50 % of each hidden "
                  "layer's neurons removed (physically smaller Linear layers)."],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--models", nargs="+", default=list(MODELS))
    args = p.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        for model in args.models:
            rows += bench_model(model, MODELS[model], Path(tmp), args)
    result = result_of(rows, args.rounds, args.requests)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serving.json").write_text(json.dumps(result, indent=2) + "\n")
    write_doc(result)
    print(f"wrote {RESULTS / 'serving.json'} and the {SECTION!r} section of {DOC}")


if __name__ == "__main__":
    main()
