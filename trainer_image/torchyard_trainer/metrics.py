"""Worker metrics (DESIGN §4): a prometheus-client endpoint per process and a JSONL log.

Every process serves ``TORCHYARD_METRICS_PORT + LOCAL_RANK`` with the labels of :data:`LABELS`
(torchyard_job/namespace/rank; the job's name is not ``job``, which is Prometheus' scrape job:
docs/metrics.md, "Labels").
Rank 0 additionally appends progress events to ``$TORCHYARD_OUTPUT_DIR/progress.jsonl`` — one
JSON object per line, flushed at once, which ``torchyard run`` tails for its progress bar
(:class:`ProgressLog`; a CompressionJob writes the same events, one trial = one step):

    {"event": "start", "time": …, "totalSteps": N, "epochs": E, "stepsPerEpoch": S, …}
    {"event": "step",  "time": …, "epoch": e, "step": s, "loss": …, "lr": …, "samplesPerSecond": …,
     "tokensPerSecond": …, "stepTime": …, "dataWait": …, "mfu": …}
    {"event": "eval",  "time": …, "epoch": e, "step": s, "valLoss": …, "accuracy": …}
    {"event": "checkpoint", "time": …, "step": s, "uri": …, "seconds": …}
    {"event": "end",   "time": …, "status": "Succeeded", …}
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram, start_http_server

from torchyard_trainer import console
from torchyard_trainer.progress_post import ProgressPoster

log = logging.getLogger("torchyard_trainer")

# The TrainingJob's/CompressionJob's name. Not `job`: that is the scrape job Prometheus sets on
# every target (`<namespace>/<podmonitor>` under the Prometheus Operator), and exporting our own
# `job` either overwrote it (honor_labels) or turned into `exported_job`.
JOB_LABEL = "torchyard_job"
LABELS = (JOB_LABEL, "namespace", "rank")


class ProgressLog:
    """Rank 0's ``progress.jsonl``: appends one event per line (fields that are None left out),
    line-buffered so a reader sees every event at once. ``path`` None (other ranks): a no-op."""

    def __init__(self, path: Path | None) -> None:
        self._fh = None
        self._poster: ProgressPoster | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = path.open("a", buffering=1)
            self._poster = ProgressPoster.from_env()  # live progress to the operator, if asked

    def event(self, event: str, **fields: Any) -> None:
        if self._fh is None:
            return
        rec = {
            "event": event,
            "time": time.time(),
            **{k: v for k, v in fields.items() if v is not None},
        }
        self._fh.write(json.dumps(rec) + "\n")
        if self._poster is not None:
            self._poster.offer(rec)

    def close(self) -> None:
        if self._poster is not None:
            self._poster.close()
            self._poster = None
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> ProgressLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class WorkerMetrics:
    """Prometheus gauges/histograms of one worker process plus rank 0's JSONL progress log."""

    def __init__(
        self, job: str, namespace: str, rank: int, port: int | None, jsonl: Path | None
    ) -> None:
        self.registry = CollectorRegistry()
        self.labels = {JOB_LABEL: job, "namespace": namespace, "rank": str(rank)}
        r = self.registry

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, LABELS, registry=r)

        self.loss = gauge(
            "torchyard_worker_loss", "Training loss (mean over the last log interval)"
        )
        self.accuracy = gauge("torchyard_worker_accuracy", "Evaluation accuracy (0-1)")
        self.val_loss = gauge("torchyard_worker_validation_loss", "Evaluation loss")
        self.samples_ps = gauge(
            "torchyard_worker_samples_per_second", "Training samples/s (all ranks)"
        )
        self.tokens_ps = gauge(
            "torchyard_worker_tokens_per_second", "Training tokens/s (all ranks)"
        )
        self.step_time = gauge("torchyard_worker_step_time_seconds", "Mean optimizer step time")
        self.data_wait = gauge(
            "torchyard_worker_data_wait_seconds", "Mean time a step waited for data"
        )
        self.mfu = gauge(
            "torchyard_worker_mfu", "Model FLOPs utilisation (0-1), where the peak is known"
        )
        self.gpu_mem = gauge("torchyard_worker_gpu_memory_bytes", "Peak GPU memory allocated")
        self.step = gauge("torchyard_worker_step", "Optimizer steps done")
        self.total_steps = gauge(
            "torchyard_worker_total_steps",
            "Optimizer steps the run will do in all (the dashboard's ETA), where known",
        )
        self.last_step_time = gauge(
            "torchyard_worker_last_step_timestamp_seconds",
            "Unix time of the last reported optimizer step (the TorchyardJobStalled alert)",
        )
        self.epoch = gauge("torchyard_worker_epoch", "Current epoch")
        self.lr = gauge("torchyard_worker_learning_rate", "Current learning rate")
        self.ckpt = Histogram(
            "torchyard_worker_checkpoint_duration_seconds",
            "Checkpoint save duration (to commit)",
            LABELS,
            registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )
        self.step_hist = Histogram(
            "torchyard_worker_step_duration_seconds",
            "Optimizer step duration",
            LABELS,
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.restarts = gauge("torchyard_worker_restarts", "Group restarts before this attempt")
        self.server: Any = None
        if port is not None:
            try:
                self.server = start_http_server(port, registry=r)
            except OSError as exc:  # a busy port must not kill training
                log.warning("metrics port %s unavailable: %s", port, exc)
        self.progress = ProgressLog(jsonl)

    def set(self, gauge: Gauge, value: float | None) -> None:
        if value is not None:
            gauge.labels(**self.labels).set(value)
        if gauge is self.step and value is not None:
            # Every step report (built-in loop and the reporting helper) goes through here.
            self.last_step_time.labels(**self.labels).set(time.time())

    def observe(self, hist: Histogram, value: float) -> None:
        hist.labels(**self.labels).observe(value)

    def event(self, event: str, **fields: Any) -> None:
        """A progress event (rank 0's JSONL log; elsewhere nothing)."""
        total = fields.get("totalSteps")
        if isinstance(total, int) and not isinstance(total, bool) and total > 0:
            # The built-in loop and the reporting helper both announce it here (start, step).
            self.set(self.total_steps, total)
        self.progress.event(event, **fields)
        if self.labels["rank"] == "0":
            console.echo(event, fields)  # the pod's log shows progress too (console.py)

    def close(self) -> None:
        self.progress.close()
        if self.server is not None:
            try:
                server, thread = self.server
                server.shutdown()
                thread.join(timeout=2)
            except (TypeError, ValueError):
                pass
            self.server = None
