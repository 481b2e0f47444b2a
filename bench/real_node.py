"""Real-node benchmark: bring-up time of a real node (kubelet + containerd + CNI + CoreDNS +
kube-proxy) on the dev cluster, pod start latency on it, and a clean teardown.

Runs its own dev cluster (state ``~/.cache/torchyard/dev-cluster-bench-real``, no KWOK nodes):

- ``build_s``: ``hack/build-node.sh`` (0 when cached; ``--cold`` forces a rebuild first),
- ``control_plane_up_s``: ``up(nodes=0)`` with cached control-plane binaries,
- ``real_node_up_s``: ``realnode.up(n=1)`` with cached node binaries (containerd, kubelet
  registered and Ready with ``nvidia.com/gpu``, kube-proxy and CoreDNS ready),
- ``pod_start_s``: create -> Running of a busybox pod (image already imported), ``--pods`` runs
  one after the other; p50/min/max,
- ``down_s`` and ``leftovers`` (what ``realclean.leftovers`` still finds after ``down``).

Needs root and Debian's containerd, runc, containernetworking-plugins, busybox-static.
Writes bench/results/real_node.json.

    python bench/real_node.py [--pods 5] [--cold]

``--jobs``: TrainingJobs on real pods instead, on the real tier's cluster
(``~/.cache/torchyard/dev-cluster-real``, kept running; tests/real/jobkit.py installs the chart
with the images ``make images`` pushed to the local registry, and makes a job namespace with a
local PV). Writes bench/results/real_node_jobs.json:

- ``apply_to_first_step_s``: ``kubectl apply -f examples/digits-ddp.yaml`` (a fresh name each
  time) -> the operator's ``status.progress.step`` >= 1, ``--runs`` times one after the other
  (the trainer image already on the node); p50/min/max;
- ``samples_per_s``: the same manifest run to its end on 2 real pods and, in the same
  invocation, with ``torchyard run`` on this machine: (steps between rank 0's first and last
  step line) x batchSize / (seconds between them), read from the same console lines (``kubectl
  logs`` of rank 0 / the local run's pod-0 log) both ways; ratio = pods / local;
- ``images``: size of each image (``docker image inspect``) and its compressed layers in the
  registry (what a node pulls).

    python bench/real_node.py --jobs [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))

from torchyard_devcluster import cluster, ociimage, paths, realclean, realnode  # noqa: E402

RESULTS = ROOT / "bench" / "results"
IMAGE = "torchyard.local/busybox:1"


def _image(state_dir: Path) -> None:
    archive = state_dir.parent / "bench-busybox.oci.tar"
    busybox = ociimage.ImageFile("bin/busybox", Path("/bin/busybox").read_bytes())
    ociimage.write_archive(archive, IMAGE, [busybox], entrypoint=["/bin/busybox"], cmd=["sh"])
    realnode.import_image(state_dir, archive)
    archive.unlink()


def _pod(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {
                    "name": "main",
                    "image": IMAGE,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["/bin/busybox", "sleep", "3600"],
                }
            ],
        },
    }


def _pod_start_latency(c: cluster.DevCluster, pods: int) -> list[float]:
    from kubernetes import client

    api = c.api_client()
    core: Any = client.CoreV1Api(api)
    out: list[float] = []
    try:
        for i in range(pods):
            name = f"bench-{i}"
            t0 = time.monotonic()
            core.create_namespaced_pod("default", _pod(name))
            while core.read_namespaced_pod(name, "default").status.phase != "Running":
                if time.monotonic() - t0 > 300:
                    raise SystemExit(f"pod {name} not Running after 300 s")
                time.sleep(0.05)
            out.append(round(time.monotonic() - t0, 3))
            core.delete_namespaced_pod(name, "default", grace_period_seconds=0)
    finally:
        api.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, default=5)
    ap.add_argument("--cold", action="store_true", help="rebuild the node binaries first")
    ap.add_argument("--jobs", action="store_true", help="TrainingJobs on real pods (see above)")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    if args.jobs:
        import real_jobs

        real_jobs.main(args.runs)
        return
    sdir = paths.cache_dir() / "dev-cluster-bench-real"
    result: dict[str, Any] = {
        "machine": f"{platform.node()}: {os.cpu_count()} cores",
        "load_avg_start": os.getloadavg()[0],
    }
    t = time.monotonic()
    if args.cold:
        subprocess.run(["bash", str(ROOT / "hack" / "build-node.sh"), "--force"], check=True)
    else:
        realnode.ensure_node_binaries()
    result["build_s"] = round(time.monotonic() - t, 1)
    t = time.monotonic()
    c = cluster.up(nodes=0, state_dir=sdir)
    result["control_plane_up_s"] = round(time.monotonic() - t, 2)
    nodes = None
    try:
        t = time.monotonic()
        realnode.up(c, n=1)
        result["real_node_up_s"] = round(time.monotonic() - t, 2)
        nodes = realnode.RealState.load(realnode.real_dir(sdir))
        _image(sdir)
        lat = _pod_start_latency(c, args.pods)
        result["pod_start_s"] = {
            "runs": lat,
            "p50": statistics.median(lat),
            "min": min(lat),
            "max": max(lat),
        }
    finally:
        t = time.monotonic()
        cluster.down(state_dir=sdir)
        result["down_s"] = round(time.monotonic() - t, 2)
    result["leftovers"] = realclean.leftovers(nodes.nodes if nodes else [])
    result["load_avg_end"] = os.getloadavg()[0]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "real_node.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
