"""Shared test configuration: repository paths and the GPU marker's skip rule."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
INVALID = REPO / "tests" / "invalid"
VALID = REPO / "tests" / "valid"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs CUDA (gpu tests run on the GPU machine only)")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)
