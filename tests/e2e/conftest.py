"""End-to-end fixtures: the dev control plane's fixtures (tests/cluster) and Debian's Prometheus."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.chart.conftest import REPO
from tests.cluster.conftest import cluster, crd_dir, kube, namespace  # noqa: F401


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    """Debian's `prometheus` (hack/install-prometheus.sh installs it when we are root)."""
    found = shutil.which("prometheus")
    if found is None and os.geteuid() == 0:
        res = subprocess.run(
            ["bash", str(REPO / "hack" / "install-prometheus.sh")],
            text=True,
            capture_output=True,
            check=False,
            timeout=900,
        )
        assert res.returncode == 0, f"hack/install-prometheus.sh failed:\n{res.stderr[-4000:]}"
        found = shutil.which("prometheus")
    if found is None:
        pytest.skip("prometheus not installed: run `sudo hack/install-prometheus.sh` (make tools)")
    return found
