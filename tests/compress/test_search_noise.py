"""objective: latency on real CompressionJobs (issue 19): candidates that run the same kernels
are within noise of each other, and the smaller one on disk wins. Nothing here asserts a
speed: the assertions are on the decision path (the report's note, which trial won, and that
the reported latencies are the interleaved rounds' medians)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import pytest

from tests.compress.conftest import manifest, run_job

pytestmark = pytest.mark.worker

SAME_KERNELS = {
    # The case: two granularities of the same int8 kernels (perChannel stores a scale
    # per row, so it is the bigger file).
    "granularity": [{"quantize": {"method": "dynamicInt8", "granularity": "auto"}}],
    # Strictly the same kernels: magnitude pruning without fine-tuning leaves the dense layers
    # as they were, only zeros differ (the sparser one is the smaller file).
    "sparsity": [{"prune": {"method": "magnitude", "sparsity": 0.3, "candidates": [0.6],
                            "fineTuneEpochs": 0}}],
}


@pytest.mark.parametrize("case", sorted(SAME_KERNELS))
def test_latency_objective_same_kernels_chooses_by_size(
    case: str, teacher: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchyard_trainer.compress import timing

    rounds_seen: list[list[list[float]]] = []
    real = timing.interleaved

    def spy(*args: Any, **kwargs: Any) -> list[list[float]]:
        out = real(*args, **kwargs)  # the real measurement, recorded for the checks below
        rounds_seen.append(out)
        return out

    monkeypatch.setattr(timing, "interleaved", spy)
    doc = manifest(teacher, tmp_path / "store", SAME_KERNELS[case],
                   accuracyCriterion={"mode": "absolute", "tolerableLoss": 1.0},
                   objective="latency")
    result = run_job(doc, tmp_path / "out")
    rep, trials = result["report"], result["trials"]
    assert len(trials) == 2
    assert all(t["passed"] for t in trials)
    assert trials[0]["stats"]["bytes"] != trials[1]["stats"]["bytes"]

    notes = [w for w in rep["warnings"] if w.startswith("objective latency")]
    assert len(notes) == 1, rep["warnings"]
    card = (Path(result["model"]["uri"].removeprefix("file://")) / "report.md").read_text()
    if case == "granularity" and timing.NOISE_NOTE not in notes[0]:
        # perChannel multiplies by a scale per row where perTensor has one: on a loaded machine
        # the interleaved rounds can tell them apart (CI: 0.097 vs 0.105 ms, faster in 8/9
        # rounds), and then the faster one rightly wins. Which path is taken is the machine's
        # call, not the test's; either way the winner must be the one the note names.
        chosen = min(trials, key=lambda t: t["stats"]["latencyMs"])
        assert f"{chosen['name']} is clearly the fastest" in notes[0]
    else:
        assert timing.NOISE_NOTE in notes[0]
        chosen = min(trials, key=lambda t: t["stats"]["bytes"])
        assert f"{chosen['name']} is the smallest" in notes[0]
        assert timing.NOISE_NOTE in card
    assert rep["compressed"]["bytes"] == chosen["stats"]["bytes"]

    # One block of interleaved rounds (the source first, then the two candidates in trial
    # order), and a second one (in reverse order) exactly when the first showed a candidate
    # clearly faster; every reported latency is the median over the blocks' rounds, so the
    # speedup compares like with like.
    first = {t["name"]: rounds for t, rounds in zip(trials, rounds_seen[0][1:], strict=True)}
    assert len(rounds_seen) == (2 if timing.needs_confirmation(first) else 1)
    blocks = [rounds_seen[0], *(block[::-1] for block in rounds_seen[1:])]
    assert all(len(r) == timing.ROUNDS for block in blocks for r in block)
    source, *cands = [[t for block in blocks for t in block[i]] for i in range(3)]
    assert len(cands) == 2
    assert rep["baseline"]["latencyMs"] == round(statistics.median(source), 4)
    for trial, rounds in zip(trials, cands, strict=True):
        assert trial["stats"]["latencyMs"] == round(statistics.median(rounds), 4)
    assert rep["compressed"]["latencyMs"] == chosen["stats"]["latencyMs"]
    assert rep["ratios"]["speedup"] == round(
        rep["baseline"]["latencyMs"] / rep["compressed"]["latencyMs"], 4)


def test_size_objective_is_not_re_timed(
    teacher: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """objective: size never re-times the candidates (no latency note): the only interleaved
    timing is the winner beside the source, so that the report's speedup is like for like."""
    from torchyard_trainer.compress import timing

    real = timing.interleaved
    calls: list[int] = []

    def recording(models: list[Any], *args: Any, **kwargs: Any) -> list[list[float]]:
        calls.append(len(models))
        return real(models, *args, **kwargs)

    monkeypatch.setattr(timing, "interleaved", recording)
    doc = manifest(teacher, tmp_path / "store", SAME_KERNELS["sparsity"],
                   accuracyCriterion={"mode": "absolute", "tolerableLoss": 1.0},
                   objective="size")
    result = run_job(doc, tmp_path / "out")
    assert result["status"] == "Succeeded"
    assert len(result["trials"]) == 2
    assert calls == [2], "only the source and the winner are timed, once"
    assert not [w for w in result["report"]["warnings"] if w.startswith("objective latency")]


def _trial(name: str, metric: float, size: int, passed: bool) -> Any:
    from torch import nn

    from torchyard_trainer.compress.search import Candidate, TrialResult

    stats = {"accuracy": metric, "bytes": size, "latencyMs": 1.0}
    return TrialResult(Candidate((("q", name),)), nn.Identity(), {}, stats, passed, [], 0.0)


def test_pick_follows_the_metric_direction() -> None:
    """Perplexity and kl: lower is better, both for the tie-break among passing candidates of
    one size and for the closest candidate when none passes."""
    from torchyard_trainer.compress.search import pick

    low, high = _trial("a", 10.0, 100, True), _trial("b", 12.0, 100, True)
    assert pick([high, low], "size", lower_is_better=True) is low
    assert pick([high, low], "size") is high  # accuracy-like: higher wins the tie
    low.passed = high.passed = False
    assert pick([high, low], "size", lower_is_better=True) is low
    assert pick([high, low], "size") is high
