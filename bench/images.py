"""Image sizes and `make images` times (issue 13): what hack/images.sh builds and pushes.

Runs hack/images.sh twice in one invocation (TRAINER_VARIANTS limits what is rebuilt):
  cold   the built images and Docker's build cache removed (the stand-in base, the wheelhouse
         and the registry binary stay cached: they are downloads, timed by --from-nothing);
  warm   straight after, nothing changed (what a second `make images` costs);
and records each image's size (`docker image inspect`), its compressed size in the registry
(the manifest's layers: what a node pulls) and the base image's size, the same-run baseline
that shows what the image adds. --from-nothing also moves the stand-in tarball and the
wheelhouse aside first (they are put back if the run fails), so "cold" includes mmdebstrap and
the downloads. Writes bench/results/images.json and regenerates docs/benchmarks.md.

    .venv/bin/python bench/images.py [--from-nothing]
    .venv/bin/python bench/images.py --sizes-only --note "..."   # no builds: sizes of what is built
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CACHE = Path(os.environ.get("TORCHYARD_CACHE", Path.home() / ".cache" / "torchyard"))
REGISTRY = os.environ.get("TORCHYARD_REGISTRY_ADDR", "127.0.0.1:5000")
TAG = os.environ.get("IMAGE_TAG", "dev")
STANDIN = "torchyard/stand-in-python:3-bookworm"
DOCKER = shutil.which("docker", path="/usr/bin") or "docker"
IMAGES = {
    "operator": f"{REGISTRY}/torchyard/operator:{TAG}",
    "trainer (CUDA)": f"{REGISTRY}/torchyard/trainer:{TAG}",
    "trainer (CPU)": f"{REGISTRY}/torchyard/trainer:{TAG}-cpu",
}
MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
    ]
)


def docker(*args: str) -> str:
    res = subprocess.run([DOCKER, *args], text=True, capture_output=True, check=False)
    return res.stdout.strip() if res.returncode == 0 else ""


def make_images() -> tuple[float, dict[str, float], str]:
    """One hack/images.sh run: wall seconds, per-image build seconds, its output."""
    start = time.perf_counter()
    res = subprocess.run(
        ["bash", str(ROOT / "hack" / "images.sh")], text=True, capture_output=True, check=False
    )
    wall = time.perf_counter() - start
    if res.returncode != 0:
        raise SystemExit(f"hack/images.sh failed:\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}")
    builds = {tag: float(sec) for tag, sec in re.findall(r"built (\S+) in (\d+)s", res.stderr)}
    return wall, builds, res.stdout


def rebuilt() -> list[str]:
    """The images hack/images.sh builds with this environment (TRAINER_VARIANTS)."""
    variants = os.environ.get("TRAINER_VARIANTS", "cpu cuda").split()
    names = ["operator"] + [f"trainer ({v.upper()})" for v in variants]
    return [IMAGES[n] for n in names]


def forget_builds() -> None:
    """Remove the images about to be built and the build cache (not the base, not the
    downloads); an image of a variant not rebuilt stays, with its earlier size."""
    for image in rebuilt():
        docker("rmi", "--force", image)
    docker("builder", "prune", "--all", "--force")


def registry_bytes(image: str) -> int | None:
    """Sum of the compressed layers (and config) in the registry's manifest of image."""
    host, _, rest = image.partition("/")
    repo, _, tag = rest.rpartition(":")
    req = urllib.request.Request(
        f"http://{host}/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST_TYPES}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            manifest = json.load(resp)
    except OSError:
        return None
    return int(manifest["config"]["size"]) + sum(int(x["size"]) for x in manifest["layers"])


def size(image: str) -> int | None:
    out = docker("image", "inspect", "-f", "{{.Size}}", image)
    return int(out) if out else None


def mb(n: int | None) -> float | None:
    return None if n is None else round(n / 1e6, 1)


def rows(cold: dict[str, float], warm: dict[str, float]) -> list[dict[str, Any]]:
    base = size(STANDIN)
    out = []
    for name, image in IMAGES.items():
        own = size(image)
        out.append(
            {
                "image": name,
                "tag": image,
                "sizeMB": mb(own),
                "baseMB": mb(base),
                "addedMB": mb(None if own is None or base is None else own - base),
                "pushedCompressedMB": mb(registry_bytes(image)),
                "coldBuildSeconds": cold.get(image),
                "warmBuildSeconds": warm.get(image),
            }
        )
    return out


def move_downloads_aside() -> list[tuple[Path, Path]]:
    moved = []
    for path in [CACHE / "wheelhouse", *sorted((CACHE / "images").glob("stand-in-*.tar"))]:
        if path.exists():
            aside = path.with_name(path.name + ".bench-aside")
            path.rename(aside)
            moved.append((aside, path))
    docker("rmi", "--force", STANDIN)
    return moved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--from-nothing", action="store_true")
    ap.add_argument("--sizes-only", action="store_true", help="no builds, no times")
    ap.add_argument("--note", action="append", default=[], help="a note for the table")
    args = ap.parse_args()
    if args.sizes_only:
        save(sizes_only(args.note))
        return
    moved = move_downloads_aside() if args.from_nothing else []
    forget_builds()
    try:
        cold_s, cold, _ = make_images()
    except SystemExit:
        for aside, path in moved:
            if not path.exists():
                aside.rename(path)
        raise
    for aside, _ in moved:
        shutil.rmtree(aside) if aside.is_dir() else aside.unlink()
    warm_s, warm, warm_out = make_images()
    data = {
        "title": "Images: sizes and `make images` time",
        "description": (
            "`make images` (hack/images.sh): the operator image and the trainer image (CUDA "
            "default and CPU variant), built with BuildKit on a Debian bookworm stand-in base "
            "(mmdebstrap; Docker Hub is not reachable here) from a host-side wheelhouse "
            "(PyPI's torch, the CUDA build with its nvidia-* wheels: also in the CPU variant, "
            "which leaves out only triton), pushed to the local Distribution registry. "
            "sizeMB: uncompressed (docker image inspect); pushedCompressedMB: the registry's "
            "layers, what a node pulls; baseMB: the stand-in base (same run), addedMB: "
            "what the image adds to it. cold: images and build cache removed"
            + (
                ", stand-in base and wheelhouse downloaded again"
                if args.from_nothing
                else ", downloads (stand-in tarball, wheelhouse) cached"
            )
            + "; warm: the next run, nothing changed."
        ),
        "machine": f"{platform.node()}: {os.cpu_count()} cores, Docker "
        f"{docker('version', '-f', '{{.Server.Version}}')}",
        "rows": rows(cold, warm),
        "makeImagesColdSeconds": round(cold_s, 1),
        "makeImagesWarmSeconds": round(warm_s, 1),
        "fromNothing": args.from_nothing,
        "notes": "warm run output: " + " / ".join(warm_out.splitlines()),
    }
    save(data)


def sizes_only(notes: list[str]) -> dict[str, Any]:
    return {
        "title": "Images: sizes",
        "description": (
            "The images `make images` (hack/images.sh) built and pushed: operator, trainer CUDA "
            "default and CPU variant, on a Debian bookworm stand-in base (mmdebstrap; Docker "
            "Hub is not reachable here), Python packages from a host-side wheelhouse (PyPI's "
            "torch: the CUDA build, whose nvidia-* wheels the CPU variant carries too; it "
            "leaves out only triton). sizeMB: uncompressed (docker image inspect); "
            "pushedCompressedMB: the registry's layers, what a node pulls; baseMB: the stand-in "
            "base, addedMB: what the image adds to it. No build times in this mode."
        ),
        "machine": f"{platform.node()}: {os.cpu_count()} cores, Docker "
        f"{docker('version', '-f', '{{.Server.Version}}')}",
        "rows": rows({}, {}),
        "notes": notes,
    }


def save(data: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "images.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    sys.path.insert(0, str(ROOT / "bench"))
    from report import render

    (ROOT / "docs" / "benchmarks.md").write_text(render())
    print(path.read_text())


if __name__ == "__main__":
    main()
