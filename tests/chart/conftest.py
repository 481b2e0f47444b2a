"""Fixtures for the Helm chart tests: a real Helm (built from the Go module proxy by
hack/install-helm.sh), rendering helpers, and the dev-cluster fixtures of tests/cluster."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

# The real control plane's fixtures (session cluster, kube, per-test namespace).
from tests.cluster.conftest import cluster, crd_dir, kube, namespace  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "torchyard"
ALL_OPTIONS = CHART / "ci" / "all-options-values.yaml"
PROMETHEUS_OPERATOR_VERSION = "v0.85.0"
MONITORING_CRDS = ("podmonitors", "servicemonitors", "prometheusrules")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: needs the real dev control plane (hack/)")


def _run(argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), text=True, capture_output=True, check=False, **kw)


@pytest.fixture(scope="session")
def helm() -> str:
    """Path of the pinned Helm binary (built once into $TORCHYARD_CACHE/bin)."""
    res = _run(["bash", str(REPO / "hack" / "install-helm.sh")], timeout=1800)
    assert res.returncode == 0, f"hack/install-helm.sh failed:\n{res.stderr[-4000:]}"
    path = res.stdout.strip().splitlines()[-1]
    assert Path(path).is_file(), path
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    """Debian's promtool (hack/install-prometheus.sh installs it when root)."""
    found = shutil.which("promtool")
    if found is None and os.geteuid() == 0:
        res = _run(["bash", str(REPO / "hack" / "install-prometheus.sh")], timeout=900)
        assert res.returncode == 0, f"hack/install-prometheus.sh failed:\n{res.stderr[-4000:]}"
        found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool not installed: run `sudo hack/install-prometheus.sh` (make tools)")
    return found


def helm_template(
    helm: str,
    *,
    values: Sequence[Path] = (),
    sets: Sequence[str] = (),
    ns: str = "torchyard-system",
    release: str = "ty",
    extra: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """`helm template` the chart; the rendered objects (empty documents dropped)."""
    argv = [helm, "template", release, str(CHART), "--namespace", ns, *extra]
    for v in values:
        argv += ["--values", str(v)]
    for s in sets:
        argv += ["--set", s]
    res = _run(argv, timeout=120)
    assert res.returncode == 0, f"helm template failed:\n{res.stderr}"
    return [d for d in yaml.safe_load_all(res.stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name_part: str = "") -> dict[str, Any]:
    found = [d for d in by_kind(docs, kind) if name_part in d["metadata"]["name"]]
    assert len(found) == 1, (
        f"expected one {kind} *{name_part}*, got {[d['metadata']['name'] for d in found]}"
    )
    return found[0]


def prometheus_operator_crds() -> list[Path]:
    """The Prometheus Operator's CRD files, from its Go module (the module proxy has them)."""
    env = dict(os.environ, GOTOOLCHAIN="local", GOFLAGS="-mod=mod")
    res = _run(
        [
            "go",
            "mod",
            "download",
            "-json",
            f"github.com/prometheus-operator/prometheus-operator@{PROMETHEUS_OPERATOR_VERSION}",
        ],
        timeout=600,
        env=env,
        cwd="/",
    )
    assert res.returncode == 0, res.stderr
    folder = Path(json.loads(res.stdout)["Dir"]) / "example" / "prometheus-operator-crd"
    files = [folder / f"monitoring.coreos.com_{name}.yaml" for name in MONITORING_CRDS]
    assert all(f.is_file() for f in files), files
    return files


@pytest.fixture(scope="session")
def monitoring_crds(cluster: Any) -> Iterator[None]:  # noqa: F811 - the imported fixture
    """ServiceMonitor, PodMonitor and PrometheusRule CRDs installed on the dev cluster, so the
    chart's Prometheus Operator objects are validated against their real schemas."""
    if shutil.which("go") is None:
        pytest.skip("go is needed to fetch the Prometheus Operator CRDs from the module proxy")
    for path in prometheus_operator_crds():
        res = cluster.kubectl(
            "apply", "--server-side", "--force-conflicts", "-f", str(path), check=False
        )
        assert res.returncode == 0, res.stderr
    for name in MONITORING_CRDS:
        res = cluster.kubectl(
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            f"crd/{name}.monitoring.coreos.com",
            check=False,
        )
        assert res.returncode == 0, res.stderr
    return


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def token_kubeconfig(dev: Any, token: str, path: Path, ns: str) -> Path:
    """A dev-cluster kubeconfig that authenticates with a bearer token (a ServiceAccount's)."""
    ca = dev.state_dir / "pki" / "ca.crt"
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "dev", "cluster": {"server": dev.server, "certificate-authority": str(ca)}}
        ],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "dev", "user": "sa", "namespace": ns}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


class OperatorProcess:
    """`torchyard operator` as a local process (the same command the chart's Deployment runs)."""

    def __init__(self, kubeconfig: Path, log: Path, args: Sequence[str]) -> None:
        self.metrics_port, self.health_port = free_port(), free_port()
        self.log = log
        self._out = log.open("w")
        env = dict(os.environ, KUBECONFIG=str(kubeconfig))
        self.proc = subprocess.Popen(
            [
                str(REPO / ".venv" / "bin" / "torchyard"),
                "operator",
                *args,
                f"--metrics-port={self.metrics_port}",
                f"--health-port={self.health_port}",
            ],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    def wait_healthy(self, timeout: float = 60.0) -> None:
        import time

        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"operator exited:\n{self.log.read_text()[-4000:]}"
            try:
                if (
                    httpx.get(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2).status_code
                    == 200
                ):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(
            f"operator not healthy after {timeout}s:\n{self.log.read_text()[-4000:]}"
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._out.close()
