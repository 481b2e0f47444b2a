"""Reporting from your own training script: status, progress, metrics and a model version, as
the built-in trainer reports them.

::

    from torchyard_trainer.report import Reporter

    reporter = Reporter(total_steps=1000, epochs=10)
    for step in ...:
        reporter.step(step=step, epoch=epoch, loss=loss.item(), metrics={"accuracy": acc})
    reporter.save_model(model)           # an nn.Module, a state dict or a .safetensors/.pt file
    reporter.finish(metrics={"accuracy": acc})

What it writes follows the operator ↔ worker contract (``torchyard.api.contract``):

* **progress** — rank 0 appends ``start``/``step``/``eval``/``end`` events to
  ``$TORCHYARD_OUTPUT_DIR/progress.jsonl`` (what `torchyard run` shows);
* **metrics** — every rank serves ``$TORCHYARD_METRICS_PORT + LOCAL_RANK`` with the built-in
  trainer's metric names and torchyard_job/namespace/rank labels
  (``torchyard_trainer.metrics``), so the chart's dashboards and PodMonitor work unchanged;
* **a model version** — :meth:`Reporter.save_model` writes ``<store>/<modelName>/v<N>/`` with
  ``model.safetensors`` and ``model-card.json`` (``torchyard_trainer.artifacts``), the store
  and name from the job's ``spec.output``;
* **the result** — :meth:`Reporter.finish` writes ``$TORCHYARD_RESULT_FILE`` (the pod's
  termination message), which the operator turns into the job's ``status.progress`` and
  ``status.model``.

Safe everywhere: outside torchyard (no ``TORCHYARD_*`` environment) every call is a no-op, and on
every rank but 0 only the rank's own metrics are served. Importing this module needs neither
torch nor prometheus-client: torch is imported by :meth:`Reporter.save_model` only, the metrics
endpoint only when ``TORCHYARD_METRICS_PORT`` is set and prometheus-client is installed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from torchyard.api.contract import DEFAULT_PVC_ROOT, Env, ExitCode
from torchyard_trainer.result import write_result

if TYPE_CHECKING:
    from torchyard_trainer.metrics import WorkerMetrics

log = logging.getLogger("torchyard_trainer.report")

STRATEGY = "command"
"""The ``strategy`` a user script's result and model card carry (the built-in trainer's say
ddp, pipeline or distillation)."""
GAUGE_OF_METRIC = {"accuracy": "accuracy", "valLoss": "val_loss", "val_loss": "val_loss"}
"""Keys of ``metrics`` that have a gauge of their own (and make an ``eval`` event)."""
MODEL_FIELDS = ("name", "version", "uri", "sha256")


def _number(value: Any) -> float | None:
    """``value`` as a finite float (a 0-d tensor included), else None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _clean(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """The finite numbers of ``metrics`` (JSON and the status take nothing else)."""
    out = {}
    for key, value in (metrics or {}).items():
        number = _number(value)
        if number is not None:
            out[str(key)] = number
    return out


@dataclass(frozen=True)
class JobContext:
    """What the reporter reads from the pod's environment and the job's spec."""

    rank: int
    local_rank: int
    world_size: int
    output_dir: Path
    result_file: Path
    metrics_port: int | None
    job_name: str
    namespace: str
    restart_count: int
    pvc_root: Path
    spec: dict[str, Any]
    """The resolved TrainingJob manifest (``$TORCHYARD_SPEC``; empty when unreadable)."""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> JobContext | None:
        """The context, or None outside torchyard (none of the contract's variables set)."""
        markers = (Env.SPEC, Env.RESULT_FILE, Env.OUTPUT_DIR)
        if not any(environ.get(name) for name in markers):
            return None
        output_dir = Path(environ.get(Env.OUTPUT_DIR) or "torchyard-output").absolute()
        spec = _read_manifest(environ.get(Env.SPEC))
        meta = spec.get("metadata") or {}
        port = environ.get(Env.METRICS_PORT)
        return cls(
            rank=int(environ.get(Env.RANK) or 0),
            local_rank=int(environ.get(Env.LOCAL_RANK) or 0),
            world_size=int(environ.get(Env.WORLD_SIZE) or 1),
            output_dir=output_dir,
            result_file=Path(environ.get(Env.RESULT_FILE) or output_dir / "result.json"),
            metrics_port=int(port) if port else None,
            job_name=environ.get(Env.JOB_NAME) or str(meta.get("name") or ""),
            namespace=environ.get(Env.NAMESPACE) or str(meta.get("namespace") or "default"),
            restart_count=int(environ.get(Env.RESTART_COUNT) or 0),
            pvc_root=Path(environ.get(Env.PVC_ROOT) or DEFAULT_PVC_ROOT),
            spec=spec,
        )

    @property
    def job_spec(self) -> dict[str, Any]:
        return dict(self.spec.get("spec") or {})

    @property
    def model_store(self) -> str:
        """``spec.output.storage``, else the pod's own folder (the built-in trainer's rule)."""
        output = self.job_spec.get("output") or {}
        return str(output.get("storage") or f"file://{self.output_dir / 'models'}")

    @property
    def model_name(self) -> str:
        output = self.job_spec.get("output") or {}
        return str(output.get("modelName") or self.job_name or "model")


def _read_manifest(path: str | None) -> dict[str, Any]:
    """The job manifest at ``path`` (YAML or JSON); empty when there is none or it is
    unreadable — reporting must never fail a training that works."""
    if not path:
        return {}
    try:
        text = Path(path).read_text()
        if path.endswith(".json"):
            doc = json.loads(text)
        else:
            import yaml

            doc = yaml.safe_load(text)
    except (OSError, ValueError, ImportError) as exc:
        log.warning("torchyard report: cannot read the job spec %s: %s", path, exc)
        return {}
    except Exception as exc:  # a YAML error: same verdict, without importing yaml's types
        log.warning("torchyard report: cannot parse the job spec %s: %s", path, exc)
        return {}
    return doc if isinstance(doc, dict) else {}


def _start_metrics(ctx: JobContext) -> WorkerMetrics | None:
    """The built-in trainer's gauges (same names, same labels), served on this rank's port;
    progress.jsonl on rank 0. None without prometheus-client."""
    try:
        from torchyard_trainer.metrics import WorkerMetrics
    except ImportError:
        log.warning("torchyard report: prometheus-client is not installed; no /metrics")
        return None
    metrics = WorkerMetrics(
        job=ctx.job_name,
        namespace=ctx.namespace,
        rank=ctx.rank,
        port=None if ctx.metrics_port is None else ctx.metrics_port + ctx.local_rank,
        jsonl=ctx.output_dir / "progress.jsonl" if ctx.rank == 0 else None,
    )
    metrics.set(metrics.restarts, ctx.restart_count)
    return metrics


class Reporter:
    """Reports a user script's training as the built-in trainer reports its own.

    Create one per process (every rank); ``total_steps`` and ``epochs`` make progress show as
    ``step s/N · epoch e/E``. Every method is a no-op outside torchyard, and the ones that write
    files (:meth:`save_model`, :meth:`finish`) are no-ops on every rank but 0. Usable as a
    context manager: an exception leaving the block writes a failure result (and is re-raised).
    """

    def __init__(
        self,
        total_steps: int | None = None,
        epochs: int | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.context = JobContext.from_environ(os.environ if environ is None else environ)
        self.total_steps, self.epochs = total_steps, epochs
        self.started = time.time()
        self.last_step = 0
        self.last_epoch: int | None = None
        self.last_loss: float | None = None
        self.last_metrics: dict[str, float] = {}
        self.model: dict[str, Any] | None = None
        self.finished = False
        self._step_clock: tuple[int, float] | None = None
        self._metrics = _start_metrics(self.context) if self.context else None
        self._announced = False

    # -----------------------------------------------------------------------------------------
    # who writes

    @property
    def active(self) -> bool:
        """Whether this process runs under torchyard (else every call is a no-op)."""
        return self.context is not None

    @property
    def rank(self) -> int:
        return self.context.rank if self.context else 0

    @property
    def is_writer(self) -> bool:
        """Rank 0 under torchyard: the one process that writes the result and the model."""
        return self.context is not None and self.context.rank == 0

    # -----------------------------------------------------------------------------------------
    # progress and metrics

    def start(self, total_steps: int | None = None, epochs: int | None = None) -> None:
        """The ``start`` event (sent by the first :meth:`step` when not called)."""
        self.total_steps = total_steps if total_steps is not None else self.total_steps
        self.epochs = epochs if epochs is not None else self.epochs
        self._announced = True
        ctx = self.context
        if self._metrics is None or ctx is None:
            return
        self._metrics.event(
            "start",
            totalSteps=self.total_steps,
            epochs=self.epochs,
            startStep=self.last_step,
            restarts=ctx.restart_count,
            worldSize=ctx.world_size,
            strategy=STRATEGY,
        )

    def step(
        self,
        step: int,
        epoch: int | None = None,
        loss: Any = None,
        metrics: Mapping[str, Any] | None = None,
        lr: float | None = None,
        samples_per_second: float | None = None,
        tokens_per_second: float | None = None,
    ) -> None:
        """Training progress after optimizer step ``step`` (counted from 1; ``epoch`` counted
        from 0, as the built-in trainer counts them). ``loss`` may be a 0-d tensor; ``metrics``
        with ``accuracy`` or ``valLoss`` also set those gauges (and send an ``eval`` event).
        Step time is measured between calls."""
        if not self._announced:
            self.start()
        self.last_step, self.last_epoch = int(step), epoch if epoch is None else int(epoch)
        self.last_loss = _number(loss) if loss is not None else self.last_loss
        clean = _clean(metrics)
        self.last_metrics.update(clean)
        step_time = self._step_time(int(step))
        m = self._metrics
        if m is None:
            return
        for gauge, value in (
            (m.step, float(step)),
            (m.epoch, None if epoch is None else float(epoch)),
            (m.loss, self.last_loss if loss is not None else None),
            (m.lr, _number(lr)),
            (m.samples_ps, _number(samples_per_second)),
            (m.tokens_ps, _number(tokens_per_second)),
            (m.step_time, step_time),
        ):
            m.set(gauge, value)
        if step_time is not None:
            m.observe(m.step_hist, step_time)
        m.event(
            "step",
            epoch=epoch,
            step=int(step),
            totalSteps=self.total_steps,
            loss=self.last_loss if loss is not None else None,
            lr=_number(lr),
            samplesPerSecond=_number(samples_per_second),
            tokensPerSecond=_number(tokens_per_second),
            stepTime=None if step_time is None else round(step_time, 6),
        )
        self._evaluation(clean)

    def _step_time(self, step: int) -> float | None:
        """Mean seconds per step since the previous call (None on the first)."""
        now, previous = time.perf_counter(), self._step_clock
        self._step_clock = (step, now)
        if previous is None or step <= previous[0]:
            return None
        return (now - previous[1]) / (step - previous[0])

    def _evaluation(self, metrics: dict[str, float]) -> None:
        """Gauges and an ``eval`` event for the metrics that have them."""
        m = self._metrics
        known = {key: value for key, value in metrics.items() if key in GAUGE_OF_METRIC}
        if m is None or not known:
            return
        for key, value in known.items():
            m.set(getattr(m, GAUGE_OF_METRIC[key]), value)
        m.event(
            "eval",
            epoch=self.last_epoch,
            step=self.last_step,
            accuracy=known.get("accuracy"),
            valLoss=known.get("valLoss", known.get("val_loss")),
        )

    def evaluate(self, metrics: Mapping[str, Any]) -> None:
        """Evaluation results between steps (``accuracy``, ``valLoss`` and any others)."""
        clean = _clean(metrics)
        self.last_metrics.update(clean)
        self._evaluation(clean)

    # -----------------------------------------------------------------------------------------
    # the model version and the result

    def save_model(
        self, model: Any, metrics: Mapping[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """Write ``model`` as the job's next model version; returns its card on rank 0 (None
        elsewhere and outside torchyard). ``model``: an ``nn.Module`` (a DDP/FSDP wrapper's
        ``.module`` is taken), a state dict of tensors, or the path of a ``.safetensors``
        file or of a ``torch.save``'d state dict."""
        ctx = self.context
        if ctx is None or ctx.rank != 0:
            return None
        from torchyard_trainer.report.model import state_dict_of, write_version

        self.last_metrics.update(_clean(metrics))
        card = write_version(ctx, state_dict_of(model), self._card_metrics(), self.last_step)
        self.model = {k: card[k] for k in MODEL_FIELDS}
        log.info("torchyard report: model version %s v%s", card["name"], card["version"])
        return card

    def _card_metrics(self) -> dict[str, float]:
        loss = {} if self.last_loss is None else {"loss": self.last_loss}
        return {**loss, **self.last_metrics}

    def result(self, status: str = "Succeeded") -> dict[str, Any]:
        """The result document (the built-in trainer's fields; ``strategy`` is "command")."""
        ctx = self.context
        metrics = self._card_metrics()
        epoch = self.epochs if self.epochs is not None else self.last_epoch
        doc: dict[str, Any] = {
            "status": status,
            "job": ctx.job_name if ctx else "",
            "strategy": STRATEGY,
            "step": self.last_step,
            "totalSteps": self.total_steps,
            "epoch": epoch,
            "metrics": metrics,
            "model": None if self.model is None else {**self.model, "metrics": metrics},
            "restarts": ctx.restart_count if ctx else 0,
            "worldSize": ctx.world_size if ctx else 1,
            "durationSeconds": round(time.time() - self.started, 3),
        }
        if ctx is not None:
            doc["progressLog"] = str(ctx.output_dir / "progress.jsonl")
        return {k: v for k, v in doc.items() if v is not None}

    def finish(
        self, metrics: Mapping[str, Any] | None = None, status: str = "Succeeded"
    ) -> dict[str, Any] | None:
        """The end: rank 0 writes the result file and the ``end`` event; every rank stops its
        metrics endpoint. Returns the result on rank 0 (None elsewhere and outside torchyard).
        Call it once, after :meth:`save_model`."""
        self.last_metrics.update(_clean(metrics))
        doc = self.result(status) if self.is_writer else None
        if doc is not None and self.context is not None:
            write_result(self.context.result_file, doc)
            if self._metrics is not None:
                self._metrics.event(
                    "end", status=status, metrics=doc["metrics"], model=doc.get("model")
                )
        self.close()
        return doc

    def fail(self, exc: BaseException, exit_code: int = ExitCode.ERROR) -> None:
        """A failure record in the result file (rank 0), as the built-in trainer writes one."""
        if self.is_writer and self.context is not None:
            write_result(
                self.context.result_file,
                {
                    "status": "Failed",
                    "exitCode": exit_code,
                    "retryable": exit_code >= ExitCode.SIGNALS_FROM,
                    "reason": type(exc).__name__,
                    "message": str(exc)[:2500],  # the termination message holds 4 KiB
                    "restarts": self.context.restart_count,
                },
            )
        self.close()

    def close(self) -> None:
        """Stop the metrics endpoint and close the progress log (idempotent)."""
        self.finished = True
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None

    def __enter__(self) -> Reporter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and not self.finished:
            code = ExitCode.INTERRUPTED if isinstance(exc, KeyboardInterrupt) else ExitCode.ERROR
            self.fail(exc, code)
        else:
            self.close()


__all__ = ["JobContext", "Reporter"]
