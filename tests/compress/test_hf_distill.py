"""Hugging Face distillation (issue 19, acceptance 2): the student is the teacher with fewer
transformer layers; structured pruning finds the feed-forward pairs of transformer blocks."""

from __future__ import annotations

import pytest

from .conftest import REPO  # noqa: F401  (puts the two source roots on sys.path)


def test_keep_layers_spreads_evenly_keeping_first_and_last() -> None:
    from torchyard_trainer.compress.hf_student import keep_layers

    assert keep_layers(6, 3) == [0, 2, 5]
    assert keep_layers(12, 4) == [0, 4, 7, 11]
    assert keep_layers(6, 2) == [0, 5]
    assert keep_layers(6, 1) == [0]
    assert keep_layers(6, 6) == [0, 1, 2, 3, 4, 5]
    assert keep_layers(6, 3, [1, 3, 4]) == [1, 3, 4]


@pytest.mark.parametrize(
    ("n_keep", "keep", "says"),
    [
        (0, None, "between 1 and 6"),
        (7, None, "between 1 and 6"),
        (3, [0, 2], "has 2 entries"),
        (3, [2, 0, 5], "increasing"),
        (3, [0, 0, 5], "increasing"),
        (3, [0, 2, 6], "[0, 5]"),
        (3, [-1, 2, 5], "[0, 5]"),
    ],
)
def test_keep_layers_refuses_what_cannot_be_kept(n_keep: int, keep: list[int] | None,
                                                 says: str) -> None:
    from torchyard_trainer.compress.hf_student import keep_layers
    from torchyard_trainer.env import ConfigError

    with pytest.raises(ConfigError, match=says.replace("[", r"\[").replace("]", r"\]")):
        keep_layers(6, n_keep, keep)
