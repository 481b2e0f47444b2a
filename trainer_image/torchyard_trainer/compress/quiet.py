"""Quiet use of torch.ao and torchao: the deprecation warnings torch.ao raises while we use it
on purpose are collected here and reported once in the report (with the reason), never printed
to the user's log one by one; torchao's import-time log line is silenced."""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Iterator

# Deprecation warnings torch.ao raises while we use it on purpose: collected here, reported once
# in the report (with the reason), never printed to the user's log one by one.
CAPTURED_WARNINGS: dict[str, int] = {}


@contextlib.contextmanager
def quiet_torch_ao() -> Iterator[None]:
    """Run torch.ao calls, capturing their (known, explained) deprecation warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        first = str(w.message).strip().splitlines()[0][:160]
        CAPTURED_WARNINGS[first] = CAPTURED_WARNINGS.get(first, 0) + 1
        # explained once in the report: later calls (e.g. every forward) stay silent
        warnings.filterwarnings("ignore", message=re.escape(first[:60]))


@contextlib.contextmanager
def quiet_torchao_import() -> Iterator[None]:
    """Import torchao without its import-time log line about torch's pytree registry (a
    deprecation inside torchao itself, nothing the user can act on)."""
    logger = logging.getLogger("torch.utils._pytree")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def drain_warnings() -> dict[str, int]:
    out = dict(CAPTURED_WARNINGS)
    CAPTURED_WARNINGS.clear()
    return out


__all__ = ["CAPTURED_WARNINGS", "drain_warnings", "quiet_torch_ao", "quiet_torchao_import"]
