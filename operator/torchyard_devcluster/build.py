"""Make sure the control-plane binaries exist; build them with hack/build-control-plane.sh."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

from torchyard_devcluster import paths


def expected_stamp_prefix() -> str:
    v = paths.versions()
    return f"k8s={v['K8S_VERSION']} etcd={v['ETCD_VERSION']} kwok={v['KWOK_VERSION']} "


def binaries_ready() -> bool:
    """True when every binary is present and the build stamp matches the pinned versions."""
    bdir = paths.bin_dir()
    if os.environ.get("TORCHYARD_K8S_BIN_DIR"):
        # Prebuilt binaries supplied by the user: no stamp required.
        return all((bdir / b).is_file() for b in paths.BINARIES if b != "kubectl")
    stamp = bdir / ".stamp"
    if not stamp.is_file() or not stamp.read_text().startswith(expected_stamp_prefix()):
        return False
    return all(os.access(bdir / b, os.X_OK) for b in paths.BINARIES)


def ensure_binaries(*, quiet: bool = False) -> float:
    """Build the binaries when missing or stale; returns the seconds spent (0.0 when cached).

    The script takes a lock, so concurrent callers wait for one build.
    """
    if binaries_ready():
        return 0.0
    script = paths.build_script()
    if script is None:
        raise FileNotFoundError(
            f"control-plane binaries missing in {paths.bin_dir()} and hack/build-control-plane.sh "
            "is not available (not running from a checkout); set TORCHYARD_K8S_BIN_DIR"
        )
    if not quiet:
        print(
            f"building the control plane into {paths.bin_dir()} (first time: tens of minutes "
            "on 2 cores)…",
            file=sys.stderr,
            flush=True,
        )
    return run_build_script(script)


def run_build_script(script: os.PathLike[str] | str) -> float:
    """Run a hack/ build script to the end; returns the seconds it took.

    Own process group: if we are interrupted (Ctrl-C, a test timeout), the whole build — bash
    and its go/compile children, which hold the build lock — stops with us.
    """
    start = time.monotonic()
    child = subprocess.Popen(["bash", str(script)], start_new_session=True)
    try:
        rc = child.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        raise
    if rc != 0:
        raise subprocess.CalledProcessError(rc, ["bash", str(script)])
    return time.monotonic() - start
