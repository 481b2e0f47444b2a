"""Operator metrics (DESIGN §4), served on ``/metrics`` by ``torchyard operator``.

KubeRay's pattern: an info series and a status gauge per job with the phase as a label,
duration histograms, and every per-job series removed when the job is deleted. All metrics
live in one registry (:data:`REGISTRY`), the one the operator's HTTP endpoint serves.
The names are a contract with the Helm chart's dashboards and alerts: docs/metrics.md.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from torchyard.api.constants import Phase

ALL_PHASES = (
    Phase.PENDING,
    Phase.WAITING,
    Phase.RUNNING,
    Phase.RESTARTING,
    Phase.SUSPENDED,
    Phase.SUCCEEDED,
    Phase.FAILED,
)
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)
_RECONCILE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


@dataclass
class OperatorMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _phase: dict[tuple[str, str, str], str] = field(default_factory=dict)
    _info: dict[tuple[str, str, str], tuple[str, ...]] = field(default_factory=dict)
    _ratios: dict[tuple[str, str], set[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        r = self.registry
        self.job_info = Gauge(
            "torchyard_job_info",
            "One series per job (value 1) with its static properties as labels.",
            ["kind", "namespace", "name", "strategy", "workers", "gang"],
            registry=r,
        )
        self.job_status = Gauge(
            "torchyard_job_status",
            "1 for the job's current phase (one series per job).",
            ["kind", "namespace", "name", "phase"],
            registry=r,
        )
        self.jobs = Gauge(
            "torchyard_jobs",
            "Jobs known to the operator, by kind and phase.",
            ["kind", "phase"],
            registry=r,
        )
        self.restarts = Counter(
            "torchyard_job_restarts",
            "Whole-group restarts after retryable worker failures (one series per job, dropped "
            "with the job).",
            ["kind", "namespace", "name"],
            registry=r,
        )
        self.transitions = Counter(
            "torchyard_job_transitions",
            "Phase transitions, by the phase entered.",
            ["kind", "phase"],
            registry=r,
        )
        self.reconcile_seconds = Histogram(
            "torchyard_reconcile_duration_seconds",
            "Time of one reconcile of one job (decision + API calls).",
            ["kind"],
            buckets=_RECONCILE_BUCKETS,
            registry=r,
        )
        self.reconcile_errors = Counter(
            "torchyard_reconcile_errors",
            "Reconciles that failed (and were retried with backoff).",
            ["kind"],
            registry=r,
        )
        self.pods_created_seconds = Histogram(
            "torchyard_job_submit_to_pods_created_seconds",
            "From the job's creation to all worker pods existing (first attempt).",
            ["kind"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.running_seconds = Histogram(
            "torchyard_job_submit_to_running_seconds",
            "From the job's creation to all workers running (phase Running, first attempt).",
            ["kind"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.api_requests = Counter(
            "torchyard_api_requests",
            "Kubernetes API requests the operator made itself (not Kopf's watches).",
            ["verb", "resource"],
            registry=r,
        )
        self.api_errors = Counter(
            "torchyard_api_errors",
            "Kubernetes API requests that failed (409 AlreadyExists excluded).",
            ["verb", "resource", "code"],
            registry=r,
        )
        self.compression_ratio = Gauge(
            "torchyard_compression_ratio",
            "A finished CompressionJob's baseline ÷ compressed figure (size, params, speedup).",
            ["namespace", "name", "ratio"],
            registry=r,
        )
        self.compression_accuracy_delta = Gauge(
            "torchyard_compression_accuracy_delta",
            "A finished CompressionJob's compressed minus baseline metric.",
            ["namespace", "name"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "torchyard_reconcile_queue_depth",
            "Jobs waiting for a reconcile.",
            registry=r,
        )

    # ----------------------------------------------------------------- per-job series

    def observe_job(
        self,
        kind: str,
        namespace: str,
        name: str,
        phase: str | None,
        *,
        strategy: str = "",
        workers: int = 0,
        gang: str = "",
    ) -> None:
        key = (kind, namespace, name)
        with self._lock:
            info = (strategy, str(workers), gang)
            old_info = self._info.get(key)
            if old_info != info:
                if old_info is not None:
                    self._remove(self.job_info, kind, namespace, name, *old_info)
                self.job_info.labels(kind, namespace, name, *info).set(1)
                self._info[key] = info
            phase = phase or Phase.PENDING
            old = self._phase.get(key)
            if old == phase:
                return
            if old is not None:
                self._remove(self.job_status, kind, namespace, name, old)
                self.jobs.labels(kind, old).dec()
            self.job_status.labels(kind, namespace, name, phase).set(1)
            self.jobs.labels(kind, phase).inc()
            self._phase[key] = phase
            if old is not None:
                self.transitions.labels(kind, phase).inc()

    def observe_report(self, namespace: str, name: str, report: dict[str, Any]) -> None:
        """A CompressionJob's report figures (set once it has one)."""
        with self._lock:
            for ratio, value in (report.get("ratios") or {}).items():
                if isinstance(value, int | float):
                    self.compression_ratio.labels(namespace, name, ratio).set(value)
                    self._ratios.setdefault((namespace, name), set()).add(ratio)
            delta = report.get("accuracyDelta")
            if isinstance(delta, int | float):
                self.compression_accuracy_delta.labels(namespace, name).set(delta)
                self._ratios.setdefault((namespace, name), set())

    def forget_job(self, kind: str, namespace: str, name: str) -> None:
        """Drop every per-job series (the job was deleted)."""
        key = (kind, namespace, name)
        with self._lock:
            if kind == "CompressionJob" and (namespace, name) in self._ratios:
                for ratio in self._ratios.pop((namespace, name)):
                    self._remove(self.compression_ratio, namespace, name, ratio)
                self._remove(self.compression_accuracy_delta, namespace, name)
            old = self._phase.pop(key, None)
            if old is not None:
                self._remove(self.job_status, kind, namespace, name, old)
                self.jobs.labels(kind, old).dec()
            info = self._info.pop(key, None)
            if info is not None:
                self._remove(self.job_info, kind, namespace, name, *info)
            self._remove(self.restarts, kind, namespace, name)

    @staticmethod
    def _remove(metric: Gauge | Counter, *labels: str) -> None:
        with contextlib.suppress(KeyError):
            metric.remove(*labels)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)


__all__ = ["ALL_PHASES", "OperatorMetrics"]
