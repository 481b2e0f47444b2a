"""`torchyard get -o wide|yaml|json`, `get -w` and `logs -f/--previous`, against a stand-in
API server (tests/unit/kubestub.py); the real control plane's tier is
tests/cluster/test_operator_cli.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from tests.unit.kubestub import Stub, serving, status
from torchyard.cli import app

TJ = "/apis/torchyard.io/v1alpha1/namespaces/team-a/trainingjobs"
CJ = "/apis/torchyard.io/v1alpha1/namespaces/team-a/compressionjobs"
PODS = "/api/v1/namespaces/team-a/pods"


def _job(name: str, phase: str, **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "torchyard.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {
            "name": name,
            "namespace": "team-a",
            "resourceVersion": "7",
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"kueue.x-k8s.io/queue-name": "team-queue"},
        },
        "spec": {"strategy": "pipeline", "workers": 2},
        "status": {"phase": phase, "workers": {"ready": 2}, **status},
    }


def _listing(*items: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    return 200, {
        "kind": "TrainingJobList",
        "items": list(items),
        "metadata": {"resourceVersion": "5"},
    }


@pytest.fixture
def stub() -> Iterator[Stub]:
    with serving() as s:
        s.answers[TJ] = _listing(
            _job("alpha", "Running", progress={"step": 10, "totalSteps": 40, "loss": 0.5}),
            _job("a-much-longer-name", "Succeeded", message="done [ok]"),
        )
        s.answers[CJ] = _listing()
        yield s


def _cli(stub: Stub, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [*args, "--kubeconfig", str(stub.kubeconfig(tmp_path))])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def test_get_prints_kubectls_columns(stub: Stub, tmp_path: Path) -> None:
    code, out, _ = _cli(stub, tmp_path, "get", "tj")
    assert code == 0
    header, first, second = out.splitlines()
    assert header.split() == [
        "KIND", "NAMESPACE", "NAME", "PHASE", "WORKERS", "RESTARTS", "PROGRESS", "MODEL", "AGE"
    ]  # fmt: skip
    assert first.split()[:7] == ["tj", "team-a", "alpha", "Running", "2/2", "0", "10/40"]
    # columns line up: each column starts where its header does
    assert first.index("Running") == second.index("Succeeded") == header.index("PHASE")


def test_get_wide_adds_strategy_queue_loss_and_the_message_as_written(
    stub: Stub, tmp_path: Path
) -> None:
    code, out, _ = _cli(stub, tmp_path, "get", "tj", "-o", "wide")
    assert code == 0
    header, first, second = out.splitlines()
    assert header.split()[-5:] == ["STRATEGY", "QUEUE", "LOSS", "ACCURACY", "MESSAGE"]
    assert first.split()[-5:] == ["pipeline", "team-queue", "0.5", "-", "-"]
    assert second.endswith("done [ok]")  # printed as written: no console markup


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_get_yaml_and_json_print_a_list_or_the_named_object(
    stub: Stub, tmp_path: Path, fmt: str
) -> None:
    code, out, _ = _cli(stub, tmp_path, "get", "-o", fmt)
    assert code == 0
    doc = json.loads(out) if fmt == "json" else yaml.safe_load(out)
    assert doc["kind"] == "List"
    assert [i["metadata"]["name"] for i in doc["items"]] == ["alpha", "a-much-longer-name"]

    stub.answers[f"{TJ}/alpha"] = (200, _job("alpha", "Running"))
    code, out, _ = _cli(stub, tmp_path, "get", "tj", "alpha", "-o", fmt)
    assert code == 0
    doc = json.loads(out) if fmt == "json" else yaml.safe_load(out)
    assert doc["kind"] == "TrainingJob"
    assert doc["metadata"]["name"] == "alpha"


def test_an_unknown_output_format_is_a_usage_error(stub: Stub, tmp_path: Path) -> None:
    code, _, err = _cli(stub, tmp_path, "get", "-o", "table")
    assert code == 2
    assert err == "error: --output 'table': use one of wide, yaml, json\n"


def test_watch_prints_each_change_as_a_row_under_the_listing(stub: Stub, tmp_path: Path) -> None:
    stub.watches[TJ] = [
        [
            {"type": "MODIFIED", "object": _job("alpha", "Succeeded")},
            {"type": "ADDED", "object": _job("beta", "Pending")},
        ],
        # The next watch request is refused: the command ends the way any failure ends it.
        status(403, "Forbidden", "trainingjobs.torchyard.io is forbidden"),
    ]
    code, out, err = _cli(stub, tmp_path, "get", "tj", "-w")
    assert code == 1
    assert err == "error: Forbidden (403): trainingjobs.torchyard.io is forbidden\n"
    lines = out.splitlines()
    assert [line.split()[2:4] for line in lines[1:]] == [
        ["alpha", "Running"],
        ["a-much-longer-name", "Succeeded"],
        ["alpha", "Succeeded"],
        ["beta", "Pending"],
    ]
    assert lines[-1].index("Pending") == lines[0].index("PHASE")  # widths kept
    (first_watch, _) = stub.asked(TJ)[1:]
    assert first_watch["resourceVersion"] == ["5"]  # from the listing on: nothing missed


def _pod(name: str, created: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "team-a",
            "creationTimestamp": created,
            "annotations": {"torchyard.io/restart-count": "0"},
        },
        "spec": {"containers": [{"name": "worker", "image": "w"}]},
        "status": {"phase": "Running"},
    }


def test_logs_follow_and_previous_ask_the_api_server_for_them(stub: Stub, tmp_path: Path) -> None:
    stub.answers[f"{TJ}/alpha"] = (200, _job("alpha", "Running"))
    stub.answers[PODS] = (
        200,
        {"kind": "PodList", "items": [_pod("alpha-0-new", "2026-01-02T00:00:00Z")]},
    )
    stub.answers[f"{PODS}/alpha-0-new/log"] = (200, "step 1 [loss 0.5]\nstep 2\n")
    code, out, _ = _cli(stub, tmp_path, "logs", "alpha", "-f")
    assert code == 0
    assert out == "step 1 [loss 0.5]\nstep 2\n"
    (query,) = stub.asked(f"{PODS}/alpha-0-new/log")
    assert query["follow"] == ["true"]
    assert query["container"] == ["worker"]

    # --previous, one pod: the worker container's previous instance (kubectl's --previous)
    code, _, _ = _cli(stub, tmp_path, "logs", "alpha", "--previous")
    assert code == 0
    assert stub.asked(f"{PODS}/alpha-0-new/log")[-1]["previous"] == ["true"]

    # --previous while the older attempt's pod is kept: that pod's log
    stub.answers[PODS] = (
        200,
        {
            "kind": "PodList",
            "items": [
                _pod("alpha-0-new", "2026-01-02T00:00:00Z"),
                _pod("alpha-0-old", "2026-01-01T00:00:00Z"),
            ],
        },
    )
    stub.answers[f"{PODS}/alpha-0-old/log"] = (200, "the first attempt\n")
    code, out, _ = _cli(stub, tmp_path, "logs", "alpha", "--previous")
    assert code == 0
    assert out == "the first attempt\n"
    assert stub.asked(f"{PODS}/alpha-0-old/log")[-1].get("previous") != ["true"]
