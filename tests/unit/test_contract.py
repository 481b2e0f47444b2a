"""The operator↔worker contract (torchyard.api.contract): exit codes and the retry rule, URI →
path and the checkpoint-dir rule, as the operator, `torchyard run` and the worker all apply them."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchyard.api.common import RunPolicy
from torchyard.api.contract import (
    ExitCode,
    StorageURIError,
    checkpoint_dir,
    exit_code_of_returncode,
    is_retryable,
    local_path,
    permanent_exit_codes,
    pvc_claim,
)

PVC = Path("/mnt/torchyard")


def _policy(**kw: object) -> RunPolicy:
    return RunPolicy.model_validate(kw)


def test_signals_retry_and_the_workloads_own_verdict_does_not() -> None:
    policy = _policy()
    assert is_retryable(137, policy)  # OOM kill
    assert is_retryable(ExitCode.PEER_LOST, policy)
    assert not is_retryable(ExitCode.CONFIG, policy)
    assert not is_retryable(ExitCode.ERROR, policy)
    assert is_retryable(None, policy)  # evicted / deleted: not the workload's verdict
    assert is_retryable(0, policy)


def test_retry_policy_overrides() -> None:
    assert is_retryable(3, _policy(retryableExitCodes=[3]))
    assert 3 not in permanent_exit_codes(_policy(retryableExitCodes=[3]))
    assert permanent_exit_codes(_policy()) == list(range(1, 128))
    assert not is_retryable(137, _policy(retryPolicy="Never"))
    assert is_retryable(ExitCode.CONFIG, _policy(retryPolicy="OnFailure"))


def test_returncode_of_a_signalled_process_is_128_plus_the_signal() -> None:
    assert exit_code_of_returncode(-9) == 137
    assert exit_code_of_returncode(2) == 2


def test_uri_to_path() -> None:
    assert local_path("file:///data/x", PVC) == Path("/data/x")
    assert local_path("/data/x", PVC) == Path("/data/x")
    assert local_path("pvc://claim/sub/dir", PVC) == PVC / "claim" / "sub" / "dir"
    assert pvc_claim("pvc://claim/sub") == "claim"
    assert pvc_claim("file:///x") is None
    with pytest.raises(StorageURIError, match="s3://b/k"):
        local_path("s3://b/k", PVC)


def test_checkpoint_dir_rule() -> None:
    kw = {"namespace": "ns", "job_name": "j", "pvc_root": PVC}
    assert checkpoint_dir(checkpoint_storage="pvc://c/ck", output_storage=None, **kw) == (
        PVC / "c" / "ck"
    )
    assert checkpoint_dir(checkpoint_storage=None, output_storage="file:///store", **kw) == (
        Path("/store/.checkpoints/ns/j")
    )
    assert checkpoint_dir(checkpoint_storage=None, output_storage="s3://b/m", **kw) is None
    assert checkpoint_dir(checkpoint_storage=None, output_storage=None, **kw) is None
    with pytest.raises(StorageURIError, match=r"checkpoint\.storage"):
        checkpoint_dir(checkpoint_storage="s3://b/ck", output_storage=None, **kw)


def test_worker_exits_config_on_a_spec_error() -> None:
    """A bad storage URI is a spec error, like the trainer's ConfigError: exit 2, no retry."""
    runtime = pytest.importorskip("torchyard_trainer.runtime")
    from torchyard_trainer.env import ConfigError

    assert runtime.exit_code_for(StorageURIError("s3://x")) == ExitCode.CONFIG
    assert runtime.exit_code_for(ConfigError("bad")) == ExitCode.CONFIG
    assert runtime.exit_code_for(ValueError("bad")) == ExitCode.ERROR
    assert runtime.exit_code_for(KeyboardInterrupt()) == ExitCode.INTERRUPTED
