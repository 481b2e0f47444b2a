"""Knowledge distillation (Hinton et al.): the job's model is the student, trained with

    loss = alpha · T² · KL(softmax(teacher/T) ‖ softmax(student/T)) + (1 − alpha) · CE(student, y)

The teacher (a model version, another TrainingJob's output, or a model + checkpoint) runs in eval
mode under no_grad. With ``transferSet: unlabeled`` the samples whose labels were withheld
(``data.labeledSamples``) join the training set with label −1: they contribute only the soft term.
The loss is ``kd.kd_loss``, the same as the CompressionJob's distill step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchyard_trainer.artifacts import find_by_job, load_weights, read_card, resolve_version_dir
from torchyard_trainer.data import Dataset
from torchyard_trainer.env import ConfigError
from torchyard_trainer.kd import UNLABELED, kd_loss
from torchyard_trainer.models import build_model
from torchyard_trainer.storage import fetch, is_remote, local_path
from torchyard_trainer.train.base import Runtime
from torchyard_trainer.train.ddp import DDPStrategy
from torchyard_trainer.train.run import run_training, setup_data


def resolve_teacher(rt: Runtime, ds: Dataset) -> tuple[nn.Module, dict[str, Any]]:
    """Build the teacher and load its weights; returns (teacher, lineage)."""
    from torchyard.api.common import ModelSpec

    teacher = rt.distillation.teacher
    cache = rt.env.output_dir / "cache"
    if teacher.model is not None:
        if not teacher.model.checkpoint:
            raise ConfigError("distillation.teacher.model needs checkpoint")
        model = build_model(teacher.model, ds.info)
        load_weights(fetch(teacher.model.checkpoint, rt.env.pvc_root, cache), model)
        return model, {"teacher": {"checkpoint": teacher.model.checkpoint}}
    if teacher.model_ref is not None:
        store_uri = teacher.model_ref.storage or rt.model_store
        if is_remote(store_uri):
            raise ConfigError("teacher lookup by name needs a file:// or pvc:// model store")
        store = local_path(store_uri, rt.env.pvc_root)
        vdir = resolve_version_dir(store, teacher.model_ref.name, teacher.model_ref.version)
    else:
        # trainingJobRef: the newest version whose lineage names that job, in the same store
        # (the operator may resolve it into a modelRef in the resolved spec instead)
        if is_remote(rt.model_store):
            raise ConfigError("teacher lookup by job needs a file:// or pvc:// model store")
        store = local_path(rt.model_store, rt.env.pvc_root)
        if teacher.training_job_ref is None:
            raise ConfigError(
                "spec.distillation.teacher needs one of model, modelRef, trainingJobRef"
            )
        found = find_by_job(store, teacher.training_job_ref)
        if found is None:
            raise ConfigError(
                f"no model version produced by TrainingJob {teacher.training_job_ref!r} under "
                f"{store}"
            )
        vdir = found
    card = read_card(vdir)
    model = build_model(ModelSpec.model_validate(card["model"]), ds.info)
    load_weights(Path(vdir), model)
    ref = {
        "name": card.get("name"),
        "version": card.get("version"),
        "uri": card.get("uri"),
        "sha256": card.get("sha256"),
    }
    return model, {"teacher": ref}


class DistillStrategy(DDPStrategy):
    """DDP training of the student against the frozen teacher's soft targets."""

    def __init__(self, rt: Runtime, ds: Dataset) -> None:
        super().__init__(rt, ds)
        cfg = rt.distillation
        teacher, self._lineage = resolve_teacher(rt, ds)
        self.teacher = teacher.to(rt.device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.temperature = float(cfg.temperature)
        self.alpha = float(cfg.alpha)
        self.transfer = cfg.transfer_set
        self._lineage["distillation"] = {
            "temperature": self.temperature,
            "alpha": self.alpha,
            "transferSet": self.transfer,
        }

    def train_tensors(self, ds: Dataset) -> tuple[torch.Tensor, ...]:
        if self.transfer == "unlabeled" and ds.unlabeled_x is not None and len(ds.unlabeled_x):
            x = torch.cat([ds.train_x, ds.unlabeled_x])
            y = torch.cat(
                [ds.train_y, torch.full((len(ds.unlabeled_x),), UNLABELED, dtype=ds.train_y.dtype)]
            )
            return x, y
        return ds.train_x, ds.train_y

    def compute_loss(self, out: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        with torch.no_grad():
            t_out = self.teacher(batch[0])
        return kd_loss(out, t_out, batch[1], self.temperature, self.alpha)

    def lineage(self) -> dict[str, Any]:
        return self._lineage


def run(rt: Runtime) -> dict[str, Any]:
    ds = setup_data(rt)
    return run_training(rt, ds, DistillStrategy(rt, ds))
