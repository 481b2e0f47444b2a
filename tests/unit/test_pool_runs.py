"""bench/pool_runs.py: the pooled ratio and its interval (pure arithmetic on run lists)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pool_runs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pool_runs", ROOT / "bench" / "pool_runs.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["pool_runs"] = module
    spec.loader.exec_module(module)
    return module


def test_files_weigh_equally_whatever_their_jobs_per_s(pool_runs: ModuleType) -> None:
    # 1.1x in a slow file and 1/1.1x in a fast one pool to level, not to the fast file's side.
    point, lo, hi = pool_runs.pooled_ratio(
        [([11.0, 11.0], [10.0, 10.0]), ([100.0, 100.0], [110.0, 110.0])], resamples=200
    )
    assert point == pytest.approx(1.0)
    assert lo == pytest.approx(1.0)
    assert hi == pytest.approx(1.0)


def test_interval_spans_the_spread_of_the_runs(pool_runs: ModuleType) -> None:
    level = [([27.0, 29.0], [28.5, 27.5]), ([13.0, 15.0], [14.5, 13.5])]
    point, lo, hi = pool_runs.pooled_ratio(level, resamples=2000)
    assert lo < 1.0 < hi
    assert lo < point < hi
    ahead = [([40.0, 41.0], [28.5, 27.5]), ([20.0, 21.0], [14.5, 13.5])]
    _, lo_ahead, _ = pool_runs.pooled_ratio(ahead, resamples=2000)
    assert lo_ahead > 1.3


def test_same_files_same_interval(pool_runs: ModuleType) -> None:
    runs = [([27.0, 29.0, 26.0], [28.5, 27.5]), ([13.0, 5.0], [14.5, 13.5, 12.0])]
    assert pool_runs.pooled_ratio(runs, resamples=500) == pool_runs.pooled_ratio(
        runs, resamples=500
    )


def test_pool_reads_both_harnesses_and_the_first_slot(
    pool_runs: ModuleType, tmp_path: Path
) -> None:
    scale = {  # bench/operator_scale.py: "operator", operator_jobs_per_s
        "jobs": 2000,
        "workers": 1,
        "runs": [
            {"operator": "baseline", "jobs_per_s": 28.0, "operator_jobs_per_s": 29.0},
            {"operator": "torchyard", "jobs_per_s": 27.0, "operator_jobs_per_s": 50.0},
        ],
    }
    compare = {  # bench/kubeflow_compare.py: "system", child_jobs_per_s, a third system
        "jobs": 1000,
        "workers": 4,
        "runs": [
            {"system": "torchyard", "jobs_per_s": 15.0, "child_jobs_per_s": 35.0},
            {"system": "trainer", "jobs_per_s": 9.0, "child_jobs_per_s": 10.0},
            {"system": "baseline", "jobs_per_s": 15.0, "child_jobs_per_s": 17.5},
        ],
    }
    paths = []
    for name, data in (("scale.json", scale), ("compare.json", compare)):
        paths.append(tmp_path / name)
        paths[-1].write_text(json.dumps(data))
    out = pool_runs.pool(paths, "torchyard", "baseline")
    assert [f["first"] for f in out["files"]] == ["baseline", "torchyard"]
    own = out["pooled"]["jobs/s to the child created (the operator's own share)"]
    assert own["ratio"] == pytest.approx((50 / 29 * 35 / 17.5) ** 0.5, abs=1e-3)
    assert own["runs"] == 4
    assert set(own["by_first_slot"]) == {"torchyard first", "baseline first"}
    assert "| scale.json | 2000 x 1 | baseline |" in pool_runs.section(out)
