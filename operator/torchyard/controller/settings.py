"""The reconciler's settings."""

from __future__ import annotations

from dataclasses import dataclass

from torchyard.api.constants import DEFAULT_TRAINER_IMAGE
from torchyard.builders.progress import ProgressEndpoint
from torchyard.state.progress import DEFAULT_WRITE_INTERVAL


@dataclass
class Settings:
    default_image: str = DEFAULT_TRAINER_IMAGE
    default_storage: str | None = None
    workers: int = 16
    """Reconciles running at once."""
    coalesce_seconds: float = 0.02
    """How long a queued key waits for more events before it is reconciled."""
    count_update_seconds: float = 3.0
    """Least time between two status writes that only refresh worker counts/message (phase
    and condition changes are written at once)."""
    created_update_seconds: float = 10.0
    """The same wait, from the first change it carries, for a write whose only news is that
    worker pods were created or removed (``status.workers.active``; no worker turned ready,
    succeeded or failed): a starting job waits for ready workers, and in a burst the Job
    controller reports readiness seconds after creation, so that write mostly rides with the
    readiness (or ``Running``) one instead of costing its own."""
    first_status_seconds: float = 60.0
    """Longest a new job's first status (Pending, ``Created``) waits for its worker pods to be
    created; once they are, ``created_update_seconds`` applies. Where the workers start within
    that time, one status write says ``Created`` and ``Running`` (the ``JobCreated`` Event is
    posted at once all the same). In a burst the worker Jobs wait tens of seconds in the Job
    controller's queue, and a second write per job is API-server work taken from it. 0: write
    at once."""
    child_coalesce_seconds: float = 0.25
    """The same for events of a job's batch Job: pods becoming ready one by one change its
    counts in bursts; one status write per burst, not one per pod."""
    progress: ProgressEndpoint | None = None
    """The live-progress endpoint the workers post to (None: they do not post); set from the
    operator's TORCHYARD_PROGRESS_* environment (controller/progress_server.py)."""
    progress_write_seconds: float = DEFAULT_WRITE_INTERVAL
    """Least time between two ``status.progress`` writes of one job (the newest report wins)."""


__all__ = ["Settings"]
