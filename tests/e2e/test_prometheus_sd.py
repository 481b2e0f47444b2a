"""The chart's PodMonitor and ServiceMonitor, as the Prometheus Operator would run them, against
the dev cluster: label semantics end to end (docs/metrics.md, "Labels").

A real Prometheus discovers targets with ``kubernetes_sd_configs`` on the running dev
control plane (the admin kubeconfig), with scrape configs generated from ``helm template``'s
PodMonitor and ServiceMonitor the way prometheus-operator v0.85 generates them
(pkg/prometheus/promcfg.go: generatePodMonitorConfig / generateServiceMonitorConfig; only the
fields the chart uses, anything else fails the converter, so a chart change cannot slip past).
Debian's Prometheus has no Kubernetes discovery compiled in, so this one is upstream's, built
from the Go module proxy by hack/build-prometheus.sh with only that discovery.

- operator: the rendered metrics Service, without its pod selector, plus an Endpoints object
  pointing at this machine's non-loopback address, where a real ``torchyard operator`` process
  serves /metrics (``role: endpoints``, prometheus-operator's default service discovery role);
- workers: pods built by the operator's own builders (``build_children``) for a TrainingJob,
  run by KWOK (held Running), whose status ``podIP`` is then set to this machine's address, so
  ``role: pod`` discovery yields real, scrapable targets; behind each metrics port listens the
  worker's real exporter (``torchyard_trainer.metrics.WorkerMetrics``, here in the test
  process, stepping). The builders' metrics port numbers are swapped for free ones: the host is
  shared, the builders' fixed 9400+r is not ours to take. Limit: the process behind the port is
  not the pod's container (KWOK runs none); discovery, relabeling and scraping are real.

Then every query of the training, operator and compression dashboards runs through Prometheus'
HTTP API with the dashboards' variables set to this test's namespace and jobs, and the returned
series must carry the job's ``namespace``, the workers' ``torchyard_job``, and Prometheus' own
scrape ``job`` (``<namespace>/<podmonitor>`` for workers, ``torchyard`` for the operator).
Reverting either fix fails here: the operator's ServiceMonitor without ``honorLabels`` moves the
job's namespace to ``exported_namespace``; workers exporting ``job`` (overwriting, or becoming
``exported_job``) leave the dashboards' ``torchyard_job`` selectors empty.
"""

from __future__ import annotations

import copy
import json
import math
import re
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.chart.conftest import CHART, REPO, OperatorProcess, free_port, helm, helm_template, one
from torchyard.api import TrainingJob, load_manifests
from torchyard.api.constants import COMPRESSION_JOB_PLURAL, GROUP, TRAINING_JOB_PLURAL, VERSION
from torchyard.api.contract import Env
from torchyard.builders import METRICS_PORT_NAME_PREFIX, build_children
from torchyard_devcluster import HOLD_ANNOTATION
from torchyard_devcluster.testing import Kube, poll
from torchyard_trainer.metrics import JOB_LABEL, WorkerMetrics

__all__ = ["helm"]  # the fixture, imported for pytest

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

# The dashboards of the operator's and the workers' metrics (the ones the monitors bring in);
# tests/e2e/test_metrics.py runs every dashboard's queries on a real run.
DASHBOARDS = {
    name: CHART / "dashboards" / f"{name}.json" for name in ("training", "operator", "compression")
}
INTERVAL = "1s"  # the monitors say 15s/30s: the only field this test changes, for speed
RATE_INTERVAL = "5s"  # Grafana's $__rate_interval at a 1 s scrape interval (>= 4 scrapes)
RANGE = "60s"
# Series only events this test does not cause create (restarts, a finished compression's
# report, failed API calls, pods created for a job): their queries must evaluate, not return.
EVENT_ONLY = (
    "torchyard_job_restarts_total",
    "torchyard_compression_ratio",
    "torchyard_compression_accuracy_delta",
)


