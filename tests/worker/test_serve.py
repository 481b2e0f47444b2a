"""`python -m torchyard_trainer.serve` as a real process over real HTTP (KServe Open Inference
Protocol v2): it answers with what the saved model version computes — fp32, dynamic int8 and
structurally pruned versions written by real CompressionJobs — health, readiness and metadata
as the protocol says, 400s naming the field for bad requests, and metrics that move.

Tolerance: outputs equal the saved model's (loaded in this process with the compression code's
own loader, its portable quantized layers; the server runs the torch.ao backend modules those
layers build) within atol 1e-5 / rtol 1e-5. JSON carries float32 values exactly (they round-trip
through Python floats), so what is left is the order of float additions between the two
processes. Dynamic int8 scales the activations per batch, so the reference gets the very batch
the server got.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.worker.helpers import base_env, free_port
from tests.worker.serve_versions import MODEL, digits, make_versions

pytestmark = pytest.mark.worker

VARIANTS = ("fp32", "int8", "structured")
READY_TIMEOUT = 600  # three servers importing torch and sklearn on a shared 2-core machine


class Served:
    def __init__(self, version_dir: Path, log: Path) -> None:
        self.dir = version_dir
        self.port, self.metrics_port = free_port(), free_port()
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "torchyard_trainer.serve", "--model-dir", str(version_dir),
             "--host", "127.0.0.1", "--port", str(self.port),
             "--metrics-port", str(self.metrics_port), "--threads", "1"],
            env=base_env(), stdout=log.open("w"), stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        self.name = version_dir.parent.name

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        pytest.fail(f"server not ready in {READY_TIMEOUT} s:\n{self.log.read_text()}")

    def infer(self, body: Any) -> httpx.Response:
        return httpx.post(f"{self.url}/v2/models/{self.name}/infer", json=body, timeout=60)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torch

    torch.set_num_threads(1)
    return make_versions(tmp_path_factory.mktemp("serve"), [128, 64], epochs=5)


@pytest.fixture(scope="module")
def servers(versions: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[dict[str, Served]]:
    logs = tmp_path_factory.mktemp("serve-logs")
    started = {v: Served(versions[v], logs / f"{v}.log") for v in VARIANTS}
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        for s in started.values():
            s.wait_ready(deadline)
        yield started
    finally:
        for s in started.values():
            s.stop()


def _request(x: Any) -> dict[str, Any]:
    return {"id": "r-1", "inputs": [{"name": "input", "shape": list(x.shape),
                                     "datatype": "FP32", "data": x.reshape(-1).tolist()}]}


@pytest.mark.parametrize("variant", VARIANTS)
def test_outputs_equal_the_saved_models(variant: str, versions: dict[str, Path],
                                        servers: dict[str, Served]) -> None:
    import torch

    from torchyard_trainer.compress.stored import load_version

    ds = digits()
    saved, card = load_version(versions[variant], ds.info)
    x = ds.val_x[:48]
    with torch.no_grad():
        want = saved.eval()(x)
    if variant == "structured":  # the version really is the smaller network
        widths = [m.out_features for m in saved.modules() if isinstance(m, torch.nn.Linear)]
        assert widths == [64, 32, 10]
    resp = servers[variant].infer(_request(x.numpy()))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model_name"] == versions[variant].parent.name
    assert body["model_version"] == str(card["version"])
    assert body["id"] == "r-1"
    [out] = body["outputs"]
    assert (out["name"], out["datatype"], out["shape"]) == ("output", "FP32", [48, 10])
    got = torch.tensor(out["data"], dtype=torch.float32).reshape(out["shape"])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # nested data (the protocol allows both layouts) gives the same answer
    nested = {"inputs": [{**_request(x.numpy())["inputs"][0], "data": x.tolist()}]}
    again = servers[variant].infer(nested).json()["outputs"][0]["data"]
    assert again == out["data"]


def test_health_ready_and_metadata(servers: dict[str, Served]) -> None:
    s = servers["int8"]
    assert httpx.get(f"{s.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{s.url}/v2/health/ready").json() == {"ready": True}
    assert httpx.get(f"{s.url}/v2/models/{s.name}/ready").json() == {"name": s.name,
                                                                    "ready": True}
    meta = httpx.get(f"{s.url}/v2/models/{s.name}").json()
    assert meta["name"] == s.name
    assert meta["versions"] == [s.dir.name.removeprefix("v")]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert meta["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}]
    versioned = httpx.get(f"{s.url}/v2/models/{s.name}/versions/{meta['versions'][0]}")
    assert versioned.json() == meta
    assert httpx.get(f"{s.url}/v2").json()["name"] == "torchyard"


@pytest.mark.parametrize(
    ("change", "status", "field"),
    [
        ({"shape": [2, 63]}, 400, "inputs[0].shape"),
        ({"datatype": "FP64"}, 400, "inputs[0].datatype"),
        ({"data": [0.0] * 64}, 400, "inputs[0].data"),
        ({"data": ["a"] * 128}, 400, "inputs[0].data"),
        ({"name": "x"}, 400, "inputs[0].name"),
    ],
)
def test_bad_requests_are_400_naming_the_field(change: dict[str, Any], status: int, field: str,
                                               servers: dict[str, Served]) -> None:
    good = _request(digits().val_x[:2].numpy())
    bad = {"inputs": [{**good["inputs"][0], **change}]}
    resp = servers["fp32"].infer(bad)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"].startswith(field)


def test_unknown_model_and_not_json(servers: dict[str, Served]) -> None:
    s = servers["fp32"]
    resp = httpx.post(f"{s.url}/v2/models/nope/infer", json={"inputs": []})
    assert resp.status_code == 404
    assert "'nope'" in resp.json()["error"]
    resp = httpx.post(f"{s.url}/v2/models/{s.name}/infer", content=b"{not json")
    assert resp.status_code == 400
    assert resp.json()["error"].startswith("request: not JSON")


def _value(metrics: dict[Any, float], name: str, **labels: str) -> float:
    return sum(v for (n, lab), v in metrics.items()
               if n == name and all((k, val) in lab for k, val in labels.items()))


def test_metrics_count_requests_errors_and_latency(servers: dict[str, Served]) -> None:
    s = servers["structured"]
    x = digits().val_x[:4].numpy()
    before = s.metrics()
    for _ in range(3):
        assert s.infer(_request(x)).status_code == 200
    assert s.infer({"inputs": [{**_request(x)["inputs"][0], "shape": [4, 65]}]}).status_code == 400
    after = s.metrics()

    def moved(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert moved("torchyard_serving_requests_total", handler="infer", code="200") == 3
    assert moved("torchyard_serving_requests_total", handler="infer", code="400") == 1
    assert moved("torchyard_serving_request_errors_total", reason="bad_request") == 1
    assert moved("torchyard_serving_request_duration_seconds_count", model=s.name) == 4
    assert moved("torchyard_serving_inference_duration_seconds_count") == 3
    assert moved("torchyard_serving_batch_size_sum") == 12
    assert _value(after, "torchyard_serving_ready", model=s.name) == 1
    assert _value(after, "torchyard_serving_model_info", variant="structured") == 1


def test_a_damaged_version_is_refused_with_exit_2(versions: dict[str, Path],
                                                  tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / MODEL / "v7"
    shutil.copytree(versions["fp32"], bad)
    with (bad / "model.safetensors").open("r+b") as fh:  # one flipped byte at the end
        fh.seek(-1, os.SEEK_END)
        last = fh.read(1)
        fh.seek(-1, os.SEEK_END)
        fh.write(bytes([last[0] ^ 0xFF]))
    proc = subprocess.run(
        [sys.executable, "-m", "torchyard_trainer.serve", "--model-dir", f"file://{bad}",
         "--host", "127.0.0.1", "--port", str(free_port()), "--metrics-port", "0"],
        env=base_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "sha256 differs from the card's" in proc.stderr
