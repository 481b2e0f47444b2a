"""The dev cluster's component command lines (torchyard_devcluster.componentargs)."""

from __future__ import annotations

import pytest

from torchyard_devcluster.componentargs import kwok_log_level


@pytest.mark.parametrize(
    ("verbosity", "level"), [(0, "WARN"), (1, "INFO"), (3, "INFO"), (4, "DEBUG"), (6, "DEBUG")]
)
def test_kwok_is_quiet_at_the_clusters_default_verbosity(verbosity: int, level: str) -> None:
    # KWOK's --v is a slog level: "0" would be its INFO, a line per pod patch.
    assert kwok_log_level(verbosity) == level
