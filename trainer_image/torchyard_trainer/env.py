"""The worker side of the operator ↔ worker environment contract (DESIGN §3)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from torchyard.api.contract import DEFAULT_PVC_ROOT, Env, SpecError


class ConfigError(SpecError):
    """A problem with the job spec or the environment: retrying cannot fix it
    (``ExitCode.CONFIG``)."""


def _int_env(environ: dict[str, str] | os._Environ[str], name: str, default: int) -> int:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer") from exc


@dataclass(frozen=True)
class WorkerEnv:
    """Everything a worker reads from its environment."""

    rank: int
    """Global rank (torchrun's RANK)."""
    world_size: int
    """Number of processes in the job (torchrun's WORLD_SIZE)."""
    local_rank: int
    """Rank within this pod (torchrun's LOCAL_RANK); picks the GPU and the metrics port."""
    local_world_size: int
    """Processes in this pod (torchrun's LOCAL_WORLD_SIZE)."""
    spec_path: Path | None
    """TORCHYARD_SPEC: path of the resolved job manifest (YAML or JSON)."""
    metrics_port: int | None
    """TORCHYARD_METRICS_PORT: base port of the prometheus endpoint; local rank r serves port+r."""
    job_name: str
    """TORCHYARD_JOB_NAME: job label of every metric (the manifest's name when unset)."""
    namespace: str
    """TORCHYARD_NAMESPACE: namespace label of every metric."""
    output_dir: Path
    """TORCHYARD_OUTPUT_DIR: where the worker writes its JSONL log, result file and default
    checkpoint/model stores (default ``./torchyard-output``)."""
    result_file: Path
    """TORCHYARD_RESULT_FILE: the result JSON rank 0 writes at the end (default
    ``$TORCHYARD_OUTPUT_DIR/result.json``)."""
    restart_count: int
    """TORCHYARD_RESTART_COUNT: whole-group restarts before this attempt."""
    pvc_root: Path
    """TORCHYARD_PVC_ROOT: where ``pvc://<claim>/<path>`` URIs are mounted (default
    /mnt/torchyard, where the operator mounts every claim)."""

    @property
    def is_distributed(self) -> bool:
        return Env.RANK in os.environ and Env.TORCHRUN_MASTER_ADDR in os.environ

    @classmethod
    def from_environ(cls, environ: dict[str, str] | None = None) -> WorkerEnv:
        env = os.environ if environ is None else environ
        output_dir = Path(env.get(Env.OUTPUT_DIR) or "torchyard-output").absolute()
        result_file = Path(env.get(Env.RESULT_FILE) or output_dir / "result.json")
        port = env.get(Env.METRICS_PORT)
        world = _int_env(env, Env.WORLD_SIZE, 1)
        rank = _int_env(env, Env.RANK, 0)
        if not 0 <= rank < world:
            raise ConfigError(f"RANK={rank} is outside WORLD_SIZE={world}")
        spec = env.get(Env.SPEC)
        return cls(
            rank=rank,
            world_size=world,
            local_rank=_int_env(env, Env.LOCAL_RANK, 0),
            local_world_size=_int_env(env, Env.LOCAL_WORLD_SIZE, 1),
            spec_path=Path(spec) if spec else None,
            metrics_port=int(port) if port else None,
            job_name=env.get(Env.JOB_NAME, ""),
            namespace=env.get(Env.NAMESPACE, "default"),
            output_dir=output_dir,
            result_file=result_file,
            restart_count=_int_env(env, Env.RESTART_COUNT, 0),
            pvc_root=Path(env.get(Env.PVC_ROOT) or DEFAULT_PVC_ROOT),
        )
