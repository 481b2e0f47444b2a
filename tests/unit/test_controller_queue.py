"""The controller's work queue and backoff (real asyncio, tiny delays, no cluster)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable

import pytest
from kubernetes import client

from torchyard.controller.kube import Blocked, Conflict, Key, Retry
from torchyard.controller.queue import Backoff, Retries, WorkQueue
from torchyard.controller.reconciler import BACKOFF, MAX_ATTEMPTS, Reconciler
from torchyard.metrics import OperatorMetrics
from torchyard.state import Refusal

# ---------------------------------------------------------------------------- Backoff


def test_backoff_doubles_from_half_a_second_up_to_thirty() -> None:
    b = Backoff()
    assert [b.delay(n) for n in range(1, 10)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]


def test_backoff_stays_capped_however_long_a_cause_lasts() -> None:
    assert Backoff().delay(100_000) == 30.0
    assert Backoff(base=1, factor=3, cap=10).delay(3) == 9
    assert Backoff(base=1, factor=3, cap=10).delay(4) == 10


def test_backoff_before_the_first_failure_is_the_base() -> None:
    assert Backoff().delay(0) == 0.5


@pytest.mark.parametrize(("base", "factor", "cap"), [(0, 2, 30), (0.5, 1, 30), (0.5, 2, 0.1)])
def test_backoff_refuses_a_schedule_that_does_not_grow_or_cap(
    base: float, factor: float, cap: float
) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(base=base, factor=factor, cap=cap)


def test_the_operator_uses_the_documented_schedule() -> None:
    # docs/operator.md, Settings: "retried after 0.5, 1, 2 … 30 s, at most 12 times"
    assert Backoff(base=0.5, factor=2.0, cap=30.0) == BACKOFF
    assert MAX_ATTEMPTS == 12


# ---------------------------------------------------------------------------- Retries


def test_retries_grow_per_key_and_reset_on_success() -> None:
    r: Retries[str] = Retries(Backoff())
    assert [r.fail("a").delay for _ in range(4)] == [0.5, 1, 2, 4]
    assert r.fail("b").delay == 0.5  # keys are independent
    assert r.failures("a") == 4
    r.reset("a")
    assert r.failures("a") == 0
    assert r.fail("a").delay == 0.5
    r.reset("never-failed")  # harmless


def test_retries_without_limit_never_give_up() -> None:
    r: Retries[str] = Retries(Backoff())
    attempts = [r.fail("a") for _ in range(1000)]
    assert attempts[-1].number == 1000
    assert attempts[-1].delay == 30.0


def test_retries_give_up_at_the_limit_and_start_over() -> None:
    r: Retries[str] = Retries(Backoff(), limit=12)
    attempts = [r.fail("a") for _ in range(12)]
    assert [a.number for a in attempts] == list(range(1, 13))
    assert [a.delay for a in attempts[:11]] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30, 30, 30]
    assert attempts[11].delay is None  # the 12th failure in a row: give up
    assert r.failures("a") == 0
    assert r.fail("a").number == 1  # the next event starts a new burst


# ---------------------------------------------------------------------------- WorkQueue


class Recorder:
    """A queue's process function that records what ran, when, and how many at once."""

    def __init__(self, hold: float = 0.0) -> None:
        self.hold = hold
        self.runs: list[tuple[str, float]] = []
        self.running = 0
        self.most_at_once = 0
        self.started = time.monotonic()

    async def __call__(self, key: str) -> None:
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        self.runs.append((key, time.monotonic() - self.started))
        await asyncio.sleep(self.hold)
        self.running -= 1

    @property
    def keys(self) -> list[str]:
        return [k for k, _ in self.runs]


def _queue(
    process: Callable[[str], Awaitable[None]], *, coalesce: float = 0.01, concurrency: int = 4
) -> tuple[WorkQueue[str], list[int]]:
    depths: list[int] = []
    q: WorkQueue[str] = WorkQueue(
        process, coalesce=coalesce, concurrency=concurrency, on_depth=depths.append
    )
    q.bind(asyncio.get_running_loop())
    return q, depths


