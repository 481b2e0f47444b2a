"""The serving dashboard end to end: a real Prometheus (Debian's) scrapes a real
`python -m torchyard_trainer.serve` answering real OIP v2 traffic (good requests and 400s),
then EVERY query of EVERY panel of charts/torchyard/dashboards/serving.json, and every
variable query, returns a series with a finite value. (tests/e2e/test_metrics.py does the same
for the training/compression/operator dashboards on a `torchyard run`; serving needs no job.)

The target gets the `namespace` and `pod` labels Kubernetes service discovery gives a serving
pod's target (a PodMonitor, honorLabels false), as static labels: nothing else differs.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from tests.chart.conftest import CHART
from tests.worker.helpers import base_env, free_port
from tests.worker.serve_versions import digits, train_fp32

pytestmark = [pytest.mark.slow]

BOARD = CHART / "dashboards" / "serving.json"
RATE_INTERVAL = "5s"
TRAFFIC_SECONDS = 20


def _wait(fn: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if fn():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


def _expand(expr: str) -> str:
    out = expr.replace("$__rate_interval", RATE_INTERVAL)
    out = out.replace('"$namespace"', '".*"').replace('"$model"', '".*"')
    assert "$" not in out, out
    return out


def _finite(series: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(v)) for s in series for _, v in s.get("values", []))


@pytest.fixture(scope="module")
def scraped(prometheus_bin: str, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[str, float, float]]:
    """(Prometheus URL, start, end of the traffic) after a scraped serving run."""
    import torch

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("serving-e2e")
    version = train_fp32(tmp / "store", [32], epochs=1)
    port, metrics_port, prom_port = free_port(), free_port(), free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "torchyard_trainer.serve", "--model-dir", str(version),
         "--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics_port),
         "--threads", "1"],
        env=base_env(), stdout=(tmp / "server.log").open("w"), stderr=subprocess.STDOUT)
    config = {
        "global": {"scrape_interval": "500ms", "scrape_timeout": "500ms"},
        "scrape_configs": [{
            "job_name": "serving",
            "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"],
                                "labels": {"namespace": "e2e-serving", "pod": "digits-v1-x"}}],
        }],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    prom = subprocess.Popen(
        [prometheus_bin, f"--config.file={tmp / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=(tmp / "prometheus.log").open("w"), stderr=subprocess.STDOUT,
        start_new_session=True)
    url = f"http://127.0.0.1:{prom_port}"
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: httpx.get(f"{base}/v2/health/ready").status_code == 200, 600, "server")
        _wait(lambda: httpx.get(f"{url}/-/ready").status_code == 200, 120, "prometheus")
        x = digits().val_x[:8].numpy()
        good = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                            "data": x.reshape(-1).tolist()}]}
        bad = {"inputs": [{**good["inputs"][0], "datatype": "INT64"}]}
        infer = f"{base}/v2/models/{version.parent.name}/infer"
        start = time.time()
        with httpx.Client() as client:
            while time.time() - start < TRAFFIC_SECONDS:
                assert client.post(infer, json=good).status_code == 200
                assert client.post(infer, json=bad).status_code == 400
                time.sleep(0.05)
        end = time.time()
        time.sleep(2)  # the last scrapes
        yield url, start, end
    finally:
        for proc in (server, prom):
            proc.terminate()
        for proc in (server, prom):
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _query_range(url: str, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    res = httpx.get(f"{url}/api/v1/query_range",
                    params={"query": expr, "start": start, "end": end, "step": "1s"}, timeout=30)
    body = res.json()
    assert body["status"] == "success", (expr, body)
    return list(body["data"]["result"])


def _cases() -> list[tuple[str, str, str]]:
    board = json.loads(BOARD.read_text())
    return [(p["title"], t["refId"], t["expr"]) for p in board["panels"]
            for t in p.get("targets", [])]


@pytest.mark.parametrize(("title", "ref", "expr"), _cases(),
                         ids=[f"{t}:{r}" for t, r, _ in _cases()])
def test_every_serving_panel_query_returns_data(scraped: tuple[str, float, float], title: str,
                                                ref: str, expr: str) -> None:
    url, start, end = scraped
    series = _query_range(url, _expand(expr), start, end)
    assert series, f"{title} [{ref}] returned no series: {_expand(expr)}"
    assert _finite(series), f"{title} [{ref}] has no finite value: {_expand(expr)}"


def test_serving_dashboard_variables_have_values(scraped: tuple[str, float, float]) -> None:
    url, start, end = scraped
    for var in json.loads(BOARD.read_text())["templating"]["list"]:
        if var["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["query"]["query"])
        assert m, var
        query = f"group by ({m.group(2)}) ({_expand(m.group(1))})"
        assert _query_range(url, query, start, end), (var["name"], query)

