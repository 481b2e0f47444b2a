"""Where the dev control plane lives: pinned versions, binary cache, state folder.

Everything is outside the clone, under ``$TORCHYARD_CACHE`` (default ``~/.cache/torchyard``):

- ``k8s/<k8s-version>/bin/``: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
  kubectl, kwok, built by ``hack/build-control-plane.sh`` (``make control-plane``);
- ``dev-cluster/``: the running cluster's state (certs, etcd data, kubeconfigs, pids, logs).

``TORCHYARD_DEV_CLUSTER_DIR`` moves the state folder (tests use it to run a second, throw-away
cluster beside the session one); ``TORCHYARD_K8S_BIN_DIR`` points at prebuilt binaries.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# Fallbacks: the source of truth is hack/control-plane-versions.env (read below when present).
_DEFAULT_VERSIONS: dict[str, str] = {
    "K8S_VERSION": "v1.37.2",
    "ETCD_VERSION": "v3.6.16",
    "KWOK_VERSION": "v0.8.0",
}

#: Binaries the dev cluster needs (kubectl is optional at runtime: PyPI's kubectl works too).
BINARIES: tuple[str, ...] = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
)


def repo_root() -> Path | None:
    """The git checkout this package runs from (``operator/torchyard_devcluster`` -> root)."""
    root = Path(__file__).resolve().parents[2]
    if (root / "hack" / "build-control-plane.sh").is_file():
        return root
    return None


def build_script() -> Path | None:
    root = repo_root()
    return None if root is None else root / "hack" / "build-control-plane.sh"


def versions() -> dict[str, str]:
    """Pinned versions (``K8S_VERSION``, ``ETCD_VERSION``, ``KWOK_VERSION``)."""
    out = dict(_DEFAULT_VERSIONS)
    root = repo_root()
    env_file = None if root is None else root / "hack" / "control-plane-versions.env"
    if env_file is not None and env_file.is_file():
        for raw in env_file.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip().strip('"')
    for key in list(out):
        if os.environ.get(key):
            out[key] = os.environ[key]
    return out


def cache_dir() -> Path:
    return Path(os.environ.get("TORCHYARD_CACHE") or Path.home() / ".cache" / "torchyard")


def bin_dir() -> Path:
    override = os.environ.get("TORCHYARD_K8S_BIN_DIR")
    if override:
        return Path(override)
    return cache_dir() / "k8s" / versions()["K8S_VERSION"] / "bin"


def state_dir() -> Path:
    override = os.environ.get("TORCHYARD_DEV_CLUSTER_DIR")
    if override:
        return Path(override)
    return cache_dir() / "dev-cluster"


def binary(name: str) -> Path:
    """Path of a control-plane binary; kubectl falls back to the one on PATH (PyPI's)."""
    path = bin_dir() / name
    if path.is_file() and os.access(path, os.X_OK):
        return path
    if name == "kubectl":
        found = shutil.which("kubectl")
        if found:
            return Path(found)
    raise FileNotFoundError(
        f"{name} not found in {bin_dir()}; run `make control-plane` "
        "(hack/build-control-plane.sh) or `torchyard dev-cluster up`, which builds it"
    )
