"""A CompressionJob on two worker processes (real torch.distributed, gloo on this CPU): the
distillation fine-tune is data-parallel over both ranks, rank 0 alone evaluates, gates and saves
one model version, and the other rank exits with rank 0's outcome. Jobs with several workers
but no distill step are rejected naming spec.workers."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.compress.conftest import manifest, recompute
from tests.worker.helpers import base_env, free_port, run_local
from torchyard_trainer.launch import single_node_command

pytestmark = pytest.mark.worker

WORLD = 2
STUDENT = {"builtin": "mlp", "args": {"hidden": [32]}}
SHARD_LOG = re.compile(r"rank (\d+): distilling on (\d+) of (\d+) transfer samples")


def _launch(doc: dict[str, Any], out: Path, nproc: int = WORLD
            ) -> subprocess.CompletedProcess[str]:
    """``nproc`` local worker processes through the image's launcher (torchrun's env contract:
    RANK, WORLD_SIZE, MASTER_ADDR, ...)."""
    out.mkdir(parents=True, exist_ok=True)
    spec = out / "spec.yaml"
    spec.write_text(yaml.safe_dump(doc))
    env = base_env(TORCHYARD_SPEC=str(spec), TORCHYARD_OUTPUT_DIR=str(out))
    return subprocess.run(single_node_command(nproc, free_port()), env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def _versions(store: Path) -> list[Path]:
    return sorted(p for p in store.glob("*/v*") if p.is_dir()) if store.exists() else []


def _gate(baseline: float, value: float, tol: float) -> bool:
    return baseline - value <= tol + 1e-12


def test_two_workers_distill_data_parallel_and_rank0_saves_once(
    teacher: dict, digits: Any, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    tol = 0.1
    doc = manifest(teacher, store, [{"distill": {"student": STUDENT, "epochs": 10}}],
                   workers=WORLD, accuracyCriterion={"mode": "absolute", "tolerableLoss": tol})
    proc = _launch(doc, tmp_path / "out")
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    # the pod's exit code is the gate's verdict (0 passed, 3 not), as for one worker
    assert proc.returncode == (0 if result["report"]["passed"] else 3), proc.stderr[-4000:]

    # both ranks trained, each on its own half of the transfer set
    shards = {int(r): (int(n), int(total)) for r, n, total in SHARD_LOG.findall(proc.stderr)}
    assert set(shards) == set(range(WORLD)), proc.stderr[-4000:]
    samples = len(digits.train_x)
    assert {total for _, total in shards.values()} == {samples}
    assert {n for n, _ in shards.values()} == {samples // WORLD}
    info = result["trials"][0]  # one candidate: distill as specified
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    step = report["steps"][0]["distill"]
    assert step["worldSize"] == WORLD
    assert step["samplesPerRank"] == [samples // WORLD] * WORLD
    assert step["samples"] == samples
    assert f"DDP ({WORLD} ranks, gloo" in report["backend"]

    # exactly one model version, written by rank 0; its figures are the report's
    assert _versions(store) == [store / "compressed" / "v1"]
    again = recompute(result, digits)
    comp = result["report"]["compressed"]
    assert comp["accuracy"] == pytest.approx(again["accuracy"], abs=1e-6)
    assert comp["bytes"] == again["bytes"]
    assert again["card"]["model"]["args"] == STUDENT["args"]
    assert again["card"]["lineage"]["steps"][0]["distill"]["worldSize"] == WORLD
    assert info["stats"]["accuracy"] == pytest.approx(again["accuracy"], abs=1e-6)
    baseline = result["report"]["baseline"]["accuracy"]
    assert baseline == pytest.approx(teacher["accuracy"], abs=1e-6)
    passed = _gate(baseline, again["accuracy"], tol)
    assert result["report"]["passed"] is passed
    assert result["status"] == ("Succeeded" if passed else "Failed")
    # only rank 0 reports: no second result / report anywhere
    assert len(list(tmp_path.rglob("result.json"))) == 1
    assert len(list((tmp_path / "out").rglob("report.json"))) == 1


def test_rank0_failure_fails_every_pod_without_a_version(teacher: dict, tmp_path: Path) -> None:
    """`torchyard run` with workers: 2 (two pods from the operator's builders, one process
    each). Rank 0 fails after the ranks met (its source is missing): the other pod, waiting for
    distillation work, exits with rank 0's code instead of hanging; nothing is written."""
    store = tmp_path / "store"
    doc = manifest(teacher, store, [{"distill": {"student": STUDENT, "epochs": 1}}],
                   workers=WORLD)
    doc["spec"]["source"]["model"]["checkpoint"] = f"file://{tmp_path}/missing.safetensors"
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    proc = run_local(path, tmp_path)
    assert proc.returncode == 2, proc.stdout[-4000:] + proc.stderr[-4000:]
    pods = tmp_path / "torchyard-runs" / doc["metadata"]["name"]
    follower = (pods / "pod-1" / "log.txt").read_text()
    assert "rank 1 of 2 joined" in follower, follower[-4000:]
    assert "rank 1: rank 0 failed (exit code 2)" in follower, follower[-4000:]
    result = json.loads((pods / "pod-0" / "result.json").read_text())
    assert "does not exist" in result["message"]
    assert not (pods / "pod-1" / "result.json").exists()
    assert _versions(store) == []


