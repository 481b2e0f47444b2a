"""``python bench/real_node.py --jobs``: TrainingJobs on real pods (see bench/real_node.py)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "operator"))

from tests.real import conftest as real  # noqa: E402
from tests.real import jobkit  # noqa: E402

import torchyard_devcluster as devcluster  # noqa: E402
from torchyard_devcluster import cluster, realnode  # noqa: E402
from torchyard_devcluster.testing import Kube, poll  # noqa: E402

RESULTS = ROOT / "bench" / "results"
MANIFEST = ROOT / "examples" / "digits-ddp.yaml"


def _pinned(ref: str) -> str:
    digest = real._pushed_digest(ref)
    if digest is None:
        raise SystemExit(f"{ref} is not in the local registry: run `make images` first")
    return f"{ref.rpartition(':')[0]}@{digest}"


def _manifest(name: str) -> str:
    doc = yaml.safe_load(MANIFEST.read_text())
    doc["metadata"]["name"] = name
    return str(yaml.safe_dump(doc))


def _step(kube: Kube, ns: str, name: str) -> int:
    status = jobkit.get_job(kube, ns, name).get("status") or {}
    return int((status.get("progress") or {}).get("step") or 0)


def _gone(kube: Kube, ns: str, prefix: str) -> bool:
    return not jobkit.worker_pods(kube, ns, prefix)


def first_step(c: devcluster.DevCluster, kube: Kube, ns: str, runs: int) -> list[float]:
    """apply -> status.progress.step >= 1, one job at a time (each deleted, pods gone, after)."""
    out: list[float] = []
    for i in range(runs):
        name = f"first-step-{i}-{uuid.uuid4().hex[:4]}"
        t0 = time.monotonic()
        c.kubectl("apply", "-n", ns, "-f", "-", input=_manifest(name))
        poll(lambda n=name: _step(kube, ns, n) >= 1, timeout=900, interval=0.1, what=f"{name} step")
        out.append(round(time.monotonic() - t0, 2))
        c.kubectl("delete", "trainingjob", "-n", ns, name, "--wait=false")
        poll(lambda n=name: _gone(kube, ns, n), timeout=300, what=f"{name} pods gone")
    return out


def samples_per_second(log: str, batch: int) -> dict[str, float]:
    """From rank 0's console step lines (torchyard_trainer/console.py): the first and the last
    ``<asctime> rank0 INFO step N/T ...`` line."""
    points: list[tuple[int, datetime]] = []
    for line in log.splitlines():
        head, sep, rest = line.partition(" rank0 INFO step ")
        if not sep:
            continue
        step = int(rest.split("/")[0])
        points.append((step, datetime.strptime(head.strip()[-23:], "%Y-%m-%d %H:%M:%S,%f")))
    if len(points) < 2:
        raise SystemExit(f"fewer than 2 step lines in the log:\n{log[-2000:]}")
    (s0, t0), (s1, t1) = points[0], points[-1]
    seconds = (t1 - t0).total_seconds()
    return {
        "steps": s1 - s0,
        "seconds": round(seconds, 2),
        "samples_per_s": (s1 - s0) * batch / seconds,
    }


def on_pods(c: devcluster.DevCluster, kube: Kube, ns: str, batch: int) -> dict[str, float]:
    name = "digits-ddp"
    c.kubectl("apply", "-n", ns, "-f", str(MANIFEST))
    job = jobkit.wait_finished(kube, ns, name)
    if job["status"]["phase"] != "Succeeded":
        raise SystemExit(f"{name} on real pods: {job['status']}")
    pods = jobkit.worker_pods(kube, ns, name)
    rank0 = next(p.metadata.name for p in pods if jobkit.completion_index(p) == "0")
    return samples_per_second(c.kubectl("logs", "-n", ns, rank0).stdout, batch)


def local(batch: int) -> dict[str, float]:
    torchyard = str(Path(sys.executable).parent / "torchyard")
    with tempfile.TemporaryDirectory(prefix="bench-real-") as tmp:
        subprocess.run([torchyard, "run", str(MANIFEST)], cwd=tmp, check=True, capture_output=True)
        log = (Path(tmp) / "torchyard-runs" / "digits-ddp" / "pod-0" / "log.txt").read_text()
    return samples_per_second(log, batch)


def images() -> list[dict[str, Any]]:
    import httpx

    rows = []
    for ref in (real.OPERATOR_REF, real.TRAINER_REF):
        size = subprocess.run(
            ["docker", "image", "inspect", "-f", "{{.Size}}", ref],
            capture_output=True,
            text=True,
        ).stdout.strip()
        host, _, rest = ref.partition("/")
        repo, _, tag = rest.rpartition(":")
        accept = "application/vnd.docker.distribution.manifest.v2+json,"
        accept += "application/vnd.oci.image.manifest.v1+json"
        manifest = httpx.get(
            f"http://{host}/v2/{repo}/manifests/{tag}", headers={"Accept": accept}
        ).json()
        pulled = sum(int(layer["size"]) for layer in manifest.get("layers", []))
        rows.append(
            {
                "image": ref,
                "sizeMB": round(int(size) / 1e6, 1) if size.isdigit() else None,
                "pulledCompressedMB": round(pulled / 1e6, 1),
            }
        )
    return rows


def main(runs: int) -> None:
    sdir = real.real_state_dir()
    c = devcluster.up(nodes=0, state_dir=sdir, pod_network=True)
    mark = cluster.register_user(sdir)
    result: dict[str, Any] = {
        "title": "Real pods: apply -> first step, 2-pod job vs torchyard run, image sizes",
        "machine": f"{platform.node()}: {os.cpu_count()} cores",
        "load_avg_start": os.getloadavg()[0],
    }
    batch = int(yaml.safe_load(MANIFEST.read_text())["spec"]["batchSize"])
    try:
        realnode.up(c, n=1, gpus=real.REAL_GPUS)
        kube = Kube.connect(c)
        operator, trainer = _pinned(real.OPERATOR_REF), _pinned(real.TRAINER_REF)
        with (
            jobkit.chart_release(c, kube, operator, trainer),
            jobkit.jobs_namespace(c, kube) as ns,
        ):
            lat = first_step(c, kube, ns, runs)
            pods = on_pods(c, kube, ns, batch)
        here = local(batch)
        kube.close()
    finally:
        cluster.unregister_user(mark)
    result["apply_to_first_step_s"] = {
        "runs": lat,
        "p50": statistics.median(lat),
        "min": min(lat),
        "max": max(lat),
    }
    result["samples_per_s"] = {
        "two_real_pods": pods,
        "torchyard_run": here,
        "ratio_pods_over_local": round(pods["samples_per_s"] / here["samples_per_s"], 3),
    }
    result["images"] = images()
    result["load_avg_end"] = os.getloadavg()[0]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "real_node_jobs.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {path}", file=sys.stderr)
