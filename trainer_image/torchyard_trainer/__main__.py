"""Entry point: ``torchrun [...] -m torchyard_trainer`` (or ``python -m torchyard_trainer`` for
one process). Reads the manifest at ``$TORCHYARD_SPEC`` and runs it: a TrainingJob's strategy
(``train/``) or a CompressionJob (``compress/``).

Exit codes: :class:`torchyard.api.contract.ExitCode` — 0 ok, 1 unexpected error, 2 invalid spec
or environment, 3 no candidate passed a CompressionJob's accuracy gate, 130 interrupted, 200 a
peer rank was lost; a rank killed by signal N ends with 128 + N (OOM/SIGKILL 137). 1–127 are
permanent, ≥ 128 retryable (``runPolicy.retryableExitCodes`` moves codes below 128). On an
error rank 0 writes a failure record to the result file (see ``runtime.exit_code_for``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from torchyard.api import CompressionJob, TrainingJob
from torchyard.api.contract import Env, ExitCode
from torchyard_trainer.env import ConfigError, WorkerEnv
from torchyard_trainer.runtime import exit_code_for

log = logging.getLogger("torchyard_trainer")


def load_job(path: Path) -> TrainingJob | CompressionJob:
    """Parse and validate the manifest (YAML or JSON) with torchyard's API models."""
    import yaml
    from pydantic import ValidationError

    if not path.is_file():
        raise ConfigError(f"TORCHYARD_SPEC={path} does not exist")
    text = path.read_text()
    try:
        doc = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid YAML/JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected one manifest object")
    kinds: dict[str, type[TrainingJob] | type[CompressionJob]] = {
        "TrainingJob": TrainingJob,
        "CompressionJob": CompressionJob,
    }
    kind = doc.get("kind")
    if kind not in kinds:
        raise ConfigError(f"{path}: kind {kind!r} is neither TrainingJob nor CompressionJob")
    try:
        return kinds[kind].model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid {kind}:\n{exc}") from exc


def run(env: WorkerEnv) -> dict[str, Any]:
    """Run the job of ``$TORCHYARD_SPEC`` (rank 0 returns its result)."""
    if env.spec_path is None:
        raise ConfigError("TORCHYARD_SPEC is not set (path of the job manifest)")
    job = load_job(env.spec_path)
    if isinstance(job, CompressionJob):
        # same env contract, same result file (see compress/runner.py)
        from torchyard_trainer.compress import run_job

        return dict(run_job(env, job))
    from torchyard_trainer.train.run import build_runtime

    rt = build_runtime(env, job)
    try:
        if job.spec.strategy == "ddp":
            from torchyard_trainer.train import ddp as mod
        elif job.spec.strategy == "pipeline":
            from torchyard_trainer.train import pipeline as mod  # type: ignore[no-redef]
        elif job.spec.strategy == "distillation":
            from torchyard_trainer.train import distill as mod  # type: ignore[no-redef]
        else:
            raise ConfigError(f"unknown strategy {job.spec.strategy!r}")
        return mod.run(rt)
    finally:
        rt.metrics.close()


def _write_failure(env: WorkerEnv, code: int, exc: BaseException) -> None:
    """Rank 0's failure result. An invalid job (exit 2) is found alike by every rank, and
    torchrun's agent stops the group at the first rank to exit: when that is not rank 0, rank
    0 is stopped before it writes, and the reason would be lost. So another rank writes an
    invalid job's result too, where none is there yet, and only by an atomic replace (never
    in place: ``/dev/termination-log`` is rank 0's alone)."""
    from torchyard_trainer.artifacts import write_result

    result = {
        "status": "Failed",
        "exitCode": code,
        "retryable": code >= ExitCode.SIGNALS_FROM,
        "reason": type(exc).__name__,
        "message": str(exc)[:2500],  # the termination message holds 4 KiB
        "restarts": env.restart_count,
    }
    with contextlib.suppress(OSError):
        if env.rank == 0:
            write_result(env.result_file, result)
        elif code == ExitCode.CONFIG and not env.result_file.exists():
            write_result(env.result_file, result, in_place=False)


def main() -> int:
    logging.basicConfig(
        level=os.environ.get(Env.LOG_LEVEL, "INFO"),
        format=f"%(asctime)s rank{os.environ.get('RANK', '0')} %(levelname)s %(message)s",
    )
    try:
        env = WorkerEnv.from_environ()
    except ConfigError as exc:
        print(f"torchyard_trainer: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    try:
        run(env)
        code = ExitCode.OK
    except KeyboardInterrupt as exc:
        code = exit_code_for(exc)
    except Exception as exc:
        code = exit_code_for(exc)
        if code == ExitCode.CONFIG:
            log.error("invalid job: %s", exc)
        elif code == ExitCode.PREEMPTED:
            log.warning("%s; exiting %d for a group restart", exc, code)
        elif code == ExitCode.PEER_LOST:
            log.error("a peer rank failed (%s); exiting for a group restart", exc)
        else:
            traceback.print_exc()
        _write_failure(env, code, exc)
    finally:
        try:
            import torch.distributed as dist

            if dist.is_initialized() and code == ExitCode.OK:
                dist.destroy_process_group()
        except Exception:
            pass
    return code


if __name__ == "__main__":
    sys.exit(main())
