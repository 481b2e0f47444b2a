"""The pure parts of live progress: report parsing, percent, ETA, the write throttle and the
book that keeps the newest report per job (torchyard.state.progress)."""

from __future__ import annotations

import pytest

from torchyard.state.progress import (
    ProgressBook,
    ProgressReport,
    eta_seconds,
    percent,
    write_delay,
)

KEY = ("TrainingJob", "ns", "a")


def test_parse_reads_the_wire_format_and_drops_bad_metrics() -> None:
    r = ProgressReport.parse(
        {
            "step": 7,
            "totalSteps": 70,
            "epoch": 1,
            "loss": 0.5,
            "samplesPerSecond": 1200.0,
            "metrics": {"mfu": 0.3, "bad": "x", "nan": float("nan")},
        }
    )
    assert (r.step, r.total_steps, r.epoch, r.loss) == (7, 70, 1, 0.5)
    assert r.metrics == {"mfu": 0.3}


@pytest.mark.parametrize("doc", [[], {"step": -1}, {"step": "3"}, {"step": True}, {}])
def test_parse_refuses_malformed_reports(doc: object) -> None:
    with pytest.raises(ValueError, match=r"must be|is a JSON"):
        ProgressReport.parse(doc)


def test_percent_is_bounded_and_needs_a_total() -> None:
    assert percent(25, 100) == 25.0
    assert percent(150, 100) == 100.0
    assert percent(3, None) is None
    assert percent(3, 0) is None


def test_eta_follows_the_average_step_rate() -> None:
    # 10 steps in 5 s: 2 steps/s; 80 steps left -> 40 s.
    assert eta_seconds((10, 100.0), (20, 105.0), 100) == pytest.approx(40.0)
    assert eta_seconds((10, 100.0), (10, 105.0), 100) is None  # no step yet
    assert eta_seconds((10, 100.0), (20, 105.0), None) is None


def test_write_delay_allows_one_write_per_interval() -> None:
    assert write_delay(None, 50.0, 5.0) == 0.0
    assert write_delay(50.0, 52.0, 5.0) == pytest.approx(3.0)
    assert write_delay(50.0, 56.0, 5.0) == 0.0


def test_book_writes_the_newest_report_at_most_once_per_interval() -> None:
    book = ProgressBook()
    writes = 0
    # 20 reports/s for 20 s, interval 2 s: at most 20/2 + 1 writes.
    for i in range(400):
        now = 1000.0 + i * 0.05
        book.record(KEY, ProgressReport(step=i, total_steps=1000), now)
        due = book.take(KEY, now, 2.0)
        if due is not None and due[1] == 0.0:
            writes += 1
            assert due[0]["step"] == i  # the newest report, not a queued old one
    assert 10 <= writes <= 11


def test_book_estimates_eta_and_tracks_the_last_step_time() -> None:
    book = ProgressBook()
    book.record(KEY, ProgressReport(step=0, total_steps=100), 10.0)
    book.record(KEY, ProgressReport(step=50, total_steps=100), 20.0)
    book.record(KEY, ProgressReport(step=50, total_steps=100), 25.0)  # no step: time stays
    assert book.last_step_time(KEY) == 20.0
    status, delay = book.take(KEY, 25.0, 5.0) or ({}, -1.0)
    assert delay == 0.0
    assert status["percent"] == 50.0
    assert status["etaSeconds"] == 10  # 50 steps in 10 s, 50 left
    assert "estimatedCompletionTime" in status
    assert "lastUpdateTime" in status
    assert book.take(KEY, 26.0, 5.0) is None  # nothing new
    book.forget(KEY)
    assert book.last_step_time(KEY) is None


def test_book_restarts_the_rate_when_the_step_goes_back() -> None:
    book = ProgressBook()
    book.record(KEY, ProgressReport(step=40, total_steps=100), 10.0)
    book.record(KEY, ProgressReport(step=60, total_steps=100), 20.0)
    book.record(KEY, ProgressReport(step=30, total_steps=100), 30.0)  # restarted from ckpt
    status, _ = book.take(KEY, 30.0, 5.0) or ({}, -1.0)
    assert status["step"] == 30
    assert "etaSeconds" not in status  # one point of the new attempt: no rate yet


def test_torchyard_run_shows_percent_and_the_same_eta() -> None:
    from torchyard.local_output import ProgressState

    state = ProgressState("digits")
    state.apply({"event": "start", "totalSteps": 100, "epochs": 1, "startStep": 0})
    state.apply({"event": "step", "epoch": 0, "step": 10, "time": 100.0})
    state.apply({"event": "step", "epoch": 0, "step": 30, "time": 110.0})
    # 20 steps in 10 s, 70 left: 35 s, as eta_seconds has it for the operator.
    assert state.counter() == "step 30/100 (30%)"
    assert "ETA 0:00:35" in state.info()
