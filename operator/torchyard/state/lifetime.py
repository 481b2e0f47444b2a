"""A job's lifetime limits: ``activeDeadlineSeconds`` (counted from ``startTime``, not while
suspended) and ``ttlSecondsAfterFinished`` (counted from ``completionTime``) — pure. The
reconciler asks :func:`lifetime_next` when to look again and :func:`lifetime_due` what is due
then (a look-again timer of its work queue per job, not a timer that ticks)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from torchyard.api.constants import Phase
from torchyard.state.observed import Status, parse_time


def deadline_at(status: Status, active_deadline_seconds: int | None) -> datetime | None:
    start = parse_time(status.get("startTime"))
    if start is None or active_deadline_seconds is None:
        return None
    return start + timedelta(seconds=active_deadline_seconds)


def ttl_at(status: Status, ttl_seconds: int | None) -> datetime | None:
    done = parse_time(status.get("completionTime"))
    if done is None or ttl_seconds is None or status.get("phase") not in Phase.FINISHED:
        return None
    return done + timedelta(seconds=ttl_seconds)


def lifetime_next(body: dict[str, Any]) -> tuple[str, datetime] | None:
    """The job's next lifetime limit: ("ttl", when the finished job is to be deleted),
    ("deadline", when the running job fails) or None (no limit set, or none counting)."""
    spec = body.get("spec") or {}
    policy = spec.get("runPolicy") or {}
    status = body.get("status") or {}
    phase = status.get("phase")
    if phase in Phase.FINISHED:
        at = ttl_at(status, policy.get("ttlSecondsAfterFinished"))
        return None if at is None else ("ttl", at)
    if phase == Phase.SUSPENDED or policy.get("suspend"):
        return None
    at = deadline_at(status, policy.get("activeDeadlineSeconds"))
    return None if at is None else ("deadline", at)


def lifetime_due(body: dict[str, Any], now: datetime) -> str | None:
    """What is due now: "deadline" (reconcile: the job fails), "ttl" (delete the finished
    job) or None."""
    limit = lifetime_next(body)
    return limit[0] if limit is not None and now >= limit[1] else None
