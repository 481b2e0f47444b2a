"""Two `torchyard run`s side by side on one machine, with the default metrics port already taken:
each run picks free metrics (and rendezvous) ports, records where every rank serves in its
`metrics-targets.json`, and every recorded address serves that run's own rank while it runs."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.worker.helpers import TIMEOUT, base_env, job
from torchyard.api.contract import DEFAULT_METRICS_PORT
from torchyard.local import METRICS_TARGETS_FILE

pytestmark = pytest.mark.worker

LABEL = "torchyard_worker_restarts"  # set as soon as a worker starts: served all run long
POLL = 0.05


def _tiny(name: str, workers: int, procs: int) -> dict[str, Any]:
    return job(
        name,
        workers=workers,
        procsPerWorker=procs,
        model={"builtin": "mlp", "args": {"hidden": [32]}},
        data={"builtin": "digits"},
        # long enough (seconds, not a fraction of one) that every rank is scraped while it
        # serves: with 2 epochs a rank could end between two polls on a loaded box
        epochs=30,
        batchSize=32,
        checkpoint={"everySteps": 1000, "keep": 1, "asyncSave": False},
    )


def _ranks_served(address: str) -> set[tuple[str, str]]:
    """(torchyard_job, rank) label pairs of the restarts gauge served at ``address``."""
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=2) as r:
            text = r.read().decode()
    except (OSError, urllib.error.URLError):
        return set()
    found = set()
    for line in text.splitlines():
        if line.startswith(LABEL + "{"):
            labels = dict(
                kv.split("=", 1) for kv in line[len(LABEL) + 1 : line.index("}")].split(",")
            )
            found.add((labels["torchyard_job"].strip('"'), labels["rank"].strip('"')))
    return found


@contextlib.contextmanager
def _hold_default_metrics_port() -> Any:
    """Something else listening on the operator's default worker metrics port (if free)."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", DEFAULT_METRICS_PORT))
        sock.listen()
    except OSError:
        pass  # already taken by something else: the same situation
    try:
        yield
    finally:
        sock.close()


def test_concurrent_runs_serve_metrics_on_their_own_free_ports(tmp_path: Path) -> None:
    # two pods of one process, and one pod of two processes (a block of consecutive ports)
    runs = {"ports-a": _tiny("ports-a", 2, 1), "ports-b": _tiny("ports-b", 1, 2)}
    procs: dict[str, subprocess.Popen[str]] = {}
    expected: dict[str, dict[str, str]] = {}  # run → address → rank it must serve
    seen: dict[str, set[str]] = {name: set() for name in runs}
    with _hold_default_metrics_port():
        for name, doc in runs.items():
            manifest = tmp_path / f"{name}.yaml"
            manifest.write_text(yaml.safe_dump(doc))
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "torchyard.local", str(manifest)],
                env=base_env(),
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        deadline = time.monotonic() + TIMEOUT
        while any(p.poll() is None for p in procs.values()) and time.monotonic() < deadline:
            for name in runs:
                targets = tmp_path / "torchyard-runs" / name / METRICS_TARGETS_FILE
                if name not in expected and targets.exists():
                    groups = json.loads(targets.read_text())
                    addresses = [t for g in groups for t in g["targets"]]
                    expected[name] = {a: str(rank) for rank, a in enumerate(addresses)}
                for address, rank in expected.get(name, {}).items():
                    if address not in seen[name] and (name, rank) in _ranks_served(address):
                        seen[name].add(address)
            time.sleep(POLL)
        outputs = {name: p.communicate(timeout=TIMEOUT) for name, p in procs.items()}
    for name, p in procs.items():
        assert p.returncode == 0, outputs[name][1][-4000:]
        result = tmp_path / "torchyard-runs" / name / "pod-0" / "result.json"
        assert json.loads(result.read_text())["status"] == "Succeeded"
    for name, doc in runs.items():
        world = doc["spec"]["workers"] * doc["spec"]["procsPerWorker"]
        assert len(expected.get(name, {})) == world, (name, expected)
        # every recorded address served this run's own rank (never the other run's)
        assert seen[name] == set(expected[name]), (name, expected[name], seen[name])
        # and the run printed the same addresses
        err = outputs[name][1]
        for address, rank in expected[name].items():
            assert f"rank {rank} {address}" in err, err[-3000:]
    a, b = (set(expected[name]) for name in runs)
    assert not a & b
    assert f"127.0.0.1:{DEFAULT_METRICS_PORT}" not in a | b