async def _drain(q: WorkQueue[str], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    await asyncio.sleep(0)
    while not q.idle:
        assert time.monotonic() < deadline, "the queue did not drain"
        await asyncio.sleep(0.005)


def test_nothing_is_queued_before_bind() -> None:
    async def process(key: str) -> None:
        raise AssertionError("ran before bind")

    q: WorkQueue[str] = WorkQueue(process, coalesce=0.0, concurrency=1)
    q.add("a")
    assert q.depth == 0
    assert q.idle


def test_a_burst_of_adds_is_one_run() -> None:
    async def main() -> Recorder:
        rec = Recorder()
        q, depths = _queue(rec)
        for _ in range(5):
            q.add("a")
        q.add("b")
        assert q.depth == 2
        assert q.is_pending("a")
        await _drain(q)
        assert q.depth == 0
        assert depths[:2] == [1, 2]
        assert depths[-1] == 0
        return rec

    rec = asyncio.run(main())
    assert sorted(rec.keys) == ["a", "b"]


def test_adds_wait_the_coalesce_delay_or_the_given_one() -> None:
    async def main() -> Recorder:
        rec = Recorder()
        q, _ = _queue(rec, coalesce=0.05)
        q.add("coalesced")
        q.add("later", 0.15)
        q.add("now", 0.0)
        await _drain(q)
        return rec

    rec = asyncio.run(main())
    assert rec.keys == ["now", "coalesced", "later"]
    at = dict(rec.runs)
    assert at["coalesced"] >= 0.045
    assert at["later"] >= 0.145


def test_adding_a_pending_key_keeps_its_first_delay() -> None:
    # A wait that must be kept (a retry's backoff): a sooner add does not move it.
    async def main() -> Recorder:
        rec = Recorder()
        q, _ = _queue(rec)
        q.add("a", 0.1)
        q.add("a", 0.0)
        await _drain(q)
        return rec

    rec = asyncio.run(main())
    assert rec.keys == ["a"]
    assert rec.runs[0][1] >= 0.095


def test_an_event_moves_a_pending_look_again_timer_forward_and_runs_once() -> None:
    # "Look again in 10 s" must not hold back a worker turning ready 1 s later: the reconcile
    # that sets a recheck used to swallow every event until the recheck came.
    async def main() -> tuple[Recorder, list[int]]:
        rec = Recorder()
        q, depths = _queue(rec)
        q.add("a", 0.3, movable=True)
        q.add("b", 0.3, movable=True)
        q.add("a", 0.0)  # an event: sooner, so "a" runs now
        q.add("b", 0.5)  # due later than b's timer: changes nothing
        assert q.depth == 2
        await _drain(q)
        return rec, depths

    rec, depths = asyncio.run(main())
    assert rec.keys == ["a", "b"]  # each once: the superseded timer does not run "a" again
    at = dict(rec.runs)
    assert at["a"] < 0.2
    assert 0.29 <= at["b"] < 0.45
    assert depths == [1, 2, 1, 0]


def test_a_key_added_while_it_runs_runs_again_after_never_alongside() -> None:
    async def main() -> Recorder:
        rec = Recorder(hold=0.05)
        q, _ = _queue(rec, coalesce=0.0)
        q.add("a")
        await asyncio.sleep(0.02)  # "a" is running now, no longer pending
        assert not q.is_pending("a")
        q.add("a")
        q.add("a")
        assert q.depth == 1
        await _drain(q)
        return rec

    rec = asyncio.run(main())
    assert rec.keys == ["a", "a"]
    assert rec.most_at_once == 1
    assert rec.runs[1][1] - rec.runs[0][1] >= 0.045


def test_at_most_concurrency_keys_run_at_once() -> None:
    async def main() -> Recorder:
        rec = Recorder(hold=0.03)
        q, _ = _queue(rec, coalesce=0.0, concurrency=2)
        for k in "abcdef":
            q.add(k)
        await _drain(q)
        return rec

    rec = asyncio.run(main())
    assert sorted(rec.keys) == list("abcdef")
    assert rec.most_at_once == 2


def test_add_from_another_thread() -> None:
    async def main() -> Recorder:
        rec = Recorder()
        q, _ = _queue(rec)
        t = threading.Thread(target=q.add, args=("from-thread",))
        t.start()
        await asyncio.to_thread(t.join)
        await _drain(q)
        return rec

    assert asyncio.run(main()).keys == ["from-thread"]


def test_a_failing_run_does_not_stop_the_queue() -> None:
    async def main() -> list[str]:
        seen: list[str] = []

        async def process(key: str) -> None:
            seen.append(key)
            if key == "bad":
                raise RuntimeError("boom")

        q, _ = _queue(process, coalesce=0.0)
        q.add("bad")
        await _drain(q)
        q.add("good")
        await _drain(q)
        return seen

    assert asyncio.run(main()) == ["bad", "good"]


# ------------------------------------------------------------------- the reconciler's use


FAST = Backoff(base=0.1, factor=2.0, cap=0.4)  # the real schedule, 5x faster (0.1, 0.2, 0.4)


class Scripted(Reconciler):
    """A Reconciler whose reconcile raises (or not) what the script says, in order."""

    def __init__(self, script: list[BaseException | None]) -> None:
        super().__init__(client.ApiClient(), OperatorMetrics(), backoff=FAST)
        self.script = script
        self.calls: list[float] = []

    def reconcile(self, key: Key) -> None:
        self.calls.append(time.monotonic())
        outcome = self.script.pop(0) if self.script else None
        if outcome is not None:
            raise outcome


KEY: Key = ("TrainingJob", "ml", "a")


def _errors(r: Reconciler) -> float:
    value = r.metrics.reconcile_errors.labels("TrainingJob")._value.get()
    return float(value)


async def _run(r: Scripted, until: Callable[[], bool], timeout: float = 5.0) -> None:
    r.bind(asyncio.get_running_loop())
    r.enqueue(KEY, 0.0)
    deadline = time.monotonic() + timeout
    while not (until() and r.idle):
        assert time.monotonic() < deadline, "the reconciler did not settle"
        await asyncio.sleep(0.005)


def test_a_conflict_reconciles_again_at_once_and_is_no_error() -> None:
    r = Scripted([Conflict(), Conflict(), None])
    asyncio.run(_run(r, lambda: len(r.calls) == 3))
    assert r.calls[1] - r.calls[0] >= 0.045  # CONFLICT_DELAY, 0.05 s
    assert _errors(r) == 0
    assert r.queue_depth == 0


def test_errors_back_off_and_a_success_starts_the_count_over(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="torchyard.operator")
    r = Scripted([RuntimeError("one"), RuntimeError("two"), None])
    asyncio.run(_run(r, lambda: len(r.calls) == 3))
    assert r.calls[1] - r.calls[0] >= 0.095  # 0.1 s
    assert r.calls[2] - r.calls[1] >= 0.195  # 0.2 s
    assert _errors(r) == 2
    r.script = [RuntimeError("three"), None]
    asyncio.run(_run(r, lambda: len(r.calls) == 5))
    failed = [m for m in caplog.messages if "reconcile failed" in m]
    assert [m.split("(")[1].split(",")[0] for m in failed] == [
        "attempt 1",
        "attempt 2",
        "attempt 1",
    ]
    assert ["retry in 0.1s" in m for m in failed] == [True, False, True]


def test_held_jobs_back_off_on_their_own_count() -> None:
    refusal = Refusal(reason="QuotaExceeded", message="exceeded quota", temporary=True)
    r = Scripted([Blocked(refusal), Retry("no Workload yet"), None])
    asyncio.run(_run(r, lambda: len(r.calls) == 3))
    assert r.calls[1] - r.calls[0] >= 0.095  # 0.1 s: the first hold
    assert r.calls[2] - r.calls[1] >= 0.195  # 0.2 s: Blocked and Retry share one count
    assert _errors(r) == 1  # a Blocked counts as a reconcile error, a Retry does not


def test_a_deleted_job_forgets_its_failures(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="torchyard.operator")
    r = Scripted([RuntimeError("one"), RuntimeError("two"), None])
    gone = {"metadata": {"namespace": "ml", "name": "a"}}

    async def main() -> None:
        r.bind(asyncio.get_running_loop())
        r.enqueue(KEY, 0.0)
        while not any("reconcile failed" in m for m in caplog.messages):
            await asyncio.sleep(0.005)
        r.observe_object("TrainingJob", gone, "DELETED")  # while its retry waits
        await _run(r, lambda: len(r.calls) == 3)

    asyncio.run(main())
    failed = [m for m in caplog.messages if "reconcile failed" in m]
    assert [m.split("(")[1].split(",")[0] for m in failed] == ["attempt 1", "attempt 1"]
    assert ["retry in 0.1s" in m for m in failed] == [True, True]  # not 0.2 s
