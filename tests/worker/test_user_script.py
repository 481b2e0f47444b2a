"""A user's own training script under `torchyard run`, with real processes: the reporting helper
(``torchyard_trainer.report``) gives it the built-in trainer's status, progress, Prometheus
metrics and model version; Kubeflow's ``python -m torch.distributed.run`` commands find torch;
every pod runs in a directory of its own. Also the Hugging Face and Lightning callbacks, each
in a real (tiny, CPU) Trainer run."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.worker.helpers import REPO, TIMEOUT, base_env, events, free_port, job
from torchyard.local import METRICS_TARGETS_FILE
from torchyard.state.results import result_status

pytestmark = pytest.mark.worker

EXAMPLE = REPO / "examples" / "user-script.yaml"
POLL = 0.05


def _builtin_metric_names() -> set[str]:
    """Every metric family the built-in trainer's workers serve (the dashboards' names)."""
    from torchyard_trainer.metrics import WorkerMetrics

    metrics = WorkerMetrics("x", "default", 0, port=None, jsonl=None)
    try:
        return {family.name for family in metrics.registry.collect()}
    finally:
        metrics.close()


def _scrape(address: str) -> dict[str, set[str]]:
    """rank label → the metric families with a sample at ``address`` (empty: not serving)."""
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=2) as r:
            text = r.read().decode()
    except (OSError, urllib.error.URLError):
        return {}
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("torchyard_job") == "user-script":
                found.setdefault(sample.labels["rank"], set()).add(family.name)
    return found


def _example_copy(folder: Path, epochs: int) -> Path:
    """examples/user-script.yaml and its script, side by side in ``folder`` as in the repo, the
    script's --epochs raised so that every rank serves its metrics for seconds."""
    folder.mkdir(parents=True)
    shutil.copytree(REPO / "examples" / "user-script", folder / "user-script")
    doc = yaml.safe_load(EXAMPLE.read_text())
    command = doc["spec"]["command"]
    command[command.index("--epochs") + 1] = str(epochs)
    manifest = folder / "user-script.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    return manifest


