"""Status conditions (type/status/reason/message/lastTransitionTime) — pure."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from torchyard.state.observed import Status, rfc3339


def set_condition(
    status: Status,
    ctype: str,
    value: bool,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None = None,
) -> bool:
    """Set one condition; lastTransitionTime moves only when its status changes.
    Returns True when the status value changed (or the condition is new)."""
    conds: list[dict[str, Any]] = [dict(c) for c in status.get("conditions") or []]
    want = "True" if value else "False"
    for c in conds:
        if c.get("type") == ctype:
            changed = c.get("status") != want
            c["status"] = want
            c["reason"] = reason
            c["message"] = message
            if changed or not c.get("lastTransitionTime"):
                c["lastTransitionTime"] = rfc3339(now)
            if generation is not None:
                c["observedGeneration"] = generation
            status["conditions"] = conds
            return changed
    new: dict[str, Any] = {
        "type": ctype,
        "status": want,
        "reason": reason,
        "message": message,
        "lastTransitionTime": rfc3339(now),
    }
    if generation is not None:
        new["observedGeneration"] = generation
    conds.append(new)
    status["conditions"] = conds
    return True


def get_condition(status: Status, ctype: str) -> dict[str, Any] | None:
    for c in status.get("conditions") or []:
        if c.get("type") == ctype:
            return dict(c)
    return None


def condition_true(status: Status, ctype: str) -> bool:
    c = get_condition(status, ctype)
    return c is not None and c.get("status") == "True"


def clear_condition(
    status: Status, ctype: str, reason: str, message: str, now: datetime, gen: int
) -> None:
    """Set a condition False, but only if it exists (absent means never happened)."""
    if get_condition(status, ctype) is not None:
        set_condition(status, ctype, False, reason, message, now, gen)
