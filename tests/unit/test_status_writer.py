"""The status writer's throttle (torchyard/controller/status_writer.py): a write that only
refreshes the worker counts waits for the group's other changes, one that carries a transition
goes at once; one whose only news is pods created waits longer, for their readiness."""

from __future__ import annotations

from typing import Any

import pytest

from torchyard.controller.status_writer import StatusWriter
from torchyard.state import Decision, Event

KEY = ("TrainingJob", "ml", "digits")
BODY: dict[str, Any] = {
    "status": {"phase": "Pending", "workers": {"active": 0, "ready": 0}, "message": "0/4"}
}


def _counts(active: int, ready: int) -> Decision:
    """A count refresh of a 4-worker group: ``ready`` of them ready (the message says so)."""
    return Decision(
        status={
            "phase": "Pending",
            "workers": {"active": active, "ready": ready},
            "message": f"{ready}/4",
        }
    )


@pytest.fixture
def clock() -> list[float]:
    """The writer's monotonic clock, moved by the test."""
    return [1000.0]


def _writer(
    clock: list[float], count_update_seconds: float, created_update_seconds: float = 10.0
) -> StatusWriter:
    return StatusWriter(
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        count_update_seconds,
        created_update_seconds,
        clock=lambda: clock[0],
    )


def test_a_count_refresh_waits_for_the_rest_of_the_group(clock: list[float]) -> None:
    writer = _writer(clock, 3.0)
    # Long after the last write: the first worker's readiness still waits count_update_seconds
    assert writer.throttle(KEY, BODY, _counts(4, 1)) == 3.0
    clock[0] += 0.4
    # ... counted from the first change it would carry, not from the latest.
    assert writer.throttle(KEY, BODY, _counts(4, 3)) == pytest.approx(2.6)
    clock[0] += 2.6
    assert writer.throttle(KEY, BODY, _counts(4, 3)) == 0.0


def test_pods_created_wait_for_their_readiness(clock: list[float]) -> None:
    writer = _writer(clock, 3.0, created_update_seconds=10.0)
    # Pods created, none ready: that news alone waits created_update_seconds ...
    assert writer.throttle(KEY, BODY, _counts(2, 0)) == 10.0
    clock[0] += 3.5
    assert writer.throttle(KEY, BODY, _counts(4, 0)) == pytest.approx(6.5)
    # ... until a worker turns ready: then the count_update_seconds from the first change
    # (past already) apply, and one write carries both.
    assert writer.throttle(KEY, BODY, _counts(4, 1)) == 0.0


def test_pods_created_alone_are_written_after_created_update_seconds(clock: list[float]) -> None:
    writer = _writer(clock, 3.0, created_update_seconds=10.0)
    assert writer.throttle(KEY, BODY, _counts(4, 0)) == 10.0
    clock[0] += 10.0
    assert writer.throttle(KEY, BODY, _counts(4, 0)) == 0.0


def test_a_transition_is_never_held(clock: list[float]) -> None:
    writer = _writer(clock, 3.0)
    assert writer.throttle(KEY, BODY, _counts(4, 1)) > 0
    running = _counts(4, 4)
    running.status["phase"] = "Running"
    running.events.append(Event("Normal", "WorkersRunning", "4/4 workers running"))
    assert writer.throttle(KEY, BODY, running) == 0.0
    # The held count refresh was superseded: the next one settles afresh.
    assert writer.throttle(KEY, BODY, _counts(2, 2)) == 3.0


def test_count_update_seconds_zero_writes_every_change_at_once(clock: list[float]) -> None:
    assert _writer(clock, 0.0).throttle(KEY, BODY, _counts(1, 0)) == 0.0
