"""What a finished attempt's worker pods say — pure.

A worker writes its result JSON to its termination message (DESIGN §3, the contract):
:func:`parse_result` reads it and :func:`result_status` turns it into the status fields of a
succeeded job; a failed attempt is described by its lowest-rank failed pod and classified
as retryable or not (:func:`attempt_is_retryable`, on the contract's exit-code rules).
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from pydantic import ValidationError

from torchyard.api import contract
from torchyard.api.common import ModelVersionStatus
from torchyard.api.compression import CompressionReport, Trial
from torchyard.api.training import CheckpointStatus, Progress
from torchyard.state.observed import JobInfo, JobView, PodInfo, Status


def parse_result(message: str | None) -> dict[str, Any] | None:
    """The worker's result JSON from a termination message (None if it is not one)."""
    if not message:
        return None
    text = message.strip()
    start = text.find("{")
    if start < 0:
        return None
    try:
        value = json.loads(text[start:])
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _dump(model: Any) -> dict[str, Any]:
    out: dict[str, Any] = model.model_dump(by_alias=True, exclude_none=True, mode="json")
    return out


def result_status(kind: str, result: dict[str, Any]) -> Status:
    """The status fields a successful worker's result fills in (validated, unknown keys off)."""
    out: Status = {}

    def take(key: str, model: Any, target: str | None = None) -> None:
        value = result.get(key)
        if value is None:
            return
        with contextlib.suppress(ValidationError):
            out[target or key] = _dump(model.model_validate(value))

    take("model", ModelVersionStatus)
    if kind == "TrainingJob":
        take("lastCheckpoint", CheckpointStatus)
        progress: dict[str, Any] = {}
        for src, dst in (("epoch", "epoch"), ("step", "step"), ("totalSteps", "totalSteps")):
            if isinstance(result.get(src), int):
                progress[dst] = result[src]
        metrics = result.get("metrics") or {}
        if isinstance(metrics, dict):
            for src, dst in (("loss", "loss"), ("accuracy", "accuracy")):
                if isinstance(metrics.get(src), int | float):
                    progress[dst] = float(metrics[src])
        if progress:
            # A finished run's own figures replace the last live report's estimates (the
            # status is merge-patched: a key left out would keep e.g. "98%, ETA 3 s").
            total, step = progress.get("totalSteps"), progress.get("step")
            if total and step is not None:
                progress["percent"] = min(100.0, round(100.0 * step / total, 1))
                progress["etaSeconds"] = 0
            out["progress"] = _dump(Progress.model_validate(progress))
    else:
        take("report", CompressionReport)
        trials = result.get("trials")
        if isinstance(trials, list):
            valid = []
            for t in trials:
                try:
                    valid.append(_dump(Trial.model_validate(t)))
                except ValidationError:
                    continue
            out["trials"] = valid
    return out


def result_of(kind: str, pods: tuple[PodInfo, ...]) -> Status:
    """Status fields from rank 0's result (termination message); empty when there is none."""
    ranked = sorted(pods, key=lambda p: (p.index is None, p.index or 0))
    for pod in ranked:
        result = parse_result(pod.message)
        if result is not None:
            return result_status(kind, result)
    return {}


def failed_pod(pods: tuple[PodInfo, ...]) -> PodInfo | None:
    """The failed pod of the lowest rank, preferring one with a non-zero exit code."""
    failed = [p for p in pods if p.phase == "Failed" and p.exit_code not in (None, 0)]
    if not failed:
        failed = [p for p in pods if p.phase == "Failed"]
    return min(failed, key=lambda p: (p.index is None, p.index or 0)) if failed else None


def describe_pod_failure(pod: PodInfo | None) -> str:
    """ "worker N exited with code C (reason): message" — for the status and the Event."""
    if pod is None:
        return "a worker failed"
    rank = f"worker {pod.index}" if pod.index is not None else f"pod {pod.name}"
    text = f"{rank} exited with code {pod.exit_code}"
    if pod.reason and pod.reason not in ("Error",):
        text += f" ({pod.reason})"
    result = parse_result(pod.message)
    if result and result.get("message"):
        text += f": {str(result['message'])[:300]}"
    elif pod.message and not result:
        text += f": {pod.message.strip()[-300:]}"
    return text


def attempt_is_retryable(view: JobView, job: JobInfo, pod: PodInfo | None) -> bool:
    """Whether a failed attempt may restart the group (before counting backoffLimit)."""
    assert view.parsed is not None
    policy = view.parsed.spec.run_policy
    if job.failed_reason == "PodFailurePolicy":
        return False  # a FailJob rule matched: the exit code means "user error"
    return contract.is_retryable(pod.exit_code if pod is not None else None, policy)