def _run_and_scrape(manifest: Path, cwd: Path) -> tuple[subprocess.CompletedProcess[str], Any]:
    """`torchyard run -o json`, scraping every rank's metrics address while it runs."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "torchyard.cli", "run", str(manifest), "-o", "json"],
        env=base_env(),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    targets = cwd / "torchyard-runs" / "user-script" / METRICS_TARGETS_FILE
    served: dict[str, set[str]] = {}
    deadline = time.monotonic() + TIMEOUT
    while proc.poll() is None and time.monotonic() < deadline:
        if targets.exists():
            for group in json.loads(targets.read_text()):
                for address in group["targets"]:
                    for rank, names in _scrape(address).items():
                        served.setdefault(rank, set()).update(names)
        time.sleep(POLL)
    out, err = proc.communicate(timeout=TIMEOUT)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), served


def test_user_script_example_reports_status_metrics_and_a_model_version(tmp_path: Path) -> None:
    manifest = _example_copy(tmp_path / "manifests", epochs=150)
    run, served = _run_and_scrape(manifest, tmp_path)
    assert run.returncode == 0, run.stderr[-4000:]
    summary = json.loads(run.stdout)
    run_dir = tmp_path / "torchyard-runs" / "user-script"
    result = json.loads((run_dir / "pod-0" / "result.json").read_text())

    # the result file, as the built-in trainer writes it, and what the operator makes of it
    assert result["status"] == "Succeeded"
    assert result["step"] == result["totalSteps"] > 0
    assert result["worldSize"] == 2
    assert result["metrics"]["accuracy"] > 0.5  # ten classes: far above chance
    status = result_status("TrainingJob", result)
    assert status["progress"]["step"] == result["totalSteps"]
    assert status["progress"]["accuracy"] == result["metrics"]["accuracy"]
    assert status["model"]["name"] == "digits-user-script"
    assert summary["phase"] == "Succeeded"
    assert summary["model"]["version"] == status["model"]["version"]

    # the model version: the trainer's store layout, a card whose digest is the weights'
    version_dir = Path(summary["model"]["path"])
    card = json.loads((version_dir / "model-card.json").read_text())
    weights = (version_dir / "model.safetensors").read_bytes()
    assert card["sha256"] == hashlib.sha256(weights).hexdigest() == result["model"]["sha256"]
    assert card["lineage"]["job"] == "user-script"
    assert card["lineage"]["strategy"] == "command"
    assert card["metrics"] == result["metrics"]

    # progress: rank 0's events, which `torchyard run` showed
    kinds = [e["event"] for e in events(run_dir / "pod-0" / "progress.jsonl")]
    assert kinds[0] == "start"
    assert kinds[-1] == "end"
    assert {"step", "eval"} <= set(kinds)
    assert f"step {result['totalSteps']}/{result['totalSteps']}" in run.stderr

    # metrics: both ranks served, under the built-in trainer's names only
    builtin = _builtin_metric_names()
    assert set(served) == {"0", "1"}, served
    for rank, names in served.items():
        # a histogram's *_created series may parse as a family of its own
        unknown = {n for n in names if not any(n == b or n.startswith(b + "_") for b in builtin)}
        assert not unknown, (rank, unknown)
        assert {"torchyard_worker_loss", "torchyard_worker_step"} <= names, (rank, names)
    assert "torchyard_worker_accuracy" in served["0"] | served["1"]


RANK_SCRIPT = """
import os, sys
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
world = torch.ones(1)
dist.all_reduce(world)
rank = os.environ["RANK"]
# a per-rank file, and one file name every pod writes: pods must not share a directory
open(f"rank-{rank}.txt", "w").write(f"{int(world.item())} {sys.executable}")
if os.environ["LOCAL_RANK"] == "0":
    open("pod.txt", "w").write(os.environ["PET_NODE_RANK"])
