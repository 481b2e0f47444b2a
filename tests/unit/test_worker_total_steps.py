"""``torchyard_worker_total_steps`` (the training dashboard's ETA): set from the ``totalSteps``
of the progress events, which the built-in trainer and the reporting helper both send."""

from __future__ import annotations

from pathlib import Path

from tests.unit.test_report import _environ
from torchyard_trainer.metrics import WorkerMetrics
from torchyard_trainer.report import Reporter

LABELS = {"torchyard_job": "mine", "namespace": "default", "rank": "0"}


def total(m: WorkerMetrics) -> float | None:
    return m.registry.get_sample_value("torchyard_worker_total_steps", LABELS)


def test_start_event_sets_the_total_and_unknown_totals_leave_it_unset(tmp_path: Path) -> None:
    m = WorkerMetrics("mine", "default", 0, None, None)
    m.event("start", totalSteps=None, epochs=2)
    assert total(m) is None
    m.event("start", totalSteps=120, epochs=2)
    assert total(m) == 120
    m.event("step", step=3, totalSteps=150)
    assert total(m) == 150
    m.close()


def test_the_reporting_helper_announces_its_total(tmp_path: Path) -> None:
    reporter = Reporter(total_steps=40, epochs=2, environ=_environ(tmp_path))
    reporter.step(step=1, epoch=0, loss=1.0)
    m = reporter._metrics
    assert m is not None
    assert m.registry.get_sample_value("torchyard_worker_total_steps", m.labels) == 40
    assert m.registry.get_sample_value("torchyard_worker_step", m.labels) == 1
    reporter.finish()
