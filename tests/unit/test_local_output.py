"""`torchyard run`'s output, the pure parts: the progress line per kind of job, plain progress
for a stderr that is no terminal, the summary (ratios, full paths), the log tail and the log
rotation of the run folder."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console

from torchyard.local_output import (
    PlainProgress,
    ProgressState,
    RunOutcome,
    log_tail,
    print_summary,
    summary,
)
from torchyard.local_prepare import KEEP_LOGS, LOG_FILE, rotate_logs


def _console(width: int = 80, terminal: bool = False) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=width, force_terminal=terminal, highlight=False), buf


def test_training_progress_counts_steps_and_epochs() -> None:
    state = ProgressState("digits")
    assert state.counter() == "starting"
    assert state.apply({"event": "start", "totalSteps": 660, "epochs": 30, "startStep": 0})
    assert not state.apply(
        {"event": "step", "epoch": 4, "step": 110, "loss": 0.5, "samplesPerSecond": 900.0}
    )
    state.apply({"event": "eval", "accuracy": 0.93})
    assert state.line(75) == (
        "step 110/660 (17%) · epoch 5/30 · loss 0.5000 · 900 samples/s · acc 93.00% · 0:01:15"
    )


def test_compression_progress_counts_trials() -> None:
    state = ProgressState("prune", compression=True)
    assert state.counter().startswith("preparing")
    state.apply({"event": "start", "totalSteps": 4, "kind": "CompressionJob", "epochs": 1})
    state.apply({"event": "eval", "accuracy": 0.97})
    assert state.line(1) == "trial 0/4 · baseline acc 97.00% · 0:00:01"
    state.apply(
        {
            "event": "step",
            "step": 2,
            "totalSteps": 4,
            "trial": "sparsity=0.7",
            "passed": True,
            "epoch": 0,
        }
    )
    state.apply({"event": "eval", "accuracy": 0.95})
    line = state.line(3)
    assert line.startswith("trial 2/4 · sparsity=0.7 passed · acc 95.00%"), line
    assert "epoch" not in line


def test_custom_command_progress_names_the_command_until_it_reports() -> None:
    state = ProgressState("byo", command=["python", "train.py", "--lr", "0.1 0.2"])
    assert state.line(5) == "running python train.py --lr '0.1 0.2' · 0:00:05"
    assert "?" not in state.line(5)
    # a script that writes progress events (the env contract allows it) gets the step counter
    state.apply({"event": "start", "totalSteps": 10, "startStep": 0})
    assert state.counter() == "step 0/10 (0%)"


def test_plain_progress_prints_the_first_state_and_forced_changes_only() -> None:
    console, buf = _console()
    state = ProgressState("digits")
    view = PlainProgress(state, console)
    view.update()  # the first line at once
    view.update()  # nothing new, well within the interval: no line
    state.apply({"event": "step", "step": 3, "totalSteps": 10})
    view.update()  # changed, but within the interval: no line yet
    assert buf.getvalue().splitlines() == ["digits: starting · 0:00:00"]
    state.apply({"event": "end", "status": "Succeeded"})
    view.update(force=True)
    view.update(force=True)  # forced, but nothing new: no repeated line
    view.close()  # nothing new since: no repeated line
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[1].startswith("digits: step 10/10"), lines
    assert "\r" not in buf.getvalue()  # no redrawn bar in a file


def _compression_doc(run_dir: Path) -> dict:
    (run_dir / "pod-0").mkdir(parents=True)
    report = {
        "baseline": {"accuracy": 0.97, "bytes": 40000, "latencyMs": 0.2},
        "compressed": {"accuracy": 0.965, "bytes": 10000, "latencyMs": 0.1},
        "ratios": {"size": 4.0, "params": 3.5, "speedup": 2.0},
        "accuracyDelta": -0.005,
        "passed": True,
    }
    result = {
        "status": "Succeeded",
        "model": {"name": "m", "version": 1, "uri": f"file://{run_dir}/models/m/v1"},
        "metrics": {"accuracy": 0.965},
        "report": report,
        "reportFile": str(run_dir / "pod-0" / "report.json"),
    }
    (run_dir / "pod-0" / "result.json").write_text(json.dumps(result))
    return summary("CompressionJob", "prune", run_dir, run_dir / "pvc", RunOutcome(0, 0, 1.0, [0]))


def test_compression_summary_prints_its_ratios(tmp_path: Path) -> None:
    doc = _compression_doc(tmp_path)
    assert doc["ratios"] == {"size": 4.0, "params": 3.5, "speedup": 2.0}
    assert doc["model"]["path"] == str(tmp_path / "models" / "m" / "v1")
    console, buf = _console()
    print_summary(doc, "human", console)
    lines = [" ".join(line.split()) for line in buf.getvalue().splitlines()]
    assert "size 4.00× smaller (40000 → 10000 B)" in lines
    assert "speedup 2.00× (0.200 → 0.100 ms per batch)" in lines
    assert "accuracy delta -0.0050 (0.9700 → 0.9650), gate passed" in lines


def test_long_paths_are_folded_never_cut(tmp_path: Path) -> None:
    deep = tmp_path / ("a-rather-long-folder-name-" * 4) / "run"
    doc = _compression_doc(deep)
    for terminal in (False, True):
        console, buf = _console(width=60, terminal=terminal)
        print_summary(doc, "human", console)
        text = buf.getvalue()
        assert "…" not in text
        # the table folds the value column: joined back, every character of the path is there
        joined = "".join(
            line.split("│")[2].strip() if line.count("│") == 3 else line
            for line in text.splitlines()
        )
        assert str(deep / "pod-0" / "report.json") in joined


def test_json_summary_is_one_document(tmp_path: Path) -> None:
    doc = _compression_doc(tmp_path)
    console, buf = _console(width=40)
    print_summary(doc, "json", console)
    assert json.loads(buf.getvalue()) == json.loads(json.dumps(doc))


def test_log_tail_ends_its_line_and_shows_rewritten_lines_as_a_terminal_would(
    tmp_path: Path,
) -> None:
    log = tmp_path / "log.txt"
    log.write_text("one\nprogress 10%\rprogress 100%\nTraceback: boom")  # no final newline
    tail = log_tail(log)
    assert tail.endswith(f"----- end of {log} -----\n")
    assert "boom\n-----" in tail
    assert "progress 100%" in tail
    assert "progress 10%" not in tail


def test_logs_rotate_per_run_and_the_oldest_go(tmp_path: Path) -> None:
    pod = tmp_path / "pod-0"
    pod.mkdir()
    for run in range(KEEP_LOGS + 3):
        rotate_logs(tmp_path)
        assert not (pod / LOG_FILE).exists()  # each run starts a fresh log.txt
        (pod / LOG_FILE).write_text(f"run {run}\n")
    last = KEEP_LOGS + 2
    assert (pod / LOG_FILE).read_text() == f"run {last}\n"
    for n in range(1, KEEP_LOGS + 1):
        assert (pod / f"log.{n}.txt").read_text() == f"run {last - n}\n"
    assert not (pod / f"log.{KEEP_LOGS + 1}.txt").exists()


def test_progress_names_the_gate_metric_of_a_compression_job() -> None:
    from torchyard.local_output import ProgressState

    state = ProgressState("x", compression=True, metric="cosine")
    state.apply({"event": "eval", "accuracy": 0.97651})
    assert state.info() == "baseline cosine 0.9765"
    state = ProgressState("x", compression=True, metric="perplexity")
    state.apply({"event": "eval", "accuracy": 31.5})
    assert "perplexity 31.5000" in state.info()
    assert "acc " not in state.info()
