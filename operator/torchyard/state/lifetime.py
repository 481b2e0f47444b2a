"""A job's lifetime limits: ``activeDeadlineSeconds`` (counted from ``startTime``, not while
suspended) and ``ttlSecondsAfterFinished`` (counted from ``completionTime``) — pure. The
operator's Kopf timers ask :func:`lifetime_due` what is due."""

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


def lifetime_due(body: dict[str, Any], now: datetime) -> str | None:
    """What a lifetime timer must do now: "deadline" (reconcile: the job fails), "ttl"
    (delete the finished job) or None."""
    spec = body.get("spec") or {}
    policy = spec.get("runPolicy") or {}
    status = body.get("status") or {}
    phase = status.get("phase")
    if phase in Phase.FINISHED:
        at = ttl_at(status, policy.get("ttlSecondsAfterFinished"))
        return "ttl" if at is not None and now >= at else None
    if phase == Phase.SUSPENDED or policy.get("suspend"):
        return None
    at = deadline_at(status, policy.get("activeDeadlineSeconds"))
    return "deadline" if at is not None and now >= at else None
