"""The reconciler's work queue and the one retry backoff of the controller.

- :class:`Backoff`: capped exponential delays, ``base * factor**(n - 1)`` seconds before the
  n-th retry, at most ``cap``, no jitter — 0.5, 1, 2, 4, 8, 16, 30, 30 … s with the defaults.
  The work queue's retries and the batch Job watch's reconnects both use it.
- :class:`Retries`: consecutive failures per key, the delay before the next try, an optional
  limit (the count starts over once the limit is reached, and on :meth:`Retries.reset`).
- :class:`WorkQueue`: one pending entry per key (adding a key that is already pending does
  nothing, whatever its delay — unless the pending entry is a *movable* look-again timer and
  the new add is due sooner: then the key runs at the sooner time), delayed adds, at most
  ``concurrency`` keys processed at once and one run per key at a time (a key added while it
  runs is processed again afterwards). :meth:`WorkQueue.add` may be called from any thread.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff without jitter."""

    base: float = 0.5
    factor: float = 2.0
    cap: float = 30.0

    def __post_init__(self) -> None:
        if self.base <= 0 or self.factor <= 1 or self.cap < self.base:
            raise ValueError(f"not a growing, capped backoff: {self}")

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` consecutive failures (1 = the first)."""
        delay = self.base
        for _ in range(max(1, failures) - 1):
            delay *= self.factor
            if delay >= self.cap:
                return self.cap
        return min(delay, self.cap)


@dataclass(frozen=True)
class Attempt:
    """One more failure of a key: its number in the run of failures, and the delay before
    the next try (None: the limit is reached, give up; the count has started over)."""

    number: int
    delay: float | None


class Retries(Generic[K]):
    """Consecutive failures per key, with :class:`Backoff` delays and an optional limit."""

    def __init__(self, backoff: Backoff, limit: int | None = None) -> None:
        self.backoff = backoff
        self.limit = limit
        self._failures: dict[K, int] = {}

    def fail(self, key: K) -> Attempt:
        number = self._failures.get(key, 0) + 1
        if self.limit is not None and number >= self.limit:
            self._failures.pop(key, None)
            return Attempt(number, None)
        self._failures[key] = number
        return Attempt(number, self.backoff.delay(number))

    def failures(self, key: K) -> int:
        return self._failures.get(key, 0)

    def reset(self, key: K) -> None:
        self._failures.pop(key, None)


@dataclass(frozen=True)
class _Pending:
    due: float
    """Event-loop time at which the key runs."""
    token: int
    """Which scheduled start is this entry's: a superseded one finds another token."""
    movable: bool
    """A look-again timer: an add due sooner replaces it (see :meth:`WorkQueue.add`)."""


class WorkQueue(Generic[K]):
    """Keys to process, deduplicated while pending, each after a delay.

    ``process`` is awaited for a key with a semaphore (``concurrency``) and the key's own
    lock held; it should handle its errors (an exception ends that run, nothing more).
    Nothing is queued before :meth:`bind` gives the queue its event loop.
    """

    def __init__(
        self,
        process: Callable[[K], Awaitable[None]],
        *,
        coalesce: float,
        concurrency: int,
        on_depth: Callable[[int], None] | None = None,
    ) -> None:
        self._process = process
        self.coalesce = coalesce
        """Default delay of :meth:`add`: how long a key waits for more events."""
        self._concurrency = concurrency
        self._on_depth = on_depth
        self._pending: dict[K, _Pending] = {}
        self._tokens = itertools.count()
        self._locks: dict[K, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._sem: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._sem = asyncio.Semaphore(self._concurrency)

    @property
    def depth(self) -> int:
        """Keys waiting to be processed (not counting those being processed)."""
        return len(self._pending)

    @property
    def idle(self) -> bool:
        return not self._pending and not self._tasks

    def is_pending(self, key: K) -> bool:
        return key in self._pending

    def add(self, key: K, delay: float | None = None, *, movable: bool = False) -> None:
        """Process ``key`` after ``delay`` seconds (default :attr:`coalesce`), unless it is
        pending already. Thread-safe.

        ``movable``: this add is a look-again timer ("if nothing happens, look in 10 s", a
        held count write), not a wait that must be kept (a retry's backoff): a later add due
        sooner — an event — moves the key forward instead of being dropped, so a timer never
        delays what an event says by up to its length."""
        loop = self._loop
        if loop is None:
            return
        wait = self.coalesce if delay is None else delay
        due = loop.time() + wait
        pending = self._pending.get(key)
        if pending is not None and not (pending.movable and due < pending.due):
            return
        entry = _Pending(due, next(self._tokens), movable)
        self._pending[key] = entry
        if pending is None:
            self._depth_changed()

        def start() -> None:
            if self._pending.get(key) is not entry:
                return  # moved forward by a sooner add, or already started
            task = asyncio.ensure_future(self._run(key, entry))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        loop.call_soon_threadsafe(lambda: loop.call_at(due, start))

    async def _run(self, key: K, entry: _Pending) -> None:
        assert self._sem is not None
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with self._sem, lock:
            if self._pending.get(key) is entry:
                del self._pending[key]
            self._depth_changed()
            await self._process(key)
        if self._locks.get(key) is lock and not lock.locked() and key not in self._pending:
            self._locks.pop(key, None)

    def _depth_changed(self) -> None:
        if self._on_depth is not None:
            self._on_depth(len(self._pending))


__all__ = ["Attempt", "Backoff", "Retries", "WorkQueue"]
