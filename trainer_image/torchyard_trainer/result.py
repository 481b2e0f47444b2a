"""The result file a worker's rank 0 writes at the end (torch-free: the built-in trainer and the
reporting helper a user's own script uses share it, see ``torchyard_trainer.report``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torchyard_trainer.storage import atomic_write_text


def write_result(path: Path, result: dict[str, Any], *, in_place: bool = True) -> None:
    """The result file ``torchyard run`` and the operator read: an atomic replace where the
    directory is writable, else (``in_place``) written in place (``/dev/termination-log`` in a
    pod, where Kubernetes copies at most 4 KiB of it into the pod status: keep it compact)."""
    text = json.dumps(result, sort_keys=True, separators=(",", ":")) + "\n"
    try:
        atomic_write_text(path, text)
    except OSError:
        if not in_place:
            raise
        with path.open("w") as fh:
            fh.write(text)