dist.destroy_process_group()
"""


def test_python_m_torch_distributed_run_runs_and_each_pod_has_its_own_cwd(tmp_path: Path) -> None:
    """Kubeflow's own PyTorchJob examples: `python -m torch.distributed.run` with the script
    relative to the manifest; `python` is the interpreter with torch."""
    folder = tmp_path / "manifests"
    folder.mkdir()
    (folder / "ranks.py").write_text(textwrap.dedent(RANK_SCRIPT))
    doc = job(
        "kubeflow-style",
        workers=2,
        procsPerWorker=2,
        command=["python", "-m", "torch.distributed.run", "--nproc_per_node=2", "ranks.py"],
    )
    manifest = folder / "job.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    run = subprocess.run(
        [sys.executable, "-m", "torchyard.cli", "run", str(manifest)],
        env=base_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    run_dir = tmp_path / "torchyard-runs" / "kubeflow-style"
    logs = "\n".join(p.read_text() for p in sorted(run_dir.glob("pod-*/log.txt")))
    assert run.returncode == 0, run.stderr[-3000:] + logs[-4000:]
    for pod, ranks in ((0, ("0", "1")), (1, ("2", "3"))):
        work = run_dir / f"pod-{pod}" / "work"
        assert (work / "pod.txt").read_text() == str(pod)
        assert sorted(p.name for p in work.glob("rank-*.txt")) == [f"rank-{r}.txt" for r in ranks]
        for r in ranks:
            world, python = (work / f"rank-{r}.txt").read_text().split(" ", 1)
            assert world == "4"
            assert Path(python).parent == Path(sys.executable).parent  # the shims' interpreter
    assert not (tmp_path / "pod.txt").exists()  # nothing in the directory the run started in


# ---------------------------------------------------------------------------------------------
# the framework callbacks, in-process (rank 0 of a world of one, the contract's env by hand)


def _reporter_env(tmp_path: Path, name: str) -> dict[str, str]:
    spec = tmp_path / "spec.yaml"
    store = tmp_path / "store"
    doc = job(name, command=["python", "train.py"], output={"storage": f"file://{store}"})
    spec.write_text(yaml.safe_dump(doc))
    return {
        "TORCHYARD_SPEC": str(spec),
        "TORCHYARD_OUTPUT_DIR": str(tmp_path / "out"),
        "TORCHYARD_METRICS_PORT": str(free_port()),
        "TORCHYARD_JOB_NAME": name,
    }


def _check_reported(tmp_path: Path, name: str) -> dict[str, Any]:
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["status"] == "Succeeded"
    assert result["step"] > 0
    card_path = tmp_path / "store" / name / "v1" / "model-card.json"
    card = json.loads(card_path.read_text())
    assert card["lineage"]["job"] == name
    assert result["model"]["sha256"] == card["sha256"]
    kinds = [e["event"] for e in events(tmp_path / "out" / "progress.jsonl")]
    assert kinds[0] == "start"
    assert kinds[-1] == "end"
    assert "step" in kinds
    return result


def test_hugging_face_trainer_callback(tmp_path: Path) -> None:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    from torchyard_trainer.report import Reporter
    from torchyard_trainer.report.hf import TorchyardCallback

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16, num_labels=2,
    )  # fmt: skip
    model = BertForSequenceClassification(config)
    ids = torch.randint(1, 50, (64, 8))
    labels = (ids[:, 0] > 25).long()  # learnable from the first token
    rows = [{"input_ids": i, "attention_mask": torch.ones(8, dtype=torch.long), "labels": y}
            for i, y in zip(ids, labels, strict=True)]  # fmt: skip

    def accuracy(pred: Any) -> dict[str, float]:
        return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}

    args = TrainingArguments(
        output_dir=str(tmp_path / "hf"), max_steps=8, per_device_train_batch_size=16,
        logging_steps=2, eval_strategy="steps", eval_steps=4, save_strategy="no",
        report_to=[], use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    reporter = Reporter(environ=_reporter_env(tmp_path, "hf-job"))
    trainer = Trainer(
        model=model, args=args, train_dataset=rows, eval_dataset=rows[:16],
        compute_metrics=accuracy, callbacks=[TorchyardCallback(reporter=reporter)],
    )  # fmt: skip
    trainer.train()
    result = _check_reported(tmp_path, "hf-job")
    assert result["totalSteps"] == 8
    assert result["step"] == 8
    assert {"loss", "valLoss", "accuracy"} <= set(result["metrics"])
    evals = [e for e in events(tmp_path / "out" / "progress.jsonl") if e["event"] == "eval"]
    assert evals
    assert "accuracy" in evals[-1]


def test_lightning_callback(tmp_path: Path) -> None:
    import lightning.pytorch as pl
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from torchyard_trainer.report import Reporter
    from torchyard_trainer.report.lightning import TorchyardCallback

    class Classifier(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(4, 2)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            logits = self.net(x)
            self.log("val_loss", nn.functional.cross_entropy(logits, y))
            self.log("val_acc", (logits.argmax(1) == y).float().mean())

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.5)

    torch.manual_seed(0)
    x = torch.randn(64, 4)
    data = TensorDataset(x, (x[:, 0] > 0).long())
    reporter = Reporter(environ=_reporter_env(tmp_path, "pl-job"))
    trainer = pl.Trainer(
        max_epochs=3, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
        callbacks=[TorchyardCallback(reporter=reporter)], default_root_dir=str(tmp_path),
    )  # fmt: skip
    trainer.fit(Classifier(), DataLoader(data, batch_size=16), DataLoader(data, batch_size=32))
    result = _check_reported(tmp_path, "pl-job")
    assert result["totalSteps"] == 12
    assert result["step"] == 12
    assert result["epoch"] == 3
    assert {"loss", "valLoss", "accuracy"} <= set(result["metrics"])
