"""Where a job's worker logs are archived in its storage, and how a bounded log is laid out.

Shared by the writer (``torchyard_trainer.logtee``, inside every worker pod) and the readers
(``torchyard logs``/``describe``, :mod:`torchyard.logarchive`). Stdlib-only, like the contract.

Layout, under the job's archive root ``<output store>/.logs/<namespace>/<job>``::

    attempt-<n>/rank-<r>.log        the pod's stdout+stderr (all its local ranks), <= the bound
    attempt-<n>/rank-<r>.tail-<k>   while a long log is being written: its newest pieces
    attempt-<n>/rank-<r>.json       the pod's record: start, end, exit code, bytes, dropped

``<n>`` is the attempt (``TORCHYARD_RESTART_COUNT``), ``<r>`` the pod's node rank (its
completion index). A log longer than the bound keeps its head (the first half of the bound:
startup, configuration) and its tail (the newest quarter to half: the crash), with one marker
line between them saying how much was dropped. The writer joins the pieces into ``.log`` when it
ends; a writer killed before that leaves the pieces, which the reader joins the same way.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

from torchyard.api.contract import is_remote, local_path

LOGS_SUBDIR: Final = ".logs"
DEFAULT_MAX_BYTES_PER_RANK: Final = 10 * 1024 * 1024
ATTEMPT_DIR_RE: Final = re.compile(r"^attempt-(\d+)$")
RANK_LOG_RE: Final = re.compile(r"^rank-(\d+)\.log$")
TAIL_RE: Final = re.compile(r"^rank-(\d+)\.tail-(\d+)$")


def archive_uri(output_storage: str | None, namespace: str, job_name: str) -> str | None:
    """The archive root as a URI in the job's own scheme (what ``status.logs.uri`` says);
    ``None`` when the output store is an object store or unset: nothing is archived then."""
    if not output_storage or is_remote(output_storage):
        return None
    return f"{output_storage.rstrip('/')}/{LOGS_SUBDIR}/{namespace}/{job_name}"


def archive_dir(
    output_storage: str | None, namespace: str, job_name: str, pvc_root: Path
) -> Path | None:
    """The archive root as a path where ``pvc_root`` is the claims' mount point."""
    uri = archive_uri(output_storage, namespace, job_name)
    return None if uri is None else local_path(uri, pvc_root)


def log_status(
    output_storage: str | None, namespace: str, job_name: str, restarts: int
) -> dict[str, object] | None:
    """``status.logs`` of a TrainingJob whose attempt ``restarts`` has been started, with
    ``output_storage`` as resolved for its workers (the operator's default store included)."""
    uri = archive_uri(output_storage, namespace, job_name)
    return None if uri is None else {"uri": uri, "attempts": restarts + 1}


def attempt_dir(root: Path, attempt: int) -> Path:
    return root / f"attempt-{attempt}"


def rank_log(root: Path, attempt: int, rank: int) -> Path:
    return attempt_dir(root, attempt) / f"rank-{rank}.log"


def rank_record(root: Path, attempt: int, rank: int) -> Path:
    return attempt_dir(root, attempt) / f"rank-{rank}.json"


def rank_tail(root: Path, attempt: int, rank: int, piece: int) -> Path:
    return attempt_dir(root, attempt) / f"rank-{rank}.tail-{piece}"


def dropped_marker(dropped: int | None) -> bytes:
    """The line between a long log's head and its tail (``None``: how much is unknown, the
    writer was killed before it could say)."""
    how_much = "some" if dropped is None else str(dropped)
    return (
        f"\n[torchyard: {how_much} bytes of this log dropped here "
        "(over output size bound maxBytesPerRank); head and tail kept]\n"
    ).encode()


__all__ = [
    "DEFAULT_MAX_BYTES_PER_RANK",
    "LOGS_SUBDIR",
    "archive_dir",
    "archive_uri",
    "attempt_dir",
    "dropped_marker",
    "log_status",
    "rank_log",
    "rank_record",
    "rank_tail",
]
