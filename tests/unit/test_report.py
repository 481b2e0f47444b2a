"""torchyard_trainer.report's rules: a no-op outside torchyard, files from rank 0 only, the
result the operator reads, the model version the built-in trainer writes; and the local
runner's path and interpreter rules for a user's command (torchyard.local_env)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from torchyard.api.contract import Env
from torchyard.state.results import result_status
from torchyard_trainer.report import Reporter


def _spec(tmp_path: Path, **spec: Any) -> Path:
    path = tmp_path / "spec.yaml"
    doc = {
        "apiVersion": "torchyard.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "mine"},
        "spec": {"command": ["python", "train.py"], **spec},
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def _environ(tmp_path: Path, rank: int = 0, **spec: Any) -> dict[str, str]:
    return {
        Env.SPEC: str(_spec(tmp_path, **spec)),
        Env.OUTPUT_DIR: str(tmp_path / "out"),
        Env.RANK: str(rank),
        Env.WORLD_SIZE: "2",
    }


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_outside_torchyard_every_call_is_a_no_op(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith(("TORCHYARD_", "PET_")):
            monkeypatch.delenv(name)
    reporter = Reporter(total_steps=10, epochs=1)
    assert not reporter.active
    reporter.step(step=1, epoch=0, loss=0.5, metrics={"accuracy": 0.9})
    reporter.evaluate({"valLoss": 0.4})
    # nothing is saved, and nothing is even looked at: not a model, no torch needed
    assert reporter.save_model(object()) is None
    assert reporter.finish() is None
    assert _files(tmp_path) == []


def test_other_ranks_write_no_files(tmp_path: Path) -> None:
    reporter = Reporter(total_steps=2, environ=_environ(tmp_path, rank=1))
    assert reporter.active
    assert not reporter.is_writer
    reporter.step(step=1, loss=1.0)
    assert reporter.save_model({"w": object()}) is None  # rank 1 never builds a state dict
    assert reporter.finish(metrics={"accuracy": 0.5}) is None
    assert [p.name for p in _files(tmp_path)] == ["spec.yaml"]


def test_rank_zero_writes_progress_and_the_result_the_operator_reads(tmp_path: Path) -> None:
    reporter = Reporter(total_steps=4, epochs=2, environ=_environ(tmp_path))
    for step in range(1, 5):
        reporter.step(step=step, epoch=(step - 1) // 2, loss=1.0 / step, lr=0.1)
    reporter.evaluate({"accuracy": 0.75, "valLoss": 0.6, "f1": float("nan"), "note": "x"})
    result = reporter.finish()
    assert result is not None
    on_disk = json.loads((tmp_path / "out" / "result.json").read_text())
    assert on_disk == result
    assert result["status"] == "Succeeded"
    assert (result["step"], result["totalSteps"], result["epoch"]) == (4, 4, 2)
    # finite numbers only (NaN and text are left out), the last loss beside them
    assert result["metrics"] == {"loss": 0.25, "accuracy": 0.75, "valLoss": 0.6}
    status = result_status("TrainingJob", result)
    assert status["progress"] == {
        "epoch": 2,
        "step": 4,
        "totalSteps": 4,
        "loss": 0.25,
        "accuracy": 0.75,
        "percent": 100.0,
        "etaSeconds": 0,
    }
    lines = (tmp_path / "out" / "progress.jsonl").read_text().splitlines()
    kinds = [json.loads(line)["event"] for line in lines]
    assert kinds == ["start", "step", "step", "step", "step", "eval", "end"]


def test_rank_zero_saves_a_model_version_with_the_trainers_card(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    store = tmp_path / "store"
    environ = _environ(tmp_path, output={"storage": f"file://{store}", "modelName": "net"})
    reporter = Reporter(total_steps=1, environ=environ)
    reporter.step(step=1, loss=0.5)
    model = torch.nn.Linear(3, 2)
    saved = tmp_path / "weights.pt"
    torch.save(model.state_dict(), saved)
    card = reporter.save_model(saved)  # a torch.save'd state dict
    assert card is not None
    second = reporter.save_model(model, metrics={"accuracy": 0.5})  # the module itself
    assert second is not None
    assert second["version"] == card["version"] + 1
    version = store / "net" / f"v{second['version']}"
    assert sorted(p.name for p in version.iterdir()) == ["model-card.json", "model.safetensors"]
    written = json.loads((version / "model-card.json").read_text())
    assert written["sha256"] == card["sha256"]  # the same weights either way
    assert written["lineage"]["job"] == "mine"
    assert written["lineage"]["kind"] == "TrainingJob"
    assert written["metrics"] == {"loss": 0.5, "accuracy": 0.5}
    result = reporter.finish()
    assert result is not None
    assert result["model"]["uri"] == f"file://{version}"
    assert result_status("TrainingJob", result)["model"]["version"] == second["version"]


def test_an_exception_in_the_block_writes_a_failure_record(tmp_path: Path) -> None:
    def train(reporter: Reporter) -> None:
        with reporter:
            reporter.step(step=1, loss=1.0)
            raise RuntimeError("diverged")

    with pytest.raises(RuntimeError):
        train(Reporter(environ=_environ(tmp_path)))
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["status"] == "Failed"
    assert result["reason"] == "RuntimeError"
    assert result["message"] == "diverged"


def test_callback_metric_names_follow_the_builtin_trainer() -> None:
    pytest.importorskip("transformers")
    from torchyard_trainer.report.hf import epoch_index, eval_metrics

    assert eval_metrics({"eval_loss": 0.3, "eval_accuracy": 0.9, "eval_runtime": 1.0}) == {
        "valLoss": 0.3,
        "accuracy": 0.9,
    }
    assert [epoch_index(e) for e in (0.0, 0.5, 1.0, 1.5)] == [0, 0, 0, 1]


# ---------------------------------------------------------------------------------------------
# torchyard run: a pod's command on this machine


def test_python_and_torchrun_map_to_this_interpreter_and_the_exit_code_keeping_launcher() -> None:
    from torchyard.local_env import LAUNCH_MODULE, launcher_command

    py = sys.executable
    assert launcher_command(["torchrun", "a.py"]) == [py, "-m", LAUNCH_MODULE, "a.py"]
    kubeflow = ["python", "-m", "torch.distributed.run", "--nproc_per_node=2", "a.py"]
    assert launcher_command(kubeflow) == [py, "-m", LAUNCH_MODULE, "--nproc_per_node=2", "a.py"]
    # anything else runs as written: `python` is found on PATH, where the shims are first
    assert launcher_command(["python", "a.py"]) == ["python", "a.py"]


def test_shims_run_this_interpreter(tmp_path: Path) -> None:
    import subprocess

    from torchyard.local_env import pod_process_env, write_interpreter_shims

    shims = write_interpreter_shims(tmp_path / "bin")
    env = pod_process_env({"PATH": "/usr/bin:/bin"}, shims, [tmp_path])
    assert env["PATH"].split(os.pathsep)[0] == str(shims)
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(tmp_path)
    for name in ("python", "python3"):
        out = subprocess.run(
            [name, "-c", "import sys; print(sys.prefix)"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == sys.prefix


def test_relative_command_paths_and_file_uris_become_absolute(tmp_path: Path) -> None:
    from torchyard.api.manifest import parse_job
    from torchyard.local_env import with_start_dir_paths

    manifests, start = tmp_path / "manifests", tmp_path / "start"
    (manifests / "scripts").mkdir(parents=True)
    (manifests / "scripts" / "train.py").write_text("")
    (start / "data").mkdir(parents=True)
    doc = {
        "apiVersion": "torchyard.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "paths"},
        "spec": {
            "command": [
                "python", "-m", "torch.distributed.run", "scripts/train.py",
                "--data=data", "--out", "not-there", "--flag",
            ],
            "output": {"storage": "file://models"},
        },
    }  # fmt: skip
    job = with_start_dir_paths(parse_job(doc), start, manifests)
    assert job.spec.command == [
        "python", "-m", "torch.distributed.run", str(manifests / "scripts" / "train.py"),
        f"--data={start / 'data'}", "--out", "not-there", "--flag",
    ]  # fmt: skip
    assert job.spec.output.storage == f"file://{start / 'models'}"