# ------------------------------------------------- prometheus-operator's config generation


def _sanitize(name: str) -> str:
    """Prometheus' label name sanitation (what prometheus-operator applies to label keys)."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _relabeling(rule: dict[str, Any]) -> dict[str, Any]:
    """A monitoring.coreos.com RelabelConfig as Prometheus' relabel_config."""
    keys = {"sourceLabels": "source_labels", "targetLabel": "target_label"}
    out = {keys.get(k, k): v for k, v in rule.items()}
    assert set(out) <= {
        "source_labels",
        "target_label",
        "separator",
        "regex",
        "replacement",
        "action",
        "modulus",
    }, rule
    if "action" in out:
        out["action"] = str(out["action"]).lower()
    return out


def _selector_keeps(role: str, selector: dict[str, Any]) -> list[dict[str, Any]]:
    assert set(selector) == {"matchLabels"}, f"converter: unsupported selector {selector}"
    return [
        {
            "action": "keep",
            "source_labels": [
                f"__meta_kubernetes_{role}_label_{_sanitize(k)}",
                f"__meta_kubernetes_{role}_labelpresent_{_sanitize(k)}",
            ],
            "regex": f"({v});true",
        }
        for k, v in sorted(selector["matchLabels"].items())
    ]


def _sd(role: str, monitor: dict[str, Any], kubeconfig: Path) -> dict[str, Any]:
    sel = monitor["spec"].get("namespaceSelector", {})
    sd: dict[str, Any] = {"role": role, "kubeconfig_file": str(kubeconfig)}
    if not sel.get("any"):
        sd["namespaces"] = {"names": sel.get("matchNames") or [monitor["metadata"]["namespace"]]}
    return sd


def _copy(source: str, target: str) -> dict[str, Any]:
    return {"source_labels": [source], "target_label": target}


def _target_label(role: str, label: str) -> dict[str, Any]:
    meta = f"__meta_kubernetes_{role}_label_{_sanitize(label)}"
    return {**_copy(meta, _sanitize(label)), "regex": "(.+)", "replacement": "${1}"}


RUNNING_ONLY = {  # filterRunning (default true): finished pods are no targets
    "action": "drop",
    "source_labels": ["__meta_kubernetes_pod_phase"],
    "regex": "(Failed|Succeeded)",
}
POD_MONITOR_FIELDS = {"namespaceSelector", "selector", "podTargetLabels", "podMetricsEndpoints"}
POD_ENDPOINT_FIELDS = {
    "path",
    "honorLabels",
    "interval",
    "scrapeTimeout",
    "relabelings",
    "metricRelabelings",
    "port",
}
SERVICE_MONITOR_FIELDS = {"namespaceSelector", "selector", "endpoints"}
SERVICE_ENDPOINT_FIELDS = POD_ENDPOINT_FIELDS


def _scrape_config(
    kind: str, monitor: dict[str, Any], i: int, ep: dict[str, Any], role: str, kubeconfig: Path
) -> dict[str, Any]:
    ns, name = monitor["metadata"]["namespace"], monitor["metadata"]["name"]
    return {
        "job_name": f"{kind}/{ns}/{name}/{i}",
        "honor_labels": bool(ep.get("honorLabels", False)),
        "metrics_path": ep.get("path", "/metrics"),
        "scrape_interval": INTERVAL,
        "scrape_timeout": INTERVAL,
        "kubernetes_sd_configs": [_sd(role, monitor, kubeconfig)],
        "metric_relabel_configs": [_relabeling(r) for r in ep.get("metricRelabelings", [])],
    }


