"""`torchyard run` before any worker starts: what can be checked is checked (one line that
names the field, instead of a worker failing after torch has started), and the run folder is
made ready — a finished run's results cleared, every run's logs kept (``log.txt`` is this run,
``log.1.txt`` the one before, … up to ``log.5.txt``).

No torch here: this module is part of the torch-free ``torchyard`` package.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

from torchyard.api import AnyJob, CompressionJob
from torchyard.api.base import dump
from torchyard.api.contract import StorageURIError, local_path
from torchyard.api.manifest import parse_job
from torchyard.local_output import stderr

TRAINING_JOB = "TrainingJob"
LOG_FILE = "log.txt"
KEEP_LOGS = 5
"""Runs whose logs are kept besides this one's (log.1.txt … log.5.txt)."""
LOG_NAME = re.compile(r"log(\.\d+)?\.txt")


def _trained_by(store: Path, job_name: str) -> bool:
    """Whether ``store`` holds a model version TrainingJob ``job_name`` produced (the lookup the
    worker makes for ``source.trainingJobRef``, without torch)."""
    for card in store.glob("*/v*/model-card.json"):
        if card.parent.parent.name.startswith(".") or not card.parent.name[1:].isdigit():
            continue
        try:
            lineage = json.loads(card.read_text()).get("lineage") or {}
        except (OSError, ValueError, AttributeError):
            continue
        if lineage.get("job") == job_name and lineage.get("kind", TRAINING_JOB) == TRAINING_JOB:
            return True
    return False


def _job_refs(job: AnyJob) -> list[tuple[str, str]]:
    """(field path, TrainingJob name) of every model the job takes from another job's output."""
    if isinstance(job, CompressionJob):
        ref = job.spec.source.training_job_ref
        return [("spec.source.trainingJobRef", ref)] if ref else []
    distillation = job.spec.distillation
    ref = distillation.teacher.training_job_ref if distillation is not None else None
    return [("spec.distillation.teacher.trainingJobRef", ref)] if ref else []


def precheck(job: AnyJob, pvc_root: Path) -> str | None:
    """What is bound to fail before any worker starts, as one line that names the field."""
    uri = str(job.spec.output.storage)
    for path, ref in _job_refs(job):
        try:
            store = local_path(uri, pvc_root)
        except StorageURIError:
            return None  # an object store: the worker looks the version up (and says why not)
        if not _trained_by(store, ref):
            return (
                f"{path}: TrainingJob {ref!r} has produced no model version in {store} yet; "
                "run it first (torchyard run <its manifest>)"
            )
    return None


def rotate_logs(run_dir: Path) -> None:
    """log.txt holds this run (its attempts one after another); the runs before are kept as
    log.1.txt (the last one) … log.<KEEP_LOGS>.txt."""
    for pod in sorted(run_dir.glob("pod-*")):
        if not (pod / LOG_FILE).exists():
            continue
        (pod / f"log.{KEEP_LOGS}.txt").unlink(missing_ok=True)
        for n in range(KEEP_LOGS - 1, 0, -1):
            if (pod / f"log.{n}.txt").exists():
                (pod / f"log.{n}.txt").replace(pod / f"log.{n + 1}.txt")
        (pod / LOG_FILE).replace(pod / "log.1.txt")


def _clear_but_logs(run_dir: Path) -> None:
    """A finished run's folder emptied for the next one, all but the pods' logs."""
    for path in run_dir.iterdir():
        if path.is_dir() and path.name.startswith("pod-"):
            for inner in path.iterdir():
                if not LOG_NAME.fullmatch(inner.name):
                    _remove(inner)
        else:
            _remove(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def prepare_run_dir(job: AnyJob, run_dir: Path, ckpt: Path | None) -> None:
    previous = run_dir / "pod-0" / "result.json"
    finished_before = False
    with contextlib.suppress(OSError, ValueError):
        finished_before = json.loads(previous.read_text()).get("status") == "Succeeded"
    if finished_before:
        # a finished job runs again from scratch; an interrupted or failed one resumes
        _clear_but_logs(run_dir)
        if ckpt is not None:
            shutil.rmtree(ckpt, ignore_errors=True)
    elif ckpt is not None and ckpt.exists():
        stderr.print(f"resuming {job.metadata.name} from the checkpoints in {ckpt}", markup=False)
    run_dir.mkdir(parents=True, exist_ok=True)
    rotate_logs(run_dir)
    for stale in run_dir.glob("pod-*/result.json"):
        stale.unlink()


# Where a job writes (its model store, its checkpoints): relative paths there stay relative to
# the directory `torchyard run` starts in, where torchyard-runs/ is.
OUTPUT_KEYS = frozenset({"output", "checkpoint"})


def _resolve_inputs(node: Any, manifest_dir: Path, key: str = "") -> Any:
    if isinstance(node, dict):
        return {
            k: v if k in OUTPUT_KEYS else _resolve_inputs(v, manifest_dir, k)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_resolve_inputs(v, manifest_dir, key) for v in node]
    if isinstance(node, str) and node.startswith("file://") and not node[7:].startswith("/"):
        beside = manifest_dir / node[7:]
        if beside.exists():
            return f"file://{beside.resolve()}"
    return node


def with_manifest_relative_inputs(job: AnyJob, manifest: Path) -> AnyJob:
    """A relative ``file://`` input (data, weights, a model directory) is looked up beside the
    manifest first, as docker compose and kustomize resolve theirs, then in the directory the
    run starts in: `torchyard run examples/minilm-int8.yaml` finds examples/data/ from
    anywhere. Outputs (``output``, ``checkpoint``) stay where the run starts."""
    doc = dump(job)
    resolved = _resolve_inputs(doc["spec"], manifest.absolute().parent)
    if resolved == doc["spec"]:
        return job
    return parse_job({**doc, "spec": resolved}, str(manifest))


__all__ = [
    "KEEP_LOGS",
    "LOG_FILE",
    "precheck",
    "prepare_run_dir",
    "rotate_logs",
    "with_manifest_relative_inputs",
]
