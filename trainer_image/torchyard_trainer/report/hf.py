"""A Hugging Face ``transformers.TrainerCallback`` on :class:`~torchyard_trainer.report.Reporter`:

    from torchyard_trainer.report.hf import TorchyardCallback
    trainer = Trainer(model=model, args=args, ..., callbacks=[TorchyardCallback()])

Every ``logging_steps`` the training loss and learning rate become a ``step`` report; an
evaluation's ``eval_loss``/``eval_accuracy`` (and any other ``eval_*``) become ``valLoss``/
``accuracy``; at the end of training the model is saved as the job's model version and the
result written. Imports transformers (this module only: ``torchyard_trainer.report`` does not).
"""

from __future__ import annotations

import math
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from torchyard_trainer.report import Reporter

EVAL_PREFIX = "eval_"
RENAMED = {"loss": "valLoss"}
"""Evaluation metrics under the names the built-in trainer gives them."""


def epoch_index(epoch: float | None) -> int | None:
    """Hugging Face's fractional epoch (1.5 = half-way through the second) as the built-in
    trainer's 0-based epoch index."""
    return None if epoch is None else max(0, math.ceil(epoch) - 1)


def eval_metrics(logs: dict[str, Any]) -> dict[str, Any]:
    """``eval_*`` entries of a log record, prefix off (``eval_loss`` is ``valLoss``); the
    runtime figures (``eval_runtime``, ``eval_*_per_second``) left out."""
    out = {}
    for key, value in logs.items():
        if not key.startswith(EVAL_PREFIX) or "runtime" in key or key.endswith("_per_second"):
            continue
        name = key[len(EVAL_PREFIX) :]
        out[RENAMED.get(name, name)] = value
    return out


class TorchyardCallback(TrainerCallback):
    """Reports a transformers ``Trainer`` run to torchyard (a no-op outside torchyard).
    ``save_model=False`` skips the model version (for a model too large for safetensors in one
    file, or one you save yourself with ``reporter.save_model``)."""

    def __init__(self, reporter: Reporter | None = None, save_model: bool = True) -> None:
        self.reporter = reporter or Reporter()
        self.save_model = save_model

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        epochs = math.ceil(args.num_train_epochs) if args.max_steps <= 0 else None
        self.reporter.start(total_steps=state.max_steps or None, epochs=epochs)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        logs = logs or {}
        if "loss" in logs:
            self.reporter.step(
                step=state.global_step,
                epoch=epoch_index(state.epoch),
                loss=logs["loss"],
                lr=logs.get("learning_rate"),
            )
        evals = eval_metrics(logs)
        if evals:
            self.reporter.evaluate(evals)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        model = kw.get("model")
        if self.save_model and model is not None:
            self.reporter.save_model(model)
        self.reporter.finish()


__all__ = ["TorchyardCallback", "epoch_index", "eval_metrics"]
