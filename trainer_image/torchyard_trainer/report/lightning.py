"""A Lightning ``Callback`` on :class:`~torchyard_trainer.report.Reporter`:

    from torchyard_trainer.report.lightning import TorchyardCallback
    trainer = lightning.Trainer(..., callbacks=[TorchyardCallback()])

Each training batch's loss (``training_step``'s returned loss) is a ``step`` report, every
``every_n_steps``; after each validation the logged ``val_loss``/``val_acc`` (or
``val_accuracy``) and any other ``val_*`` metric become ``valLoss``/``accuracy``/…; at the end
of ``fit`` the LightningModule is saved as the job's model version and the result written.
Imports ``lightning`` (or the older ``pytorch_lightning``) in this module only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - the older distribution name
    import pytorch_lightning as pl  # type: ignore[no-redef]

from torchyard_trainer.report import Reporter

VAL_PREFIX = "val_"
RENAMED = {"loss": "valLoss", "acc": "accuracy"}
"""Validation metrics under the names the built-in trainer gives them."""


def val_metrics(logged: Mapping[str, Any]) -> dict[str, Any]:
    """``val_*`` entries of Lightning's callback metrics, prefix off (``val_loss`` is
    ``valLoss``, ``val_acc`` is ``accuracy``)."""
    out = {}
    for key, value in logged.items():
        if key.startswith(VAL_PREFIX):
            name = key[len(VAL_PREFIX) :]
            out[RENAMED.get(name, name)] = value
    return out


def batch_loss(outputs: Any) -> Any:
    """The loss ``training_step`` returned (a tensor, or a mapping with ``loss``)."""
    if isinstance(outputs, Mapping):
        return outputs.get("loss")
    return outputs


class TorchyardCallback(pl.Callback):
    """Reports a Lightning ``fit`` to torchyard (a no-op outside torchyard)."""

    def __init__(
        self, reporter: Reporter | None = None, save_model: bool = True, every_n_steps: int = 1
    ) -> None:
        self.reporter = reporter or Reporter()
        self.save_model = save_model
        self.every_n_steps = max(1, every_n_steps)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        total = trainer.estimated_stepping_batches
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        self.reporter.start(
            total_steps=int(total) if total != float("inf") else None, epochs=epochs
        )

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = int(trainer.global_step)
        if step % self.every_n_steps == 0:
            self.reporter.step(step=step, epoch=trainer.current_epoch, loss=batch_loss(outputs))

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        metrics = val_metrics(trainer.callback_metrics)
        if metrics:
            self.reporter.evaluate(metrics)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if self.save_model:
            self.reporter.save_model(pl_module)
        self.reporter.finish()


__all__ = ["TorchyardCallback", "batch_loss", "val_metrics"]
