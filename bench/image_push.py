"""Push and pull of the CPU trainer image: `docker push` (gzip) beside `skopeo copy` (OCI, zstd),
which hack/images.sh uses since issue 13's from-nothing budget (docs/deploy.md).

Each run pushes the same built image (``make images`` first) to a registry of its own that
holds nothing yet (CNCF Distribution from hack/registry.sh on a free port, data in a temporary
folder), so no layer is skipped, then pulls it with containerd (``ctr images pull``: fetch and
unpack into a namespace of its own, removed after) the way a node does. Modes alternate
(ABBA with ``--rounds 2``), in one invocation. Writes bench/results/image_push.json and its
section of docs/benchmarks.md.

    .venv/bin/python bench/image_push.py [--rounds 1] [--image REF]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from _common import replace_doc_section  # noqa: E402

RESULTS = ROOT / "bench" / "results"
CACHE = Path(os.environ.get("TORCHYARD_CACHE", Path.home() / ".cache" / "torchyard"))
DOCKER = shutil.which("docker", path="/usr/bin") or "docker"
IMAGE = "127.0.0.1:5000/torchyard/trainer:dev-cpu"
CONTAINERD_SOCKETS = (
    "/run/containerd/containerd.sock",
    "/var/run/docker/containerd/containerd.sock",
)
MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json,"
    "application/vnd.docker.distribution.manifest.v2+json"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


class Registry:
    """An empty Distribution registry on a free port, data in a temporary folder."""

    def __init__(self, binary: Path) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ty-bench-registry-", dir=CACHE))
        self.addr = f"127.0.0.1:{_free_port()}"
        config = self.dir / "config.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {self.dir / 'data'}\nhttp:\n  addr: {self.addr}\n"
        )
        self.proc = subprocess.Popen(
            [str(binary), "serve", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://{self.addr}/v2/", timeout=2).close()
                return
            except OSError:
                time.sleep(0.2)
        raise SystemExit(f"bench registry on {self.addr} did not answer")

    def compressed_mb(self, repo: str, tag: str) -> float:
        req = urllib.request.Request(
            f"http://{self.addr}/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST_TYPES}
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            manifest = json.load(r)
        return round(sum(layer["size"] for layer in manifest["layers"]) / 1e6, 1)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


def _containerd() -> str:
    for sock in CONTAINERD_SOCKETS:
        if Path(sock).exists():
            return sock
    raise SystemExit("no containerd socket (Docker's containerd): run `make images` first")


def one_run(mode: str, image: str, registry_bin: Path, sock: str) -> dict[str, Any]:
    reg = Registry(registry_bin)
    repo, tag = "bench/trainer", uuid.uuid4().hex[:8]
    ref = f"{reg.addr}/{repo}:{tag}"
    ns = f"bench-{tag}"
    ctr = ["ctr", "--address", sock, "-n", ns]
    try:
        if mode == "docker push (gzip)":
            subprocess.run([DOCKER, "tag", image, ref], check=True)
            push_s = _run([DOCKER, "push", ref])
            subprocess.run([DOCKER, "rmi", ref], check=False, stdout=subprocess.DEVNULL)
        else:
            push_s = _run(
                [
                    "skopeo", "--insecure-policy", "copy", "--quiet", "--format", "oci",
                    "--dest-compress-format", "zstd", "--dest-tls-verify=false",
                    f"docker-daemon:{image}", f"docker://{ref}",
                ]
            )  # fmt: skip
        pull_s = _run([*ctr, "images", "pull", "--plain-http", ref])
        return {
            "mode": mode,
            "push_s": round(push_s, 1),
            "pull_and_unpack_s": round(pull_s, 1),
            "compressed_mb": reg.compressed_mb(repo, tag),
        }
    finally:
        subprocess.run([*ctr, "images", "rm", "--sync", ref], check=False, capture_output=True)
        subprocess.run(
            ["ctr", "--address", sock, "namespaces", "rm", ns], check=False, capture_output=True
        )
        reg.close()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=1, help="ABBA rounds (each: both modes)")
    ap.add_argument("--image", default=IMAGE)
    ap.add_argument("--note", action="append", default=[])
    args = ap.parse_args()
    registry_bin = CACHE / "bin" / "registry"
    if not registry_bin.exists():
        raise SystemExit("no registry binary: run `bash hack/registry.sh --build`")
    size_mb = round(
        int(subprocess.check_output([DOCKER, "image", "inspect", "-f", "{{.Size}}", args.image]))
        / 1e6,
        1,
    )
    sock = _containerd()
    modes = ["docker push (gzip)", "skopeo (OCI, zstd)"]
    runs = []
    load_start = os.getloadavg()[0]
    for r in range(args.rounds):
        for mode in modes if r % 2 == 0 else list(reversed(modes)):
            runs.append(one_run(mode, args.image, registry_bin, sock))
            print(json.dumps(runs[-1]), flush=True)
    summary = {}
    for mode in modes:
        mine = [run for run in runs if run["mode"] == mode]
        summary[mode] = {
            "push_s": sorted(run["push_s"] for run in mine)[len(mine) // 2],
            "pull_and_unpack_s": sorted(run["pull_and_unpack_s"] for run in mine)[len(mine) // 2],
            "compressed_mb": mine[0]["compressed_mb"],
        }
    gz, zs = (summary[m] for m in modes)
    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "image": args.image,
        "image_size_mb": size_mb,
        "load_avg_start": round(load_start, 2),
        "load_avg_end": round(os.getloadavg()[0], 2),
        "runs": runs,
        "summary": summary,
        "ratios_zstd_over_gzip": {
            k: round(zs[k] / gz[k], 3) for k in ("push_s", "pull_and_unpack_s", "compressed_mb")
        },
        "notes": args.note,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "image_push.json").write_text(json.dumps(out, indent=2) + "\n")
    render(out)
    print(json.dumps(out["ratios_zstd_over_gzip"]))


def render(out: dict[str, Any]) -> None:
    lines = [
        f"Machine: {out['machine']}; image {out['image']} ({out['image_size_mb']} MB); "
        f"load average {out['load_avg_start']} -> {out['load_avg_end']}",
        "",
        "| run | mode | push (s) | pull + unpack by containerd (s) | compressed (MB) |",
        "|---|---|---:|---:|---:|",
    ]
    for i, run in enumerate(out["runs"], 1):
        cells = [i, run["mode"], run["push_s"], run["pull_and_unpack_s"], run["compressed_mb"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    ratios = out["ratios_zstd_over_gzip"]
    lines += [
        "",
        f"zstd ÷ gzip (medians): push **{ratios['push_s']}×**, pull + unpack "
        f"**{ratios['pull_and_unpack_s']}×**, compressed size {ratios['compressed_mb']}×.",
    ]
    if out["notes"]:
        lines += [""] + [f"- {n}" for n in out["notes"]]
    title = "## Image push and pull: docker push (gzip) vs skopeo (zstd)"
    replace_doc_section(
        ROOT / "docs" / "benchmarks.md", title, title + "\n\n" + "\n".join(lines) + "\n"
    )


if __name__ == "__main__":
    main()
