"""The serving metrics (docs/metrics.md), in their own registry: one set per server process.

Labels: ``model`` and ``version`` (the served version), ``handler`` (infer, model_metadata,
ready, …) and ``code`` (HTTP status) on requests; ``reason`` on errors. Prometheus adds
``namespace``, ``pod``, ``container`` and ``endpoint`` (the port's name) from the PodMonitor's
target, so no label here repeats them: a label the target also sets is renamed ``exported_…``
at scrape time (honorLabels false), which is why the route is ``handler``, not ``endpoint``
(tests/real/test_serving_real.py scrapes a real pod through a PodMonitor).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Small models answer in well under a millisecond; a transformer batch takes a second or more.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass
class ServingMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "torchyard_serving_requests_total", "HTTP requests answered, by handler and status.",
            ["model", "version", "handler", "code"], registry=r)
        self.errors = Counter(
            "torchyard_serving_request_errors_total",
            "Requests answered with an error: bad_request (400), not_found (404), "
            "not_ready (503), internal (500).",
            ["model", "version", "handler", "reason"], registry=r)
        self.latency = Histogram(
            "torchyard_serving_request_duration_seconds",
            "Time from receiving an infer request to its answer (parsing, queueing, the "
            "forward pass, encoding).",
            ["model", "version"], buckets=LATENCY_BUCKETS, registry=r)
        self.inference = Histogram(
            "torchyard_serving_inference_duration_seconds",
            "Time of the model's forward pass alone.",
            ["model", "version"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch = Histogram(
            "torchyard_serving_batch_size", "Samples per infer request.",
            ["model", "version"], buckets=BATCH_BUCKETS, registry=r)
        self.inflight = Gauge(
            "torchyard_serving_inflight_requests", "Infer requests being answered now.",
            ["model", "version"], registry=r)
        self.ready = Gauge(
            "torchyard_serving_ready", "1 once the model is loaded and answers requests.",
            ["model", "version"], registry=r)
        self.info = Gauge(
            "torchyard_serving_model_info",
            "The served version (value 1): its variant (fp32, int8, structured, …), sha256 "
            "and size on disk.",
            ["model", "version", "variant", "sha256", "bytes"], registry=r)
