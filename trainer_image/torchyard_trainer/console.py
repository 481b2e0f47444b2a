"""Rank 0's progress as lines on the worker's console (stderr, through ``logging``), so that
``kubectl logs`` / ``torchyard logs`` of a worker pod show how training goes.

Before this, a successful worker printed nothing at all: its progress went only to
``progress.jsonl``, Prometheus and the termination message, and the pod's log (and its copy in
the log archive) stayed empty. One line per event of :class:`torchyard_trainer.metrics.Metrics`
(start, eval, checkpoint, end), and of the steps only the first, the last, one at each tenth of
the run and the last of each epoch: a few dozen lines per job however many steps it takes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("torchyard_trainer.progress")

STEP_LINES = 10
"""Step lines per run besides the first, the last and the epochs' last ones."""


def _num(value: Any, fmt: str) -> str | None:
    return format(value, fmt) if isinstance(value, int | float) else None


def _join(*parts: str | None) -> str:
    return " · ".join(p for p in parts if p)


def _shown_step(fields: Mapping[str, Any]) -> bool:
    step, total = fields.get("step"), fields.get("totalSteps")
    if not isinstance(step, int) or not isinstance(total, int) or total <= 0:
        return True
    per_epoch = fields.get("stepsPerEpoch")
    epoch_end = isinstance(per_epoch, int) and per_epoch > 0 and step % per_epoch == 0
    return step <= 1 or step >= total or epoch_end or step % max(1, total // STEP_LINES) == 0


def _metrics(values: Mapping[str, Any]) -> str | None:
    shown = [f"{k} {v:.4f}" for k, v in values.items() if isinstance(v, float)]
    return " · ".join(shown) or None


def line(event: str, fields: Mapping[str, Any]) -> str | None:
    """The console line of one progress event, None for a step that is not shown."""
    total = fields.get("totalSteps")
    at = f"step {fields.get('step')}/{total}" if total else f"step {fields.get('step')}"
    if event == "start":
        return _join(
            f"start: {fields.get('strategy') or fields.get('kind') or 'job'}",
            f"world size {fields['worldSize']}" if "worldSize" in fields else None,
            f"{fields.get('totalSteps')} steps in {fields.get('epochs')} epoch(s)",
            f"resuming at step {fields['startStep']}" if fields.get("startStep") else None,
            f"restarts {fields['restarts']}" if fields.get("restarts") else None,
        )
    if event == "step":
        if not _shown_step(fields):
            return None
        return _join(
            at,
            f"epoch {fields['epoch'] + 1}" if isinstance(fields.get("epoch"), int) else None,
            f"loss {_num(fields.get('loss'), '.4f')}" if "loss" in fields else None,
            f"{_num(fields.get('samplesPerSecond'), '.0f')} samples/s"
            if "samplesPerSecond" in fields
            else None,
            f"trial {fields['trial']}" if "trial" in fields else None,
        )
    if event == "eval":
        values = {k: v for k, v in fields.items() if k not in ("epoch", "step")}
        return _join(f"eval at step {fields.get('step')}", _metrics(values))
    if event == "checkpoint":
        return _join(f"checkpoint at step {fields.get('step')}", str(fields.get("uri") or ""))
    if event == "end":
        model = fields.get("model") or {}
        version = f"model {model.get('name')} v{model.get('version')}" if model else None
        return _join(f"end: {fields.get('status')}", version, _metrics(fields.get("metrics") or {}))
    return None


def echo(event: str, fields: Mapping[str, Any]) -> None:
    """Log the line of ``event`` (INFO), if it has one."""
    text = line(event, fields)
    if text is not None:
        log.info("%s", text)


__all__ = ["echo", "line"]
