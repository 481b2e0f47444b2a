"""Leader election's pure rules (controller/leader.py): who may write the Lease, what is
written, and what the probes answer."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from torchyard.controller.leader import (
    ApiContact,
    ApiPinger,
    Health,
    LeaseSettings,
    Record,
    may_take,
    next_spec,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def record(holder: str, transitions: int = 0) -> Record:
    return Record(holder, 15, T0, T0, transitions)


def test_a_held_lease_is_taken_only_after_a_silent_lease_duration_on_our_clock() -> None:
    held = record("a")
    assert not may_take(held, "b", observed_at=100.0, now=100.0 + 14.9, duration=15)
    assert may_take(held, "b", observed_at=100.0, now=100.0 + 15.0, duration=15)
    # The longer of ours and the record's duration counts: a leader with a longer lease
    # is not cut short by a candidate configured shorter.
    assert not may_take(held, "b", observed_at=100.0, now=100.0 + 10, duration=5)


def test_our_own_or_a_released_lease_is_taken_at_once() -> None:
    assert may_take(record("b"), "b", observed_at=100.0, now=100.0, duration=15)
    assert may_take(record(""), "b", observed_at=100.0, now=100.0, duration=15)


def test_renewing_keeps_acquire_time_and_transitions_taking_over_counts_one() -> None:
    now = T0 + timedelta(seconds=30)
    renew = next_spec(record("a", 3), "a", 15, now)
    assert renew["acquireTime"] == "2026-01-01T00:00:00.000000Z"
    assert renew["renewTime"] == "2026-01-01T00:00:30.000000Z"
    assert renew["leaseTransitions"] == 3
    take = next_spec(record("a", 3), "b", 15, now)
    assert (take["holderIdentity"], take["leaseTransitions"]) == ("b", 4)
    assert take["acquireTime"] == take["renewTime"]
    assert next_spec(None, "a", 15, now)["leaseTransitions"] == 0


@pytest.mark.parametrize(
    ("retry", "deadline", "duration"), [(2, 10, 10), (2, 15, 10), (10, 10, 15), (0, 1, 2)]
)
def test_timings_must_nest(retry: float, deadline: float, duration: float) -> None:
    with pytest.raises(ValueError, match="retry period < renew deadline < lease duration"):
        LeaseSettings("ns", retry_period=retry, renew_deadline=deadline, lease_duration=duration)


def _health(up: bool, last_ok: float, watches: bool = True) -> Health:
    pinger = ApiPinger(api=None)
    pinger.api = ApiContact(up=up, last_ok=last_ok)
    return Health(pinger, api_grace=10.0, job_watches=lambda: watches)


def test_ready_only_while_the_api_answers_and_the_watches_are_healthy() -> None:
    now = time.monotonic()
    assert _health(True, now).ready()[0]
    ok, body = _health(False, now - 1).ready()
    assert not ok
    assert body["api"].startswith("no answer")
    assert not _health(True, now - 11).ready()[0]  # stale: older than the grace
    assert not _health(True, now, watches=False).ready()[0]


def test_a_hung_api_server_gets_one_lease_request_per_round() -> None:
    """A renewal must end by the renew deadline: no client-side retry may send the request
    again with the whole timeout (urllib3's default does, three times). The API server here
    is a real socket that accepts and never answers."""
    import socket
    import threading

    from kubernetes import client
    from prometheus_client import CollectorRegistry

    from torchyard.controller.leader import LeaderElector

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(conn)  # held open, never answered

    threading.Thread(target=accept, daemon=True).start()
    cfg = client.Configuration()
    cfg.host = f"http://127.0.0.1:{server.getsockname()[1]}"
    settings = LeaseSettings(namespace="ns", identity="me")
    elector = LeaderElector(client.ApiClient(cfg), settings, CollectorRegistry())
    try:
        assert elector._try(time.monotonic() + 0.5) is False
        assert len(accepted) == 1, f"the Lease read was sent {len(accepted)} times"
        assert elector.api.up is False
    finally:
        server.close()
        for c in accepted:
            c.close()


class _Lost(Exception):
    """Stands for the process exit (EXIT_LEASE_LOST) in these tests."""


def _elector(renewed_ago: float) -> object:
    from kubernetes import client
    from prometheus_client import CollectorRegistry

    from torchyard.controller.leader import LeaderElector

    def lost() -> None:
        raise _Lost

    cfg = client.Configuration()
    cfg.host = "http://127.0.0.1:1"
    elector = LeaderElector(
        client.ApiClient(cfg),
        LeaseSettings(namespace="ns", identity="me"),
        CollectorRegistry(),
        on_lost=lost,
    )
    elector.leading.set()
    elector._renewed_at = time.monotonic() - renewed_ago
    return elector


def test_a_leader_past_its_renew_deadline_sends_nothing() -> None:
    """A frozen leader (SIGSTOP, a stalled VM) wakes with requests queued before its renewal
    thread notices: the fence, checked by each request, exits first."""
    fresh, stale = _elector(9.0), _elector(10.5)  # renew deadline: 10 s
    assert fresh.may_act()  # type: ignore[attr-defined]
    fresh.fence()  # type: ignore[attr-defined]
    assert not stale.may_act()  # type: ignore[attr-defined]
    with pytest.raises(_Lost):
        stale.fence()  # type: ignore[attr-defined]
    # Released on a clean shutdown: no longer leading, stopped — not a lost Lease.
    stale.leading.clear()  # type: ignore[attr-defined]
    stale.stopped.set()  # type: ignore[attr-defined]
    stale.fence()  # type: ignore[attr-defined]


def _listener() -> tuple[object, list[object]]:
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[object] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    return server, accepted


def test_the_fence_stops_both_clients_before_they_connect() -> None:
    """The Python client (fence_client) and Kopf's aiohttp session (fence_trace): a stale
    leader's request never reaches the server's socket."""
    import asyncio

    import aiohttp
    from kubernetes import client

    from torchyard.controller.leader import fence_client, fence_trace

    server, accepted = _listener()
    url = f"http://127.0.0.1:{server.getsockname()[1]}"  # type: ignore[attr-defined]
    stale = _elector(11.0)
    try:
        cfg = client.Configuration()
        cfg.host = url
        api = client.ApiClient(cfg)
        fence_client(api, stale.fence)  # type: ignore[attr-defined]
        with pytest.raises(_Lost):
            client.CoreV1Api(api).create_namespaced_config_map("ns", {"metadata": {"name": "x"}})

        async def post() -> None:
            trace = fence_trace(stale.fence)  # type: ignore[attr-defined]
            async with aiohttp.ClientSession(trace_configs=[trace]) as session:
                await session.post(f"{url}/api/v1/namespaces/ns/events", json={})

        with pytest.raises(_Lost):
            asyncio.run(post())
        time.sleep(0.2)
        assert accepted == [], "a fenced request reached the server"
    finally:
        server.close()  # type: ignore[attr-defined]