def podmonitor_scrape_configs(pm: dict[str, Any], kubeconfig: Path) -> list[dict[str, Any]]:
    spec = pm["spec"]
    assert set(spec) <= POD_MONITOR_FIELDS, (
        f"converter: unsupported {set(spec) - POD_MONITOR_FIELDS}"
    )
    out = []
    for i, ep in enumerate(spec["podMetricsEndpoints"]):
        assert set(ep) <= POD_ENDPOINT_FIELDS, f"converter: unsupported {ep}"
        relabel = [_copy("job", "__tmp_prometheus_job_name"), RUNNING_ONLY]
        relabel += _selector_keeps("pod", spec["selector"])
        if "port" in ep:
            relabel.append(
                {
                    "action": "keep",
                    "source_labels": ["__meta_kubernetes_pod_container_port_name"],
                    "regex": ep["port"],
                }
            )
        relabel += [
            _copy("__meta_kubernetes_namespace", "namespace"),
            _copy("__meta_kubernetes_pod_container_name", "container"),
            _copy("__meta_kubernetes_pod_name", "pod"),
        ]
        relabel += [_target_label("pod", label) for label in spec.get("podTargetLabels", [])]
        # no jobLabel: the job is "<podmonitor namespace>/<podmonitor name>"
        ns, name = pm["metadata"]["namespace"], pm["metadata"]["name"]
        relabel.append({"target_label": "job", "replacement": f"{ns}/{name}"})
        if "port" in ep:
            relabel.append({"target_label": "endpoint", "replacement": ep["port"]})
        relabel += [_relabeling(r) for r in ep.get("relabelings", [])]
        cfg = _scrape_config("podMonitor", pm, i, ep, "pod", kubeconfig)
        out.append({**cfg, "relabel_configs": relabel})
    return out


def servicemonitor_scrape_configs(sm: dict[str, Any], kubeconfig: Path) -> list[dict[str, Any]]:
    spec = sm["spec"]
    assert set(spec) <= SERVICE_MONITOR_FIELDS, f"converter: unsupported {spec}"
    out = []
    for i, ep in enumerate(spec["endpoints"]):
        assert set(ep) <= SERVICE_ENDPOINT_FIELDS, f"converter: unsupported {ep}"
        relabel = [_copy("job", "__tmp_prometheus_job_name")]
        relabel += _selector_keeps("service", spec["selector"])
        relabel.append(
            {
                "action": "keep",
                "source_labels": ["__meta_kubernetes_endpoint_port_name"],
                "regex": ep["port"],
            }
        )
        target = [
            "__meta_kubernetes_endpoint_address_target_kind",
            "__meta_kubernetes_endpoint_address_target_name",
        ]
        for kind, label in (("Node", "node"), ("Pod", "pod")):
            relabel.append(
                {
                    "source_labels": target,
                    "separator": ";",
                    "regex": f"{kind};(.*)",
                    "replacement": "${1}",
                    "target_label": label,
                }
            )
        relabel += [
            _copy("__meta_kubernetes_namespace", "namespace"),
            _copy("__meta_kubernetes_service_name", "service"),
            _copy("__meta_kubernetes_pod_name", "pod"),
            _copy("__meta_kubernetes_pod_container_name", "container"),
            RUNNING_ONLY,
            # no jobLabel: the job is the Service's name
            {**_copy("__meta_kubernetes_service_name", "job"), "replacement": "${1}"},
            {"target_label": "endpoint", "replacement": ep["port"]},
        ]
        relabel += [_relabeling(r) for r in ep.get("relabelings", [])]
        cfg = _scrape_config("serviceMonitor", sm, i, ep, "endpoints", kubeconfig)
        out.append({**cfg, "relabel_configs": relabel})
    return out


# ---------------------------------------------------------------------------------- helpers


def host_address() -> str:
    """This machine's first non-loopback IPv4 address (where Prometheus can reach our ports)."""
    res = subprocess.run(["hostname", "-I"], text=True, capture_output=True, check=False)
    for addr in res.stdout.split():
        if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", addr) and not addr.startswith("127."):
            return addr
    pytest.skip("no non-loopback IPv4 address on this machine")


