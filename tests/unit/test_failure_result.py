"""Which rank writes the failure result (torchyard_trainer.__main__._write_failure)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from torchyard.api.contract import ExitCode
from torchyard_trainer.__main__ import _write_failure
from torchyard_trainer.env import ConfigError


def _env(tmp_path: Path, rank: int) -> SimpleNamespace:
    return SimpleNamespace(rank=rank, result_file=tmp_path / "result.json", restart_count=0)


def test_another_rank_writes_an_invalid_jobs_result_when_rank_0_did_not(tmp_path: Path) -> None:
    # torchrun's agent stops the group at the first rank to exit: when rank 1 finds the
    # invalid job first, rank 0 may be stopped before it writes, and the reason was lost.
    _write_failure(_env(tmp_path, 1), ExitCode.CONFIG, ConfigError("spec.workers: bad"))  # type: ignore[arg-type]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["exitCode"] == ExitCode.CONFIG
    assert result["message"] == "spec.workers: bad"
    # rank 0's own result always wins
    _write_failure(_env(tmp_path, 0), ExitCode.CONFIG, ConfigError("from rank 0"))  # type: ignore[arg-type]
    assert json.loads((tmp_path / "result.json").read_text())["message"] == "from rank 0"
    # and another rank never replaces one that is there
    _write_failure(_env(tmp_path, 1), ExitCode.CONFIG, ConfigError("late"))  # type: ignore[arg-type]
    assert json.loads((tmp_path / "result.json").read_text())["message"] == "from rank 0"


def test_other_ranks_leave_other_failures_to_rank_0(tmp_path: Path) -> None:
    _write_failure(_env(tmp_path, 1), ExitCode.ERROR, RuntimeError("x"))  # type: ignore[arg-type]
    assert not (tmp_path / "result.json").exists()
