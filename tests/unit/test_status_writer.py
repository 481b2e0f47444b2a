"""The status writer's throttle (torchyard/controller/status_writer.py): a write that only
refreshes the worker counts waits for the group's other changes, one that carries a transition
goes at once; one whose only news is pods created waits longer, for their readiness."""

from __future__ import annotations

from types import SimpleNamespace
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
    clock: list[float],
    count_update_seconds: float,
    created_update_seconds: float = 10.0,
    first_status_seconds: float = 60.0,
) -> StatusWriter:
    return StatusWriter(
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        count_update_seconds,
        created_update_seconds,
        first_status_seconds,
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


# A new job's first status: held until its workers are up, so one write says Created and
# Running; its JobCreated Event goes at once.

NEW: dict[str, Any] = {"metadata": {"name": "digits", "namespace": "ml", "resourceVersion": "7"}}
CREATED = Event("Normal", "JobCreated", "created the worker Job (4 workers)")
RUNNING = Event("Normal", "WorkersRunning", "4/4 workers running")


def _started(active: int, *, running: bool = False) -> Decision:
    """A new job's first decision: its Job created, ``active`` pods (all ready: ``running``)."""
    conditions = [{"type": "Created", "status": "True", "reason": "JobCreated"}]
    events = [CREATED]
    if running:
        conditions.append({"type": "Running", "status": "True", "reason": "WorkersRunning"})
        events.append(RUNNING)
    return Decision(
        status={
            "phase": "Running" if running else "Pending",
            "workers": {"active": active, "ready": active if running else 0},
            "conditions": conditions,
        },
        events=events,
    )


def test_a_new_jobs_first_status_waits_for_its_worker_pods(clock: list[float]) -> None:
    writer = _writer(clock, 3.0, created_update_seconds=10.0, first_status_seconds=60.0)
    # The Job is created, the Job controller has not made its pods: up to first_status_seconds
    assert writer.throttle(KEY, NEW, _started(0)) == 60.0
    clock[0] += 20
    assert writer.throttle(KEY, NEW, _started(0)) == pytest.approx(40.0)
    # Pods created: created_update_seconds more for their readiness ...
    assert writer.throttle(KEY, NEW, _started(4)) == pytest.approx(10.0)
    clock[0] += 4
    assert writer.throttle(KEY, NEW, _started(4)) == pytest.approx(6.0)
    # ... and the Running transition is never held: one write carries both.
    assert writer.throttle(KEY, NEW, _started(4, running=True)) == 0.0


def test_a_new_job_whose_pods_never_come_is_written_after_first_status_seconds(
    clock: list[float],
) -> None:
    writer = _writer(clock, 3.0, first_status_seconds=60.0)
    assert writer.throttle(KEY, NEW, _started(0)) == 60.0
    clock[0] += 60
    assert writer.throttle(KEY, NEW, _started(0)) == 0.0


def test_only_a_first_status_is_held_for_the_workers(clock: list[float]) -> None:
    writer = _writer(clock, 3.0, first_status_seconds=60.0)
    # A job that already has a status (e.g. Created False while a quota held it back) says
    # Created True at once.
    assert writer.throttle(KEY, BODY, _started(0)) == 0.0
    # A first status with news besides the start (a Warning) is not held either.
    warned = _started(0)
    warned.events.append(Event("Warning", "WorkerStuck", "worker 0 cannot start"))
    assert writer.throttle(KEY, NEW, warned) == 0.0
    # first_status_seconds 0: every first status goes at once.
    assert _writer(clock, 3.0, first_status_seconds=0.0).throttle(KEY, NEW, _started(0)) == 0.0


class _Kube:
    """Answers the status patch with the patched object (the write's only call)."""

    custom = SimpleNamespace(patch_namespaced_custom_object_status=None)

    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []

    def call(self, verb: str, resource: str, fn: object, *args: Any, **kw: Any) -> Any:
        assert (verb, resource) == ("patch", "trainingjobs/status")
        self.patches.append(args[-1])
        return {**NEW, "status": args[-1]["status"]}


class _Cache:
    def offer_object(self, key: object, obj: object) -> None:
        pass


def test_a_held_first_status_posts_its_event_at_once_and_once(clock: list[float]) -> None:
    kube = _Kube()
    metrics: Any = None
    writer = StatusWriter(kube, _Cache(), metrics, 3.0, 10.0, 60.0, clock=lambda: clock[0])  # type: ignore[arg-type]
    posted: list[str] = []
    writer._post_event = lambda body, event: posted.append(event.reason)  # type: ignore[method-assign]
    held = _started(0)
    assert writer.throttle(KEY, NEW, held) > 0
    writer.announce(KEY, NEW, held)
    writer.announce(KEY, NEW, _started(2))  # held again later: not posted twice
    writer.write(KEY, NEW, _started(4, running=True))
    writer._event_pool.shutdown(wait=True)
    assert posted == ["JobCreated", "WorkersRunning"]
    assert len(kube.patches) == 1
    assert kube.patches[0]["status"]["phase"] == "Running"