def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("0.0.0.0", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Prom:
    url: str
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))

    def get(self, path: str, **params: Any) -> Any:
        body = self.client.get(f"{self.url}{path}", params=params).json()
        assert body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self.get("/api/v1/query", query=expr)["result"])


@dataclass
class Setup:
    prom: Prom
    release_ns: str
    job_ns: str
    train: str
    compress: str
    worker_scrape_job: str
    worker_ports: list[int]


class Workers:
    """The worker exporter of every rank, stepping in a thread as a training run would."""

    def __init__(self, job: str, namespace: str, ports: list[int]) -> None:
        self.metrics = [WorkerMetrics(job, namespace, r, p, None) for r, p in enumerate(ports)]
        for m in self.metrics:
            assert m.server is not None, "a worker metrics port was taken"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        step = 0
        while not self._stop.wait(0.25):
            step += 1
            for m in self.metrics:
                for gauge, value in (
                    (m.loss, 1 / step),
                    (m.accuracy, 0.9),
                    (m.val_loss, 0.3),
                    (m.samples_ps, 500.0),
                    (m.tokens_ps, 9000.0),
                    (m.step_time, 0.02),
                    (m.data_wait, 0.001),
                    (m.mfu, 0.4),
                    (m.gpu_mem, 2e9),
                    (m.total_steps, 100000),
                    (m.epoch, 1),
                    (m.lr, 0.01),
                    (m.restarts, 0),
                    (m.step, step),
                ):
                    m.set(gauge, value)
                m.observe(m.step_hist, 0.02)
                m.observe(m.ckpt, 0.3)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for m in self.metrics:
            m.close()


@pytest.fixture(scope="session")
def prometheus_k8s_sd() -> str:
    """A Prometheus with Kubernetes service discovery: Debian's is built without it, so
    hack/build-prometheus.sh builds upstream's from the Go module proxy (cached)."""
    res = subprocess.run(
        ["bash", str(REPO / "hack" / "build-prometheus.sh")],
        text=True,
        capture_output=True,
        check=False,
        timeout=1800,
    )
    assert res.returncode == 0, f"hack/build-prometheus.sh failed:\n{res.stderr[-4000:]}"
    return res.stdout.strip().splitlines()[-1]


