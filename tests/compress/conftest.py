"""Fixtures of the compression tests: one small digits teacher per session, manifests and the
recomputation of a report's figures from the saved model version."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
for root in (REPO / "operator", REPO / "trainer_image"):
    if str(root) not in sys.path:
        sys.path.append(str(root))

TEACHER_HIDDEN = [128, 64]


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)  # the CPU is shared: small tests, one thread each


@pytest.fixture(scope="session")
def digits() -> Any:
    from torchyard.api.common import DataSpec
    from torchyard_trainer.data import load_dataset

    return load_dataset(DataSpec(builtin="digits"), 0, Path("/nonexistent"), Path("/nonexistent"))


@pytest.fixture(scope="session")
def teacher(tmp_path_factory: pytest.TempPathFactory, digits: Any) -> dict[str, Any]:
    """A digits MLP trained for a few seconds, saved as safetensors."""
    import torch
    from safetensors.torch import save_file

    from torchyard.api.common import ModelSpec, OptimizerSpec
    from torchyard_trainer.compress.context import Context, evaluate, train_epochs
    from torchyard_trainer.models import build_model

    torch.manual_seed(0)
    spec = ModelSpec(builtin="mlp", args={"hidden": TEACHER_HIDDEN})
    model = build_model(spec, digits.info)
    ctx = Context(ds=digits, optimizer=OptimizerSpec(lr=3e-3), batch_size=64, seed=0)
    train_epochs(model, ctx, 20)
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return {"path": path, "accuracy": evaluate(model, ctx), "model": model,
            "bytes": path.stat().st_size}


def manifest(teacher: dict[str, Any], store: Path, steps: list[dict[str, Any]],
             **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "source": {"model": {"builtin": "mlp", "args": {"hidden": TEACHER_HIDDEN},
                             "checkpoint": f"file://{teacher['path']}"}},
        "data": {"builtin": "digits"},
        "steps": steps,
        "accuracyCriterion": {"mode": "absolute", "tolerableLoss": 0.02},
        "optimizer": {"lr": 0.003},
        "output": {"storage": f"file://{store}", "modelName": "compressed"},
    }
    base.update(copy.deepcopy(spec))
    return {"apiVersion": "torchyard.io/v1alpha1", "kind": "CompressionJob",
            "metadata": {"name": "cj-test"}, "spec": base}


def run_job(doc: dict[str, Any], out: Path) -> dict[str, Any]:
    from torchyard.api import CompressionJob
    from torchyard_trainer.compress import run
    from torchyard_trainer.env import WorkerEnv

    job = CompressionJob.model_validate(doc)
    env = WorkerEnv.from_environ({"TORCHYARD_OUTPUT_DIR": str(out)})
    return run(job, env)


def recompute(result: dict[str, Any], digits: Any) -> dict[str, Any]:
    """Every figure of the report, measured again from the saved model version."""
    import torch

    from torchyard_trainer.compress import layers
    from torchyard_trainer.compress.context import metric_value, predict
    from torchyard_trainer.compress.stored import load_version

    vdir = Path(result["model"]["uri"].removeprefix("file://"))
    model, card = load_version(vdir, digits.info)
    weights = dict(layers.logical_weights(model))
    return {
        "model": model,
        "card": card,
        "dir": vdir,
        "accuracy": metric_value(predict(model, digits.val_x), digits.val_y, "accuracy"),
        "params": sum(t.numel() for t in weights.values()),
        "nonZeroParams": sum(int(torch.count_nonzero(t)) for t in weights.values()),
        "bytes": (vdir / "model.safetensors").stat().st_size,
    }
