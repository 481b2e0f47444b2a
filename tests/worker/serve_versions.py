"""Model versions to serve, made by the project's own code: a digits MLP trained for a few
seconds and written as a version (fp32), and two CompressionJobs run on it (dynamic int8,
structured pruning), each writing its version exactly as a CompressionJob worker does.

Shared by tests/worker/test_serve.py and bench/serving.py (which asks for a wider MLP)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.worker import helpers  # noqa: F401  (puts the source roots on sys.path)

MODEL = "digits-mlp"
DIGITS = {"builtin": "digits"}
STEPS: dict[str, list[dict[str, Any]]] = {
    "int8": [{"quantize": {"method": "dynamicInt8", "granularity": "perChannel",
                           "backend": "torch.ao"}}],
    "structured": [{"prune": {"method": "structured", "sparsity": 0.5, "fineTuneEpochs": 2}}],
}


def digits() -> Any:
    from torchyard.api.common import DataSpec
    from torchyard_trainer.data import load_dataset

    return load_dataset(DataSpec(builtin="digits"), 0, Path("/nonexistent"), Path("/nonexistent"))


def train_fp32(store: Path, hidden: list[int], epochs: int) -> Path:
    """A trained digits MLP written as ``<store>/digits-mlp/v<N>``; its directory."""
    import torch

    from torchyard.api.common import ModelSpec, OptimizerSpec
    from torchyard_trainer.artifacts import write_model_version
    from torchyard_trainer.compress.context import Context, evaluate, train_epochs
    from torchyard_trainer.models import build_model

    torch.manual_seed(0)
    ds = digits()
    spec = ModelSpec(builtin="mlp", args={"hidden": hidden})
    model = build_model(spec, ds.info)
    ctx = Context(ds=ds, optimizer=OptimizerSpec(lr=3e-3), batch_size=64, seed=0)
    train_epochs(model, ctx, epochs)
    card = {"model": spec.model_dump(by_alias=True, exclude_none=True, mode="json"),
            "data": DIGITS, "metrics": {"accuracy": evaluate(model, ctx)},
            "lineage": {"kind": "TrainingJob", "job": "serve-test"}}
    written = write_model_version(f"file://{store}", Path("/nonexistent"), MODEL,
                                  model.state_dict(), card, store.parent)
    return Path(written["uri"].removeprefix("file://"))


def compress(source: Path, store: Path, variant: str, hidden: list[int], out: Path) -> Path:
    """Run a CompressionJob (``STEPS[variant]``) on the version ``source``; the new version."""
    from torchyard.api import CompressionJob
    from torchyard_trainer.compress import run
    from torchyard_trainer.env import WorkerEnv

    doc = {
        "apiVersion": "torchyard.io/v1alpha1", "kind": "CompressionJob",
        "metadata": {"name": f"serve-{variant}"},
        "spec": {
            "source": {"model": {"builtin": "mlp", "args": {"hidden": hidden},
                                 "checkpoint": f"file://{source}"}},
            "data": DIGITS, "steps": STEPS[variant],
            # a loose gate: these tests are about serving what was saved, not about accuracy
            "accuracyCriterion": {"mode": "absolute", "tolerableLoss": 0.5},
            "optimizer": {"lr": 0.003},
            "output": {"storage": f"file://{store}", "modelName": f"{MODEL}-{variant}"},
        },
    }
    env = WorkerEnv.from_environ({"TORCHYARD_OUTPUT_DIR": str(out)})
    result = run(CompressionJob.model_validate(doc), env)
    assert result["status"] == "Succeeded", result
    return Path(result["model"]["uri"].removeprefix("file://"))


def make_versions(root: Path, hidden: list[int], epochs: int = 10) -> dict[str, Path]:
    """fp32, int8 and structured versions of one digits MLP under ``root/store``."""
    store = root / "store"
    fp32 = train_fp32(store, hidden, epochs)
    return {"fp32": fp32, **{v: compress(fp32, store, v, hidden, root / f"out-{v}")
                             for v in STEPS}}