def test_several_workers_without_a_distill_step_are_rejected(
    teacher: dict, tmp_path: Path
) -> None:
    from pydantic import ValidationError

    from torchyard.api import CompressionJob
    from torchyard.api.manifest import format_validation_error

    steps = [{"prune": {"method": "magnitude", "sparsity": 0.5}},
             {"quantize": {"method": "dynamicInt8"}}]
    store = tmp_path / "store"
    # the API (CEL in the CRD, the same rule in Python) names the field
    with pytest.raises(ValidationError) as excinfo:
        CompressionJob.model_validate(manifest(teacher, store, steps, workers=WORLD))
    lines = format_validation_error(excinfo.value)
    assert any(line.startswith("spec.workers: ") for line in lines), lines
    CompressionJob.model_validate(manifest(teacher, store, steps, workers=1))
    CompressionJob.model_validate(
        manifest(teacher, store, [{"distill": {"student": STUDENT}}, *steps], workers=WORLD))

    # a worker started on two processes anyway: exit 2 on every rank, naming spec.workers,
    # before any rendezvous or any work
    proc = _launch(manifest(teacher, store, steps), tmp_path / "out")
    assert proc.returncode == 2, proc.stderr[-4000:]
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["message"].startswith("spec.workers: WORLD_SIZE=2"), result["message"]
    # Logged by the rank that fails first; its sibling may be stopped by torchrun's agent
    # (which ends the whole group at the first failure) before it gets as far (seen in CI).
    assert proc.stderr.count("spec.workers: WORLD_SIZE=2") >= 1, proc.stderr[-4000:]
    assert _versions(store) == []


def _rank_pid(spec: Path, rank: int) -> int | None:
    """PID of the live worker process of ``rank`` whose environment points at ``spec``."""
    needles = {f"TORCHYARD_SPEC={spec}".encode(), f"RANK={rank}".encode()}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if needles <= set((proc / "environ").read_bytes().split(b"\0")):
                return int(proc.name)
        except OSError:
            continue
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_a_hung_rank_fails_rank0_after_the_collective_timeout(
    teacher: dict, tmp_path: Path
) -> None:
    """Rank 1 stops (SIGSTOP: alive, its connections open, never answering) in the middle of
    the distillation fine-tune. Rank 0's collective times out after TORCHYARD_COLLECTIVE_
    TIMEOUT_SECONDS instead of the 10-minute default, and so does its word to the other ranks
    (not the control group's 24 h): rank 0 exits with the retryable peer-lost code within a few
    timeouts, naming the timeout, and no model version is written."""
    import os
    import signal
    import time

    from torchyard.api.compression import DistillStep
    from torchyard.api.contract import ExitCode
    from torchyard_trainer.runtime import COLLECTIVE_TIMEOUT, TIMEOUT_ENV

    timeout = 10.0
    # the runtime's worst case: the fine-tune's collective, then telling the others "done"
    bound = 3 * timeout
    store, out = tmp_path / "store", tmp_path / "out"
    # the most epochs the API allows, far more than the test lasts: only the timeout can end
    # the fine-tune in time
    epochs = next(m.le for m in DistillStep.model_fields["epochs"].metadata if hasattr(m, "le"))
    doc = manifest(teacher, store, [{"distill": {"student": STUDENT, "epochs": epochs}}],
                   workers=WORLD)
    out.mkdir(parents=True)
    spec = out / "spec.yaml"
    spec.write_text(yaml.safe_dump(doc))
    env = base_env(TORCHYARD_SPEC=str(spec), TORCHYARD_OUTPUT_DIR=str(out),
                   **{TIMEOUT_ENV: str(timeout)})
    log_path = tmp_path / "launch.log"
    stopped: int | None = None
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(single_node_command(WORLD, free_port()), env=env,
                                stdout=log_file, stderr=subprocess.STDOUT, text=True)
        try:
            # wait until both ranks train (each logged its shard), then freeze rank 1
            deadline = time.monotonic() + COLLECTIVE_TIMEOUT.total_seconds() / 5
            while len(set(SHARD_LOG.findall(log_path.read_text()))) < WORLD:
                assert proc.poll() is None, log_path.read_text()[-4000:]
                assert time.monotonic() < deadline, log_path.read_text()[-4000:]
                time.sleep(0.1)
            leader, stopped = _rank_pid(spec, 0), _rank_pid(spec, 1)
            assert leader is not None, log_path.read_text()[-4000:]
            assert stopped is not None, log_path.read_text()[-4000:]
            os.kill(stopped, signal.SIGSTOP)
            t_stop = time.monotonic()
            while Path(f"/proc/{leader}").exists() and time.monotonic() - t_stop < 2 * bound:
                time.sleep(0.1)
            elapsed = time.monotonic() - t_stop
            # what Kubernetes does to the other pods of a failed Job (torchrun here would give
            # the stopped process its 30 s SIGTERM grace first)
            os.kill(stopped, signal.SIGKILL)
            code = proc.wait(timeout=bound)
        finally:
            if stopped is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(stopped, signal.SIGKILL)
                    os.kill(stopped, signal.SIGCONT)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log_path.read_text()
    assert elapsed < bound, (elapsed, text[-4000:])
    assert code == ExitCode.PEER_LOST, text[-4000:]  # rank 0's code: retryable, a group restart
    result = json.loads((out / "result.json").read_text())
    assert (result["status"], result["exitCode"]) == ("Failed", ExitCode.PEER_LOST), result
    assert re.search(r"timed out|timeout", result["message"], re.I), result["message"]
    assert "rank0 ERROR a peer rank failed" in text, text[-4000:]
    assert _versions(store) == []
