"""Reading a job's archived worker logs (layout: :mod:`torchyard.api.logarchive`).

Shared by ``torchyard logs``/``describe`` for cluster jobs whose archive is reachable from here
and for ``torchyard run``'s local runs (their archive is under ``torchyard-runs/models``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from torchyard.api import logarchive as layout
from torchyard.api.contract import StorageURIError, local_path
from torchyard.local_prepare import LOG_FILE


def attempts(root: Path) -> list[int]:
    """The attempts with an archive, oldest first."""
    if not root.is_dir():
        return []
    found = (layout.ATTEMPT_DIR_RE.match(p.name) for p in root.iterdir() if p.is_dir())
    return sorted(int(m.group(1)) for m in found if m)


def ranks(root: Path, attempt: int) -> list[int]:
    """The ranks with a log (or the pieces of one) in an attempt."""
    folder = layout.attempt_dir(root, attempt)
    if not folder.is_dir():
        return []
    out: set[int] = set()
    for p in folder.iterdir():
        m = layout.RANK_LOG_RE.match(p.name) or layout.TAIL_RE.match(p.name)
        if m:
            out.add(int(m.group(1)))
    return sorted(out)


def _tail_pieces(root: Path, attempt: int, rank: int) -> list[tuple[int, Path]]:
    folder = layout.attempt_dir(root, attempt)
    pieces = []
    for p in folder.iterdir():
        m = layout.TAIL_RE.match(p.name)
        if m and int(m.group(1)) == rank:
            pieces.append((int(m.group(2)), p))
    return sorted(pieces)


def read_log(root: Path, attempt: int, rank: int) -> bytes | None:
    """One pod's archived log of one attempt (None: not archived). A writer that was killed
    before it joined its pieces left a head and tail pieces: they are joined here the same way."""
    path = layout.rank_log(root, attempt, rank)
    pieces = _tail_pieces(root, attempt, rank) if path.parent.is_dir() else []
    if not path.is_file() and not pieces:
        return None
    head = path.read_bytes() if path.is_file() else b""
    if not pieces:
        return head
    tail = b"".join(p.read_bytes() for _, p in pieces)
    # Pieces older than the kept two were deleted: something was dropped before them.
    marker = layout.dropped_marker(None) if pieces[0][0] > 0 else b""
    return head + marker + tail


@dataclass(frozen=True)
class AttemptRecord:
    """What the pods of one attempt recorded (start, end, exit code) in the archive."""

    attempt: int
    start: str | None
    end: str | None
    exit_codes: dict[int, int | None]
    """Rank → its launcher's exit code (None: it never recorded an end: killed, or running)."""
    reason: str | None
    log_bytes: int


def _record(root: Path, attempt: int, rank: int) -> dict[str, Any]:
    path = layout.rank_record(root, attempt, rank)
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def attempt_record(root: Path, attempt: int) -> AttemptRecord:
    recs = {r: _record(root, attempt, r) for r in ranks(root, attempt)}
    starts = [str(v["start"]) for v in recs.values() if v.get("start")]
    ends = [str(v["end"]) for v in recs.values() if v.get("end")]
    reasons = [str(v["reason"]) for v in recs.values() if v.get("reason")]
    return AttemptRecord(
        attempt=attempt,
        start=min(starts) if starts else None,
        end=max(ends) if len(ends) == len(recs) and ends else None,
        exit_codes={r: v.get("exitCode") for r, v in recs.items()},
        reason=reasons[0] if reasons else None,
        log_bytes=sum(int(v.get("bytes") or 0) for v in recs.values()),
    )


def history(root: Path) -> list[AttemptRecord]:
    """Every archived attempt, oldest first."""
    return [attempt_record(root, a) for a in attempts(root)]


def archive_of(obj: dict[str, Any], pvc_root: Path) -> tuple[str | None, Path | None]:
    """(URI, path on this machine) of a job's log archive, from the job object: its
    ``status.logs.uri`` when recorded, else derived from the spec as the workers do; the path
    is None where the URI does not name one here (pvc:// claims live under ``pvc_root``)."""
    meta, spec = obj["metadata"], obj.get("spec") or {}
    uri = ((obj.get("status") or {}).get("logs") or {}).get("uri") or layout.archive_uri(
        (spec.get("output") or {}).get("storage"), meta.get("namespace", ""), meta["name"]
    )
    if uri is None:
        return None, None
    try:
        return uri, local_path(uri, pvc_root)
    except StorageURIError:
        return uri, None


# --------------------------------------------------------------------------- local runs

LOCAL_RUNS_DIR = "torchyard-runs"
"""``torchyard run``'s folder (torchyard.local.RUNS_DIR; a test keeps them equal: the CLI may
not import the local runner)."""
LOCAL_NAMESPACE = "default"
LOCAL_SPEC_FILE = "spec.yaml"
LOCAL_PVC_DIR = "pvc"
ATTEMPT_MARKER_RE = re.compile(rb"^===== attempt (\d+) \S+ started .*=====$", re.MULTILINE)


def local_archive_root(base_dir: Path, name: str) -> Path | None:
    """The archive of ``torchyard run``'s job ``name`` run from ``base_dir`` (None: no run, or
    an output store that is not a folder): the resolved spec in the run folder says where."""
    runs = base_dir / LOCAL_RUNS_DIR
    spec_path = runs / name / LOCAL_SPEC_FILE
    if not spec_path.is_file():
        return None
    doc = yaml.safe_load(spec_path.read_text()) or {}
    storage = ((doc.get("spec") or {}).get("output") or {}).get("storage")
    try:
        return layout.archive_dir(storage, LOCAL_NAMESPACE, name, runs / LOCAL_PVC_DIR)
    except StorageURIError:
        return None


def local_pod_log(base_dir: Path, name: str, rank: int, attempt: int | None) -> bytes | None:
    """One attempt's part of ``torchyard run``'s own per-pod log.txt (None: no such log or
    attempt) — the fallback for a job whose command bypasses the archiving launcher."""
    path = base_dir / LOCAL_RUNS_DIR / name / f"pod-{rank}" / LOG_FILE
    if not path.is_file():
        return None
    text = path.read_bytes()
    marks = list(ATTEMPT_MARKER_RE.finditer(text))
    if attempt is None:
        return text[marks[-1].start() :] if marks else text
    for i, m in enumerate(marks):
        if int(m.group(1)) == attempt:
            end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
            part = text[m.start() : end]
            # the blank line local.py puts before the next attempt's marker is not this one's
            return part[:-1] if i + 1 < len(marks) and part.endswith(b"\n\n") else part
    return None


__all__ = [
    "AttemptRecord",
    "archive_of",
    "attempt_record",
    "attempts",
    "history",
    "local_archive_root",
    "local_pod_log",
    "ranks",
    "read_log",
]
