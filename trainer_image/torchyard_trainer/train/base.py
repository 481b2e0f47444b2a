"""The two things every training strategy is built from: the process's :class:`Runtime` (its
place in the job, decided once at start-up) and the :class:`Strategy` protocol the shared loop
drives. Kept apart from ``train.run`` so the loop's components can name them without an
import cycle."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from torchyard_trainer.data import Dataset
from torchyard_trainer.env import ConfigError, WorkerEnv
from torchyard_trainer.metrics import WorkerMetrics
from torchyard_trainer.parallel import ParallelDims

if TYPE_CHECKING:
    from torchyard.api.common import DataSpec, ModelSpec
    from torchyard.api.training import (
        DistillationSpec,
        PipelineSpec,
        TrainingJob,
        TrainingJobSpec,
    )


@dataclass
class Runtime:
    """The process's place in the job, decided once at start-up."""

    env: WorkerEnv
    """Environment contract values."""
    job: TrainingJob
    """The validated TrainingJob (torchyard.api)."""
    device: torch.device
    """cuda:<local rank> when CUDA is present, else cpu."""
    dims: ParallelDims
    """dp × pp layout, validated against WORLD_SIZE."""
    metrics: WorkerMetrics
    """Prometheus endpoint + JSONL log."""
    model_store: str
    """URI of the model store root (output.storage or $TORCHYARD_OUTPUT_DIR/models)."""
    model_name: str
    """Name of the produced model (output.modelName or the job name)."""
    checkpoint_root: Path
    """Local path of this job's checkpoint directory."""
    started: float = field(default_factory=time.time)
    """Wall-clock start of this attempt."""

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def spec(self) -> TrainingJobSpec:
        return self.job.spec

    @property
    def model_spec(self) -> ModelSpec:
        """``spec.model``, which the API requires unless a custom command replaces this trainer."""
        if self.spec.model is None:
            raise ConfigError("spec.model is required by the built-in trainer")
        return self.spec.model

    @property
    def data_spec(self) -> DataSpec:
        """``spec.data``, which the API requires unless a custom command replaces this trainer."""
        if self.spec.data is None:
            raise ConfigError("spec.data is required by the built-in trainer")
        return self.spec.data

    @property
    def pipeline(self) -> PipelineSpec:
        """``spec.pipeline``, which the API requires with ``strategy: pipeline``."""
        if self.spec.pipeline is None:
            raise ConfigError("spec.pipeline is required with strategy: pipeline")
        return self.spec.pipeline

    @property
    def distillation(self) -> DistillationSpec:
        """``spec.distillation``, which the API requires with ``strategy: distillation``."""
        if self.spec.distillation is None:
            raise ConfigError("spec.distillation is required with strategy: distillation")
        return self.spec.distillation

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        if self.device.type != "cuda":
            return None  # bf16/fp16 fall back to fp32 on CPU (documented in the API)
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.spec.precision)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        dtype = self.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)


class Strategy(Protocol):
    """One training strategy on top of the shared loop."""

    model: nn.Module
    """This rank's part of the model (full FQNs): what is checkpointed."""
    optimizer: torch.optim.Optimizer
    """Optimizer over ``model``'s parameters."""

    def train_tensors(self, ds: Dataset) -> tuple[torch.Tensor, ...]:
        """The tensors the training batches are cut from."""
        ...

    def train_step(self, micro: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, float]:
        """One optimizer step over ``micro`` (the accumulation micro-batches of this rank);
        returns (mean loss as a 0-d tensor, weight: 1 if this rank computed a loss else 0)."""
        ...

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """[loss sum, correct, count] of this rank's share of the evaluation set."""
        ...

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The whole model's weights on rank 0 (None elsewhere); a collective."""
        ...

    def lineage(self) -> dict[str, Any]:
        """Strategy-specific lineage for the model card (e.g. the teacher)."""
        ...