def _namespace(kube: Kube, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    kube.core.create_namespace({"metadata": {"name": name, "labels": {"torchyard.io/test": "1"}}})
    poll(lambda: _has_default_sa(kube, name), timeout=60, what=f"default SA in {name}")
    return name


def _has_default_sa(kube: Kube, ns: str) -> bool:
    from kubernetes import client

    try:
        kube.core.read_namespaced_service_account("default", ns)
    except client.ApiException:
        return False
    return True


def _operator_service(
    kube: Kube, docs: list[dict[str, Any]], ns: str, addr: str, port: int
) -> None:
    """The chart's metrics Service, without its pod selector, and an Endpoints object that
    points where the operator process listens (what the endpoints controller would write)."""
    svc = copy.deepcopy(one(docs, "Service", "-metrics"))
    del svc["spec"]["selector"]
    kube.core.create_namespaced_service(ns, svc)
    (svc_port,) = svc["spec"]["ports"]
    endpoints = {
        "metadata": {"name": svc["metadata"]["name"], "labels": svc["metadata"]["labels"]},
        "subsets": [
            {
                "addresses": [{"ip": addr}],
                "ports": [{"name": svc_port["name"], "port": port, "protocol": "TCP"}],
            }
        ],
    }
    kube.core.create_namespaced_endpoints(ns, endpoints)


def _worker_pods(kube: Kube, job: TrainingJob, ns: str, addr: str, ports: list[int]) -> None:
    """The builders' worker pods of ``job``, metrics ports renumbered to ``ports`` (rank
    order), held Running by KWOK; their podIP then set to ``addr`` (the status a kubelet writes)."""
    template = build_children(job, namespace=ns, restart_count=0).job["spec"]["template"]
    free = iter(ports)
    names = []
    for index in range(job.spec.workers):
        pod = copy.deepcopy(template)
        pod["metadata"]["name"] = f"{job.metadata.name}-{index}"
        pod["metadata"].setdefault("annotations", {})[HOLD_ANNOTATION] = "true"
        (container,) = pod["spec"]["containers"]
        metrics = [p for p in container["ports"] if p["name"].startswith(METRICS_PORT_NAME_PREFIX)]
        assert len(metrics) == job.spec.procs_per_worker, container["ports"]
        for port in metrics:
            port["containerPort"] = next(free)
        for env in container["env"]:
            if env["name"] == Env.METRICS_PORT:
                env["value"] = str(metrics[0]["containerPort"])
        kube.core.create_namespaced_pod(ns, {"apiVersion": "v1", "kind": "Pod", **pod})
        names.append(pod["metadata"]["name"])
    for name in names:
        poll(
            lambda n=name: kube.core.read_namespaced_pod(n, ns).status.phase == "Running",
            timeout=60,
            what=f"pod {name} Running",
        )
        status = {"status": {"podIP": addr, "podIPs": [{"ip": addr}]}}
        # a JSON merge patch replaces podIPs (a strategic merge would add to the list)
        kube.core.patch_namespaced_pod_status(
            name, ns, status, _content_type="application/merge-patch+json"
        )


def _jobs(kube: Kube, ns: str, train: str, compress: str) -> TrainingJob:
    """A suspended TrainingJob (no pods of its own: the test's stand in) and a CompressionJob
    waiting for it, so the operator exports per-job series for both kinds."""
    body = yaml.safe_load((REPO / "examples" / "digits-ddp.yaml").read_text())
    body["metadata"] = {"name": train, "namespace": ns}
    body["spec"]["runPolicy"] = {"suspend": True}
    kube.custom.create_namespaced_custom_object(GROUP, VERSION, ns, TRAINING_JOB_PLURAL, body)
    cj = yaml.safe_load((REPO / "examples" / "compress-quantize.yaml").read_text())
    cj["metadata"] = {"name": compress, "namespace": ns}
    cj["spec"]["source"] = {"trainingJobRef": train}
    kube.custom.create_namespaced_custom_object(GROUP, VERSION, ns, COMPRESSION_JOB_PLURAL, cj)
    (job,) = load_manifests(REPO / "examples" / "digits-ddp.yaml")
    assert isinstance(job, TrainingJob)
    job.metadata.name = train
    return job


def _start_prometheus(binary: str, tmp: Path, scrape_configs: list[dict[str, Any]]) -> Any:
    config = {
        "global": {"scrape_interval": INTERVAL, "evaluation_interval": INTERVAL},
        "scrape_configs": scrape_configs,
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    prom = Prom(f"http://127.0.0.1:{port}")

    def ready() -> bool:
        assert proc.poll() is None, (tmp / "prometheus.log").read_text()[-4000:]
        try:
            return prom.client.get(f"{prom.url}/-/ready").status_code == 200
        except httpx.HTTPError:
            return False

    poll(ready, timeout=60, what="prometheus ready")
    return proc, prom


@pytest.fixture(scope="module")
def setup(
    cluster: Any,
    kube: Kube,
    helm: str,
    prometheus_k8s_sd: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("prometheus-sd")
    addr = host_address()
    release_ns, job_ns = _namespace(kube, "sd-release"), _namespace(kube, "sd-jobs")
    train, compress = f"sd-train-{uuid.uuid4().hex[:4]}", f"sd-compress-{uuid.uuid4().hex[:4]}"
    docs = helm_template(
        helm,
        ns=release_ns,
        sets=[
            "metrics.serviceMonitor.enabled=true",
            "metrics.podMonitor.enabled=true",
            f"metrics.podMonitor.namespaces[0]={job_ns}",
        ],
    )
    sm, pm = one(docs, "ServiceMonitor"), one(docs, "PodMonitor")
    operator = OperatorProcess(cluster.kubeconfig, tmp / "operator.log", ["--namespace", job_ns])
    workers = prom_proc = None
    try:
        operator.wait_healthy()
        _operator_service(kube, docs, release_ns, addr, operator.metrics_port)
        job = _jobs(kube, job_ns, train, compress)
        ports = free_ports(job.spec.workers * job.spec.procs_per_worker)
        workers = Workers(train, job_ns, ports)
        _worker_pods(kube, job, job_ns, addr, ports)
        scrape = servicemonitor_scrape_configs(sm, cluster.kubeconfig)
        scrape += podmonitor_scrape_configs(pm, cluster.kubeconfig)
        prom_proc, prom = _start_prometheus(prometheus_k8s_sd, tmp, scrape)
        pm_job = f"{pm['metadata']['namespace']}/{pm['metadata']['name']}"
        yield Setup(prom, release_ns, job_ns, train, compress, pm_job, ports)
    finally:
        if prom_proc is not None:
            prom_proc.terminate()
            prom_proc.wait(timeout=30)
        if workers is not None:
            workers.close()
        _delete_jobs(kube, job_ns)  # while the operator runs: it removes its finalizers
        operator.stop()
        for ns in (job_ns, release_ns):
            kube.core.delete_namespace(ns, propagation_policy="Background")


def _delete_jobs(kube: Kube, ns: str) -> None:
    for plural in (COMPRESSION_JOB_PLURAL, TRAINING_JOB_PLURAL):
        kube.custom.delete_collection_namespaced_custom_object(GROUP, VERSION, ns, plural)

    def gone() -> bool:
        return not any(
            kube.custom.list_namespaced_custom_object(GROUP, VERSION, ns, plural)["items"]
            for plural in (COMPRESSION_JOB_PLURAL, TRAINING_JOB_PLURAL)
        )

    poll(gone, timeout=60, what=f"jobs of {ns} deleted")


# ------------------------------------------------------------------------------------ tests


def _active_targets(setup: Setup) -> list[dict[str, Any]]:
    targets = setup.prom.get("/api/v1/targets", state="active")["activeTargets"]
    return [t for t in targets if t["health"] == "up"]


def test_prometheus_discovers_and_scrapes_operator_and_workers_with_the_monitors_labels(
    setup: Setup,
) -> None:
    addr = host_address()
    expected = 1 + len(setup.worker_ports)
    up = poll(
        lambda: (t := _active_targets(setup)) and len(t) == expected and t,
        timeout=90,
        what=f"{expected} targets up",
    )
    by_job = {}
    for t in up:
        by_job.setdefault(t["labels"]["job"], []).append(t["labels"])
    assert set(by_job) == {"torchyard", setup.worker_scrape_job}, by_job
    (operator,) = by_job["torchyard"]
    # the operator's target: the release namespace, the chart's Service and port name
    assert operator["namespace"] == setup.release_ns
    assert operator["endpoint"] == "metrics"
    assert operator["service"].endswith("-metrics")
    workers = by_job[setup.worker_scrape_job]
    assert {w["instance"] for w in workers} == {f"{addr}:{p}" for p in setup.worker_ports}
    for w in workers:
        assert w["namespace"] == setup.job_ns
        assert w["torchyard_io_job_name"] == setup.train
        assert w["torchyard_io_job_kind"] == "trainingjob"  # the pod label's value
        assert re.fullmatch(rf"{METRICS_PORT_NAME_PREFIX}\d+", w["endpoint"])
        assert w["pod"].startswith(setup.train)


def _series(setup: Setup, expr: str) -> list[dict[str, Any]]:
    return poll(lambda: setup.prom.query(expr), timeout=60, what=expr)


def test_scraped_series_keep_the_scrape_job_and_the_jobs_namespace(setup: Setup) -> None:
    """The two label fixes, on raw series (docs/metrics.md, "Labels")."""
    # operator: per-job series keep the JOB's namespace (ServiceMonitor honorLabels: true)
    for kind, name in (("TrainingJob", setup.train), ("CompressionJob", setup.compress)):
        (info,) = _series(setup, f'torchyard_job_info{{kind="{kind}", name="{name}"}}')
        labels = info["metric"]
        assert labels["namespace"] == setup.job_ns, labels
        assert labels["job"] == "torchyard", labels
        assert not [k for k in labels if k.startswith("exported_")], labels
    # workers: Prometheus' job is the scrape job, the TrainingJob is torchyard_job
    steps = _series(setup, f'torchyard_worker_step{{{JOB_LABEL}="{setup.train}"}}')
    assert len(steps) == len(setup.worker_ports)
    for s in steps:
        labels = s["metric"]
        assert labels["job"] == setup.worker_scrape_job, labels
        assert labels["namespace"] == setup.job_ns, labels
        assert not [k for k in labels if k.startswith("exported_")], labels
    assert {s["metric"]["rank"] for s in steps} == {str(r) for r in range(len(steps))}


def _expand(expr: str, variables: dict[str, str]) -> str:
    out = expr.replace("$__rate_interval", RATE_INTERVAL).replace("$__range", RANGE)
    out = out.replace("$__interval", INTERVAL)
    for name, value in variables.items():
        out = out.replace(f"${{{name}}}", value).replace(f"${name}", value)
    assert "$" not in out, f"unexpanded variable in {out}"
    return out


def _label_values(query: str) -> str:
    """Grafana's `label_values(selector, label)` as the PromQL it runs."""
    m = re.fullmatch(r"label_values\((.+),\s*([a-zA-Z_]\w*)\)", query.strip())
    assert m, f"unsupported variable query {query!r}"
    return f"group by ({m.group(2)}) ({m.group(1)})"


def _check_labels(setup: Setup, labels: dict[str, str], expr: str) -> None:
    assert not [k for k in labels if k.startswith("exported_")], (expr, labels)
    if "$namespace" in expr and "namespace" in labels:
        assert labels["namespace"] == setup.job_ns, (expr, labels)
    if JOB_LABEL in labels:
        assert labels[JOB_LABEL] == setup.train, (expr, labels)
    if "job" in labels:  # Prometheus' scrape job: the PodMonitor's for workers
        worker = JOB_LABEL in labels or labels.get("__name__", "").startswith("torchyard_worker_")
        operator = "name" in labels or labels.get("__name__", "").startswith("torchyard_job")
        assert not (worker and operator), labels
        if worker or operator:
            assert labels["job"] == (setup.worker_scrape_job if worker else "torchyard"), labels
        assert labels["job"] in (setup.worker_scrape_job, "torchyard"), labels


@pytest.mark.parametrize("board", sorted(DASHBOARDS))
def test_dashboard_queries_return_series_of_this_namespace_and_job(
    setup: Setup, board: str
) -> None:
    dashboard = json.loads(DASHBOARDS[board].read_text())
    job = setup.compress if board == "compression" else setup.train
    variables = {"namespace": setup.job_ns, "job": job}
    for var in dashboard["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = _expand(_label_values(var["query"]["query"]), variables)
        (label,) = re.findall(r"group by \((\w+)\)", query)
        values = {s["metric"][label] for s in _series(setup, query)}
        assert variables[var["name"]] in values, (var["name"], query, values)
    checked = 0
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            raw = target["expr"]
            expr = _expand(raw, variables)
            required = ("$namespace" in raw or "$job" in raw or "up{" in raw) and not any(
                m in raw for m in EVENT_ONLY
            )
            series = _series(setup, expr) if required else setup.prom.query(expr)
            for s in series:
                assert math.isfinite(float(s["value"][1])) or not required, (panel["title"], s)
                _check_labels(setup, s["metric"], raw)
            checked += required
    assert checked, f"{board}: no query selects on the namespace or job"
