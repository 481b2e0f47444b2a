"""Every example manifest runs to completion with `torchyard run` and reaches the accuracy its
header comment documents ("Reaches >= NN% ...")."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.worker.helpers import REPO, run_local

pytestmark = pytest.mark.worker

EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
# Jobs that consume another example's model run after it.
ORDER = ["digits-ddp"]


def _doc(path: Path) -> dict:
    return dict(yaml.safe_load(path.read_text()))


def _documented_accuracy(path: Path) -> float | None:
    m = re.search(
        r">=\s*(\d+(?:\.\d+)?)\s*%",
        "".join(
            line for line in path.read_text().splitlines(keepends=True) if line.startswith("#")
        ),
    )
    return float(m.group(1)) / 100 if m else None


def _needs_gpu(doc: dict) -> bool:
    return int(doc.get("spec", {}).get("resources", {}).get("gpu", 0) or 0) > 0


ordered = sorted(
    EXAMPLES, key=lambda p: (p.stem not in ORDER, _doc(p)["kind"] != "TrainingJob", p.stem)
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("examples")


@pytest.mark.parametrize("example", ordered, ids=[p.stem for p in ordered])
def test_example_runs_to_completion(example: Path, workdir: Path) -> None:
    doc = _doc(example)
    if _needs_gpu(doc):
        try:
            import torch

            if torch.cuda.device_count() < int(doc["spec"]["resources"]["gpu"]):
                pytest.skip("GPU example: needs as many CUDA devices as it asks for")
        except ImportError:
            pytest.skip("no torch")
    proc = run_local(example, workdir)
    assert proc.returncode == 0, proc.stderr[-5000:]
    run_dir = workdir / "torchyard-runs" / doc["metadata"]["name"]
    result = json.loads((run_dir / "pod-0" / "result.json").read_text())
    assert result["status"] == "Succeeded"
    assert (run_dir / "curves.png").stat().st_size > 0
    documented = _documented_accuracy(example)
    acc = result.get("metrics", {}).get("accuracy")
    print(f"{example.name}: accuracy {acc} (documented >= {documented})")
    if documented is not None:
        assert acc is not None
        assert acc >= documented
