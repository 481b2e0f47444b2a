"""Running real worker processes (torchrun / `torchyard run`) from the worker tests."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from torchyard_trainer.launch import single_node_command

REPO = Path(__file__).resolve().parents[2]
SOURCE_ROOTS = [str(REPO / "operator"), str(REPO / "trainer_image")]
TIMEOUT = 600
# in-process imports of torchyard_trainer also work from a plain checkout (installed wins)
sys.path.extend(r for r in SOURCE_ROOTS if r not in sys.path)


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TORCHYARD_", "PET_"))}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    env["PYTHONPATH"] = os.pathsep.join([*SOURCE_ROOTS, env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def job(name: str, **spec: Any) -> dict[str, Any]:
    """A TrainingJob manifest (camelCase spec keys)."""
    return {
        "apiVersion": "torchyard.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": copy.deepcopy(spec),
    }


def run_worker(
    manifest: dict[str, Any], out_dir: Path, nproc: int = 1, extra_env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run the trainer on ``nproc`` local processes (torchrun via our launcher when > 1);
    returns the result file. Fails the test with the log when the worker fails."""
    out_dir.mkdir(parents=True, exist_ok=True)
    spec_path = out_dir / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(manifest))
    env = base_env(
        TORCHYARD_SPEC=str(spec_path),
        TORCHYARD_OUTPUT_DIR=str(out_dir),
        **(extra_env or {}),
    )
    if nproc == 1:
        cmd = [sys.executable, "-m", "torchyard_trainer"]
    else:
        cmd = single_node_command(nproc, free_port())
    proc = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"worker exited {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    starts = [e for e in events(out_dir / "progress.jsonl") if e["event"] == "start"]
    assert starts, "the worker logged no start event"
    assert starts[0]["startStep"] == 0, f"resumed from a stale checkpoint: {starts[0]}"
    return dict(json.loads((out_dir / "result.json").read_text()))


def run_local(
    manifest_path: Path,
    cwd: Path,
    extra_env: dict[str, str] | None = None,
    args: list[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`torchyard run MANIFEST` (through torchyard.local, the function the CLI calls)."""
    return subprocess.run(
        [sys.executable, "-m", "torchyard.local", str(manifest_path), *(args or [])],
        env=base_env(**(extra_env or {})),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def model_weights(result: dict[str, Any]) -> dict[str, Any]:
    from safetensors.torch import load_file

    uri = result["model"]["uri"]
    return load_file(str(Path(uri.removeprefix("file://")) / "model.safetensors"))


def events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
