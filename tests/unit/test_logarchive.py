"""The worker log archive: the bounded writer (head + newest tail), the tee of a process and
its children, the reader (also of a writer killed mid-log), the archive's place, and
`torchyard logs --attempt/--rank` / `describe` reading it once the pods are gone (against the
stand-in API server of tests/unit/kubestub.py). Real processes: tests/worker/test_log_archive.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.unit.kubestub import serving
from torchyard import local, logarchive
from torchyard.api import logarchive as layout
from torchyard.cli import app
from torchyard.local_prepare import LOG_FILE
from torchyard_trainer.logtee import BoundedLog

TJ = "/apis/torchyard.io/v1alpha1/namespaces/team-a/trainingjobs"
PODS = "/api/v1/namespaces/team-a/pods"
EVENTS = "/api/v1/namespaces/team-a/events"


def _lines(n: int, tag: str = "line") -> bytes:
    return b"".join(f"{tag} {i:06d}\n".encode() for i in range(n))


def test_a_short_log_is_kept_whole_and_recorded(tmp_path: Path) -> None:
    log = BoundedLog(tmp_path, attempt=2, rank=1, max_bytes=10_000)
    log.open()
    log.write(b"hello\n")
    log.ended(0)
    log.close()
    text = layout.rank_log(tmp_path, 2, 1).read_bytes()
    assert text.startswith(b"===== torchyard: attempt 2 rank 1 started ")
    assert text.endswith(b"hello\n")
    record = json.loads(layout.rank_record(tmp_path, 2, 1).read_text())
    assert record["exitCode"] == 0
    assert record["dropped"] == 0
    assert record["bytes"] == len(text)
    assert logarchive.read_log(tmp_path, 2, 1) == text


def test_a_long_log_keeps_head_and_newest_tail_within_the_bound(tmp_path: Path) -> None:
    bound = 4096
    data = _lines(2000)  # far over the bound
    log = BoundedLog(tmp_path, attempt=0, rank=0, max_bytes=bound)
    log.open()
    for i in range(0, len(data), 333):  # odd chunk sizes, as pipes deliver
        log.write(data[i : i + 333])
    log.ended(137, "failed")
    log.close()
    text = layout.rank_log(tmp_path, 0, 0).read_bytes()
    head, marker, tail = text.partition(b"\n[torchyard: ")
    assert marker, "no drop marker"
    dropped = int(tail.split(b" ", 1)[0])
    tail = tail.split(b"]\n", 1)[1]
    assert len(head) + len(tail) <= bound
    assert len(tail) >= bound // 4  # at least one full tail piece
    assert data.endswith(tail)  # the newest bytes, in order
    assert b"line 000000" in head  # the start of the output
    record = json.loads(layout.rank_record(tmp_path, 0, 0).read_text())
    assert record["bytes"] == len(head) + len(tail) + dropped
    assert record["dropped"] == dropped
    assert record["exitCode"] == 137
    # the pieces were joined and removed
    assert sorted(p.name for p in layout.attempt_dir(tmp_path, 0).iterdir()) == [
        "rank-0.json",
        "rank-0.log",
    ]


def test_a_writer_killed_mid_log_leaves_pieces_the_reader_joins(tmp_path: Path) -> None:
    data = _lines(2000)
    log = BoundedLog(tmp_path, attempt=1, rank=3, max_bytes=4096)
    log.open()
    log.write(data)  # and never closed: SIGKILL, node lost
    pieces = [p for p in layout.attempt_dir(tmp_path, 1).iterdir() if ".tail-" in p.name]
    assert len(pieces) == 2  # older ones deleted as the newest grew: the bound holds on disk
    text = logarchive.read_log(tmp_path, 1, 3)
    assert text is not None
    assert b"[torchyard: some bytes of this log dropped here" in text
    assert text.endswith(data[-100:])
    assert logarchive.ranks(tmp_path, 1) == [3]
    assert logarchive.attempt_record(tmp_path, 1).end is None  # never recorded an end


def test_the_archive_lives_in_a_local_output_store_only() -> None:
    assert layout.archive_uri("pvc://models/team", "ns", "j") == "pvc://models/team/.logs/ns/j"
    assert layout.archive_uri("file:///data/", "ns", "j") == "file:///data/.logs/ns/j"
    assert layout.archive_uri("s3://bucket/x", "ns", "j") is None
    assert layout.archive_uri(None, "ns", "j") is None
    assert layout.archive_dir("pvc://models/team", "ns", "j", Path("/mnt")) == Path(
        "/mnt/models/team/.logs/ns/j"
    )
    assert layout.log_status("pvc://m", "ns", "j", restarts=2) == {
        "uri": "pvc://m/.logs/ns/j",
        "attempts": 3,
    }
    assert logarchive.LOCAL_RUNS_DIR == local.RUNS_DIR
    assert logarchive.LOCAL_NAMESPACE == local.LOCAL_NAMESPACE


TEE_SCRIPT = textwrap.dedent(
    """
    import os, subprocess, sys
    from torchyard_trainer.logtee import archived_output
    with archived_output(os.environ) as archive:
        print("from the launcher", flush=True)
        # a child inherits fd 1 and 2, as torchrun's workers do
        subprocess.run(["sh", "-c", "echo child-out; echo child-err >&2"], check=True)
        archive.ended(3, "failed")
    print("after the archive", flush=True)
    """
)


def test_the_tee_archives_the_process_and_its_children_and_keeps_the_console(
    tmp_path: Path,
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"spec": {"output": {"storage": f"file://{tmp_path}/store"}}}))
    env = {
        **os.environ,
        "TORCHYARD_SPEC": str(spec),
        "TORCHYARD_JOB_NAME": "tee",
        "TORCHYARD_NAMESPACE": "ns",
        "TORCHYARD_RESTART_COUNT": "2",
        "PET_NODE_RANK": "1",
    }
    done = subprocess.run(
        [sys.executable, "-c", TEE_SCRIPT], env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        b"from the launcher",
        b"child-out",
        b"after the archive",
    ]
    assert done.stderr == b"child-err\n"  # each stream stays on its own console stream
    root = tmp_path / "store" / ".logs" / "ns" / "tee"
    text = logarchive.read_log(root, 2, 1)
    assert text is not None
    for line in (b"from the launcher\n", b"child-out\n", b"child-err\n"):
        assert line in text
    assert b"after the archive" not in text
    (rec,) = logarchive.history(root)
    assert rec.attempt == 2
    assert rec.exit_codes == {1: 3}
    assert rec.reason == "failed"


SPLIT_LINES_SCRIPT = textwrap.dedent(
    """
    import os, time
    from torchyard_trainer.logtee import archived_output
    with archived_output(os.environ) as archive:
        os.write(1, b"out-start ")  # half a line; the other stream speaks before its end
        time.sleep(0.3)
        os.write(2, b"err-line\\n")
        time.sleep(0.3)
        os.write(1, b"out-end\\n")
        os.write(1, b"no end at exit")
        archive.ended(0)
    """
)


def test_the_two_streams_never_split_each_others_lines_in_the_archive(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"spec": {"output": {"storage": f"file://{tmp_path}/store"}}}))
    env = {**os.environ, "TORCHYARD_SPEC": str(spec), "TORCHYARD_JOB_NAME": "split"}
    done = subprocess.run(
        [sys.executable, "-c", SPLIT_LINES_SCRIPT], env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"out-start out-end\nno end at exit"  # the console is not held back
    text = logarchive.read_log(tmp_path / "store" / ".logs" / "default" / "split", 0, 0)
    assert text is not None
    assert b"out-start out-end\n" in text
    assert b"err-line\n" in text
    assert text.endswith(b"no end at exit")


def test_without_a_job_or_with_a_zero_bound_nothing_is_archived(tmp_path: Path) -> None:
    from torchyard_trainer.logtee import archive_for

    spec = tmp_path / "spec.yaml"
    out = {"storage": f"file://{tmp_path}"}
    spec.write_text(json.dumps({"spec": {"output": out, "logs": {"maxBytesPerRank": 0}}}))
    assert archive_for({"TORCHYARD_SPEC": str(spec), "TORCHYARD_JOB_NAME": "j"}) is None
    spec.write_text(json.dumps({"spec": {"output": out, "logs": {"maxBytesPerRank": 99}}}))
    assert archive_for({"TORCHYARD_SPEC": str(spec)}) is None
    sink = archive_for({"TORCHYARD_SPEC": str(spec), "TORCHYARD_JOB_NAME": "j"})
    assert sink is not None
    assert sink.max_bytes == 99
    spec.write_text(json.dumps({"spec": {"output": {"storage": "s3://b/x"}}}))
    assert archive_for({"TORCHYARD_SPEC": str(spec), "TORCHYARD_JOB_NAME": "j"}) is None


def test_a_local_runs_own_log_is_split_by_attempt(tmp_path: Path) -> None:
    pod = tmp_path / logarchive.LOCAL_RUNS_DIR / "j" / "pod-1"
    pod.mkdir(parents=True)
    first = "===== attempt 0 · started 2026-01-01T00:00:00Z =====\nfirst\n"
    second = "\n===== attempt 1 · started 2026-01-01T00:01:00Z =====\nsecond\n"
    (pod / LOG_FILE).write_text(first + second)
    assert logarchive.local_pod_log(tmp_path, "j", 1, 0) == first.encode()
    assert logarchive.local_pod_log(tmp_path, "j", 1, None) == second[1:].encode()
    assert logarchive.local_pod_log(tmp_path, "j", 1, 5) is None


# ------------------------------------------------------------------------------ the CLI


def _job(storage: str, **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "torchyard.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "alpha", "namespace": "team-a", "uid": "u1"},
        "spec": {"workers": 2, "output": {"storage": storage}},
        "status": {"phase": "Succeeded", "restarts": 1, **status},
    }


def _pod(attempt: int) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"alpha-1-a{attempt}",
            "namespace": "team-a",
            "creationTimestamp": "2026-01-02T00:00:00Z",
            "annotations": {"torchyard.io/restart-count": str(attempt)},
        },
        "spec": {"containers": [{"name": "worker", "image": "w"}]},
        "status": {"phase": "Running"},
    }


def _archive(root: Path) -> None:
    for attempt, code in ((0, 137), (1, 0)):
        for rank in (0, 1):
            log = BoundedLog(root, attempt, rank, 10_000)
            log.open()
            log.write(f"attempt {attempt} rank {rank} says hi\n".encode())
            log.ended(code, None if code == 0 else "failed")
            log.close()


@pytest.mark.parametrize("where", ["status", "spec"])
def test_logs_reads_a_gone_pods_attempt_from_the_archive(tmp_path: Path, where: str) -> None:
    store = tmp_path / "store"
    root = store / ".logs" / "team-a" / "alpha"
    _archive(root)
    with serving() as stub:
        if where == "status":  # the operator's record wins over the spec (default store)
            job = _job("s3://elsewhere", logs={"uri": f"file://{root}", "attempts": 2})
        else:
            job = _job(f"file://{store}")
        stub.answers[f"{TJ}/alpha"] = (200, job)
        stub.answers[PODS] = (200, {"kind": "PodList", "items": [_pod(1)]})
        stub.answers[EVENTS] = (200, {"kind": "EventList", "items": []})
        stub.answers[f"{PODS}/alpha-1-a1/log"] = (200, "live attempt 1\n")
        kube = ["--kubeconfig", str(stub.kubeconfig(tmp_path))]
        run = CliRunner().invoke
        old = run(app, ["logs", "alpha", "--attempt", "0", "--rank", "1", *kube])
        assert old.exit_code == 0, old.stderr
        assert old.stdout.endswith("attempt 0 rank 1 says hi\n")
        assert old.stdout.startswith("===== torchyard: attempt 0 rank 1 started")
        # the attempt whose pod still exists: live, from the API server
        live = run(app, ["logs", "alpha", "--attempt", "1", "--rank", "1", *kube])
        assert live.stdout == "live attempt 1\n"
        missing = run(app, ["logs", "alpha", "--attempt", "7", "--rank", "1", *kube])
        assert missing.exit_code == 1
        assert "no archived log of rank 1, attempt 7" in missing.stderr
        assert "[0, 1]" in missing.stderr
        told = run(app, ["describe", "alpha", *kube])
        assert told.exit_code == 0, told.stderr
        rows = told.stdout.split("Attempts (log archive ")[1].splitlines()[2:4]
        assert rows[0].split()[0] == "0"
        assert "0:137 1:137" in rows[0]
        assert "failed" in rows[0]
        assert rows[1].split()[0] == "1"
        assert "0:0 1:0" in rows[1]
        timeline = told.stdout.split("Timeline:")[1]
        assert timeline.index("attempt 0 started") < timeline.index("attempt 0 ended")
        assert timeline.index("attempt 0 ended") < timeline.index("attempt 1 started")


def test_logs_of_an_unreachable_archive_say_where_it_is(tmp_path: Path) -> None:
    with serving() as stub:
        stub.answers[f"{TJ}/alpha"] = (200, _job("pvc://models"))
        stub.answers[PODS] = (200, {"kind": "PodList", "items": []})
        kube = ["--kubeconfig", str(stub.kubeconfig(tmp_path))]
        args = ["logs", "alpha", "--attempt", "0", "--pvc-root", str(tmp_path / "none"), *kube]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1
        assert "pvc://models/.logs/team-a/alpha is not reachable here" in result.stderr
