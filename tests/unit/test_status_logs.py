"""``status.logs``: the state machine records where a TrainingJob's workers archive their logs
(its output store, else the operator's ``--default-storage``), from the first decision on and
through restarts; `torchyard logs` reads that recorded location first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.unit.test_status import T0, failed_body, job, pod, step, tj_body
from torchyard import logarchive
from torchyard.api.constants import Phase
from torchyard.state import Decision, JobView, Observed, decide


def run(body: dict[str, Any], default_storage: str | None = None, **obs: Any) -> Decision:
    return decide(JobView.from_body(body), Observed(now=T0, **obs), None, default_storage)


def with_output(body: dict[str, Any], storage: str) -> dict[str, Any]:
    body["spec"]["output"] = {"storage": storage}
    return body


def test_new_job_records_its_own_output_store() -> None:
    d = run(with_output(tj_body(), "pvc://models/out"), default_storage="file:///elsewhere")
    assert d.status["logs"] == {"uri": "pvc://models/out/.logs/ml/digits", "attempts": 1}


def test_job_without_output_uses_the_operators_default_store() -> None:
    d = run(tj_body(), default_storage="file:///srv/store/")
    assert d.status["logs"] == {"uri": "file:///srv/store/.logs/ml/digits", "attempts": 1}


def test_running_job_has_the_location_so_earlier_attempts_are_found() -> None:
    body = step(tj_body(), run(tj_body(), default_storage="pvc://m"))
    d = run(body, default_storage="pvc://m", job=job(active=2, ready=2))
    assert d.status["phase"] == Phase.RUNNING
    assert d.status["logs"]["uri"] == "pvc://m/.logs/ml/digits"


def test_attempts_follow_the_restarts() -> None:
    body = with_output(failed_body({"backoffLimit": 2}), "pvc://m")
    failed = job(failed=1, failed_reason="BackoffLimitExceeded", uid="attempt-0")
    d = run(body, job=failed, pods=(pod(0, "Failed", 137),))
    assert d.status["restarts"] == 1
    assert d.status["logs"] == {"uri": "pvc://m/.logs/ml/digits", "attempts": 2}


def test_no_archive_no_location() -> None:
    # an object store is not archived to; maxBytesPerRank 0 turns the archive off
    assert "logs" not in run(with_output(tj_body(), "s3://bucket/x")).status
    assert "logs" not in run(tj_body()).status
    off = with_output(tj_body(), "pvc://m")
    off["spec"]["logs"] = {"maxBytesPerRank": 0}
    assert "logs" not in run(off).status


def test_a_recorded_location_is_kept_when_none_resolves_now() -> None:
    recorded = {"uri": "pvc://m/.logs/ml/digits", "attempts": 1}
    d = run(tj_body(status={"phase": Phase.RUNNING, "logs": recorded}), job=job(active=2))
    assert d.status["logs"] == recorded


def test_torchyard_logs_prefers_the_recorded_location(tmp_path: Path) -> None:
    obj = with_output(tj_body(), "pvc://models/out")
    obj["status"] = {"logs": {"uri": "pvc://models/default/.logs/ml/digits", "attempts": 1}}
    uri, path = logarchive.archive_of(obj, tmp_path)
    assert uri == "pvc://models/default/.logs/ml/digits"
    assert path == tmp_path / "models" / "default" / ".logs" / "ml" / "digits"
    del obj["status"]
    assert logarchive.archive_of(obj, tmp_path)[0] == "pvc://models/out/.logs/ml/digits"
