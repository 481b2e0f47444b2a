"""Metrics end to end: a real Prometheus (Debian's) scrapes a real `torchyard run` of the digits
example (both workers' metrics ports) and the real operator reconciling jobs on the dev control
plane; then EVERY query of EVERY dashboard panel and EVERY alert expression runs through
Prometheus' HTTP API.

What "data must exist" means here:
- every panel query returns at least one series with a finite value during the run, except the
  few metrics this CPU run cannot produce (GPU memory, MFU, tokens/s of a non-sequence model):
  for those the query must still evaluate, and the metric must be one the worker code registers;
- every dashboard variable query has values;
- every alert expression evaluates without error (and Prometheus' own rule evaluation reports
  health "ok"), every series selector in it matches scraped series, and each alert is shown to
  fire on real input where the run can produce it: a job failing with a permanent exit code
  (TorchyardJobFailed), a job whose workers keep being killed (TorchyardRestartsLooping), the
  operator process stopped (TorchyardOperatorDown). TorchyardThroughputCollapse needs half an
  hour of history; on this healthy run it must stay empty, and the synthetic-series unit test
  (tests/chart: promtool test rules) shows it fires on a collapse.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.chart.conftest import CHART, REPO, OperatorProcess, free_port
from torchyard.api import load_manifests
from torchyard.api.constants import COMPRESSION_JOB_PLURAL, GROUP, TRAINING_JOB_PLURAL, VERSION
from torchyard.local import METRICS_TARGETS_FILE
from torchyard_devcluster import (
    EXIT_CODE_ANNOTATION,
    HOLD_ANNOTATION,
    finish_pod_as_kubelet,
    set_pod_hold,
)
from torchyard_devcluster.testing import Kube, poll

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

# serving.json's queries need a served model, not a job: tests/e2e/test_serving_dashboard.py
DASHBOARDS = sorted(p for p in (CHART / "dashboards").glob("*.json") if p.stem != "serving")
ALERTS = CHART / "files" / "alerts.yaml"
SCRAPE = "500ms"
RATE_INTERVAL = "10s"  # Grafana's $__rate_interval for this scrape interval (>= 4 scrapes)

# Worker metrics a CPU run of an MLP cannot produce (the worker only sets them when known).
NOT_ON_THIS_RUN = {
    "torchyard_worker_gpu_memory_bytes": "peak CUDA memory: GPU workers only",
    "torchyard_worker_mfu": "MFU needs the device's peak FLOPs: GPU workers only",
    "torchyard_worker_tokens_per_second": "tokens/s: sequence models only (digits is an MLP)",
}


# ---------------------------------------------------------------------------------- helpers


@dataclass
class Prom:
    url: str
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))

    def get(self, path: str, **params: Any) -> Any:
        r = self.client.get(f"{self.url}{path}", params=params)
        body = r.json()
        if body.get("status") != "success":
            raise PromError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        data = self.get("/api/v1/query", **params)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def query_range(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query_range", query=expr, start=start, end=end, step="1s")
        return list(data["result"])


class PromError(AssertionError):
    pass


def _finite(series: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(v)) for s in series for _, v in s.get("values", []))


def _targets(board: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    for panel in board["panels"]:
        for t in panel.get("targets", []):
            yield panel["title"], t["refId"], t["expr"]


def _expand(expr: str, variables: dict[str, str], range_s: int) -> str:
    out = expr.replace("$__rate_interval", RATE_INTERVAL).replace("$__range", f"{range_s}s")
    out = out.replace("$__interval", "1s")
    for name, value in variables.items():
        out = out.replace(f"${{{name}}}", value).replace(f"${name}", value)
    assert "$" not in out, f"unexpanded variable in {out}"
    return out


def _label_values_query(query: str) -> str:
    """Grafana's `label_values(selector, label)` as the PromQL Grafana runs for it."""
    m = re.fullmatch(r"label_values\((.+),\s*([a-zA-Z_]\w*)\)", query.strip())
    assert m, f"unsupported variable query {query!r}"
    return f"group by ({m.group(2)}) ({m.group(1)})"


SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?")
PROMQL_WORDS = {
    "sum",
    "max",
    "min",
    "avg",
    "count",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "absent",
    "rate",
    "increase",
    "avg_over_time",
    "max_over_time",
    "min_over_time",
    "histogram_quantile",
    "le",
    "job",
    "torchyard_job",
    "namespace",
    "name",
    "kind",
    "phase",
    "rank",
}


def _selectors(expr: str) -> list[str]:
    """The vector selectors (metric name plus matchers) of a PromQL expression."""
    no_strings = re.sub(r'"[^"]*"', '""', expr)
    names = [
        m.group(1)
        for m in SELECTOR.finditer(no_strings)
        if m.group(1) not in PROMQL_WORDS
        and not re.fullmatch(r"\d.*|[smhd]", m.group(1))
        # a name followed by "(" is a function (time(), last_over_time(...)), never a metric
        and not no_strings[m.end() :].lstrip().startswith("(")
    ]
    out = []
    for name in dict.fromkeys(names):
        m = re.search(rf"\b{re.escape(name)}\s*(\{{[^}}]*\}})", expr)
        out.append(name + (m.group(1) if m else ""))
    return out


# ---------------------------------------------------------------------------------- scenario


@dataclass
class Scenario:
    prom: Prom
    start: float
    end: float
    local_job: str
    namespaces: list[str]
    jobs: dict[str, str]  # k8s job name -> final phase
    operator: OperatorProcess
    operator_metrics: str  # the /metrics text of the operator at the end
    compression_report: dict[str, Any]  # the real local compression's report (result.json)
    worker_targets: list[str]  # every rank's metrics address, as the local run recorded them

    @property
    def variables(self) -> dict[str, str]:
        names = "|".join([self.local_job, *self.jobs])
        return {
            "datasource": "",
            "namespace": "|".join(["default", *self.namespaces]),
            "job": names,
        }

    @property
    def range_s(self) -> int:
        return int(self.end - self.start) + 1


def _tj(
    name: str, namespace: str, *, exit_code: int | None = None, backoff: int = 2, hold: bool = False
) -> dict:
    body = yaml.safe_load((REPO / "examples" / "digits-ddp.yaml").read_text())
    body["metadata"] = {"name": name, "namespace": namespace}
    body["spec"]["runPolicy"] = {"backoffLimit": backoff}
    annotations = {}
    if exit_code is not None:
        annotations[EXIT_CODE_ANNOTATION] = str(exit_code)
    if hold:  # KWOK keeps the pods Running until the annotation goes
        annotations[HOLD_ANNOTATION] = "true"
    if annotations:
        body["spec"]["podMetadata"] = {"annotations": annotations}
    return dict(body)


def _cj(name: str, namespace: str) -> dict:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "CompressionJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "source": {"model": {"builtin": "mlp", "checkpoint": "file:///models/digits/v1"}},
            "data": {"builtin": "digits"},
            "steps": [{"quantize": {"method": "dynamicInt8"}}],
            "accuracyCriterion": {"mode": "absolute", "tolerableLoss": 0.01},
            # held Running by KWOK: the operator sees it run (submit→running latency)
            "podMetadata": {"annotations": {HOLD_ANNOTATION: "true"}},
        },
    }
    return body


def _phase(kube: Kube, plural: str, ns: str, name: str) -> str | None:
    obj = kube.custom.get_namespaced_custom_object(GROUP, VERSION, ns, plural, name)
    return (obj.get("status") or {}).get("phase")


@pytest.fixture(scope="module")
def scenario(
    prometheus_bin: str, cluster: Any, kube: Kube, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scenario]:
    tmp = tmp_path_factory.mktemp("e2e-metrics")
    suffix = uuid.uuid4().hex[:6]
    ns, quota_ns = f"e2e-metrics-{suffix}", f"e2e-quota-{suffix}"
    for name in (ns, quota_ns):
        kube.core.create_namespace(
            {"metadata": {"name": name, "labels": {"torchyard.io/test": "1"}}}
        )
    # A namespace whose quota forbids batch Jobs: the operator's Job creation there is refused
    # (403), which the API-error panels show.
    kube.core.create_namespaced_resource_quota(
        quota_ns, {"metadata": {"name": "no-jobs"}, "spec": {"hard": {"count/jobs.batch": "0"}}}
    )
    # A model store: without one the jobs would wait (StorageNotConfigured, docs/storage.md).
    args = ["--namespace", ns, "--namespace", quota_ns]
    args += ["--default-storage", "file:///var/lib/torchyard-e2e-store"]
    operator = OperatorProcess(cluster.kubeconfig, tmp / "operator.log", args)
    prom_proc = None
    local = None
    try:
        operator.wait_healthy()
        # ---- Prometheus: scrape the operator and every rank of the local run, load the alerts.
        # `torchyard run` picks free metrics ports and records where each rank serves in a
        # file_sd file of its run folder: Prometheus follows that file (made before the run, so
        # that the folder exists for its watch; refreshed each second as well).
        local_job = f"digits-e2e-{suffix}"
        run_dir = tmp / "run"
        targets_file = run_dir / "torchyard-runs" / local_job / METRICS_TARGETS_FILE
        targets_file.parent.mkdir(parents=True)
        prom_port = free_port()
        config = {
            "global": {
                "scrape_interval": SCRAPE,
                "scrape_timeout": SCRAPE,
                "evaluation_interval": "1s",
            },
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {
                    "job_name": "torchyard",  # the chart's ServiceMonitor names the job so
                    "static_configs": [{"targets": [f"127.0.0.1:{operator.metrics_port}"]}],
                },
                {
                    # honor_labels: no service discovery sets `namespace` for local processes,
                    # so the workers' own one is kept; `job` stays this scrape job's name (the
                    # workers name their job `torchyard_job`: docs/metrics.md, "Labels")
                    "job_name": "torchyard-workers",
                    "honor_labels": True,
                    "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "1s"}],
                },
            ],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        prom_log = (tmp / "prometheus.log").open("w")
        prom_proc = subprocess.Popen(
            [
                prometheus_bin,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--web.enable-lifecycle",
            ],
            stdout=prom_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        prom = Prom(f"http://127.0.0.1:{prom_port}")

        def ready() -> bool:
            assert prom_proc is not None
            assert prom_proc.poll() is None, (tmp / "prometheus.log").read_text()[-3000:]
            try:
                return prom.client.get(f"{prom.url}/-/ready").status_code == 200
            except httpx.HTTPError:
                return False

        poll(ready, timeout=60, what="prometheus /-/ready")
        start = time.time()

        # ---- the local run of the digits example (unique name: its series are ours)
        manifest = yaml.safe_load((REPO / "examples" / "digits-ddp.yaml").read_text())
        manifest["metadata"]["name"] = local_job
        manifest["spec"]["epochs"] = 60  # ~15 s of training at 2-4 scrapes a second
        (tmp / "digits.yaml").write_text(yaml.safe_dump(manifest))
        assert load_manifests(tmp / "digits.yaml")
        local = subprocess.Popen(
            [str(REPO / ".venv" / "bin" / "torchyard"), "run", str(tmp / "digits.yaml")],
            cwd=run_dir,
            stdout=(tmp / "run.log").open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        # ---- jobs on the dev cluster, reconciled by the operator
        jobs = {
            # held Running until the operator has seen it run, then released to finish
            "e2e-ok": ("Succeeded", _tj("e2e-ok", ns, hold=True)),
            "e2e-fail": ("Failed", _tj("e2e-fail", ns, exit_code=1)),
            # killed every time (137 = SIGKILL, retryable): 5 whole-group restarts, then Failed
            "e2e-restarts": ("Failed", _tj("e2e-restarts", ns, exit_code=137, backoff=5)),
        }
        for _, body in jobs.values():
            kube.custom.create_namespaced_custom_object(
                GROUP, VERSION, ns, TRAINING_JOB_PLURAL, body
            )
        kube.custom.create_namespaced_custom_object(
            GROUP, VERSION, ns, COMPRESSION_JOB_PLURAL, _cj("e2e-compress", ns)
        )
        kube.custom.create_namespaced_custom_object(
            GROUP, VERSION, quota_ns, TRAINING_JOB_PLURAL, _tj("e2e-quota", quota_ns)
        )
        # Volcano gang scheduling asked for on a cluster without Volcano: creating the PodGroup
        # fails (404) and the reconcile is retried with backoff — the reconcile-error panels.
        no_gang = _tj("e2e-no-volcano", ns)
        no_gang["spec"]["scheduling"] = {"gang": "volcano"}
        kube.custom.create_namespaced_custom_object(
            GROUP, VERSION, ns, TRAINING_JOB_PLURAL, no_gang
        )
        for plural, name in (
            (TRAINING_JOB_PLURAL, "e2e-ok"),
            (COMPRESSION_JOB_PLURAL, "e2e-compress"),
        ):
            poll(
                lambda p=plural, n=name: _phase(kube, p, ns, n) == "Running",
                timeout=300,
                interval=0.5,
                what=f"{name} Running",
            )
        for pod in kube.core.list_namespaced_pod(
            ns, label_selector="torchyard.io/job-name=e2e-ok"
        ).items:
            set_pod_hold(kube.api_client, pod.metadata.name, ns, hold=False)
        finals: dict[str, str] = {}
        for name, (want, _) in jobs.items():
            got = poll(
                lambda n=name: (
                    p
                    if (p := _phase(kube, TRAINING_JOB_PLURAL, ns, n)) in ("Succeeded", "Failed")
                    else None
                ),
                timeout=300,
                interval=1.0,
                what=f"{name} to finish",
            )
            assert got == want, f"{name}: {got}\n{operator.log.read_text()[-3000:]}"
            finals[name] = got
        finals["e2e-quota"] = _phase(kube, TRAINING_JOB_PLURAL, quota_ns, "e2e-quota") or ""

        code = local.wait(timeout=900)
        assert code == 0, (tmp / "run.log").read_text()[-3000:]
        worker_targets = [t for g in json.loads(targets_file.read_text()) for t in g["targets"]]

        # ---- a real compression of the model that run produced (`torchyard run`, local). Its
        # result — byte for byte what a worker pod writes to its termination message — ends
        # the cluster's CompressionJob pod: the operator turns the report into the ratio and
        # accuracy-delta gauges the compression dashboard shows.
        compress = yaml.safe_load((REPO / "examples" / "compress-quantize.yaml").read_text())
        compress_name = f"quantize-e2e-{suffix}"
        compress["metadata"]["name"] = compress_name
        compress["spec"]["source"] = {"trainingJobRef": local_job}
        (tmp / "quantize.yaml").write_text(yaml.safe_dump(compress))
        with (tmp / "quantize.log").open("w") as quantize_log:
            quantized = subprocess.run(
                [str(REPO / ".venv" / "bin" / "torchyard"), "run", str(tmp / "quantize.yaml")],
                cwd=run_dir,
                stdout=quantize_log,
                stderr=subprocess.STDOUT,
                timeout=900,
            )
        assert quantized.returncode == 0, (tmp / "quantize.log").read_text()[-3000:]
        result = run_dir / "torchyard-runs" / compress_name / "pod-0" / "result.json"
        (cpod,) = kube.core.list_namespaced_pod(
            ns, label_selector="torchyard.io/job-name=e2e-compress"
        ).items
        finish_pod_as_kubelet(kube.api_client, cpod.metadata.name, ns, result.read_text())
        compression_report = json.loads(result.read_text())["report"]
        finals["e2e-compress"] = poll(
            lambda: (
                p
                if (p := _phase(kube, COMPRESSION_JOB_PLURAL, ns, "e2e-compress"))
                in ("Succeeded", "Failed")
                else None
            ),
            timeout=120,
            what="e2e-compress to finish",
        )
        assert finals["e2e-compress"] == "Succeeded", operator.log.read_text()[-3000:]
        # the operator has met the refused Job (quota) and the failing PodGroup (no Volcano)
        for metric in ("torchyard_api_errors_total{", "torchyard_reconcile_errors_total{"):
            poll(
                lambda m=metric: (
                    m in httpx.get(f"http://127.0.0.1:{operator.metrics_port}/metrics").text
                ),
                timeout=120,
                what=metric,
            )
        time.sleep(3)  # a few more scrapes and rule evaluations
        op_metrics = httpx.get(f"http://127.0.0.1:{operator.metrics_port}/metrics").text
        yield Scenario(
            prom,
            start,
            time.time(),
            local_job,
            [ns, quota_ns],
            finals,
            operator,
            op_metrics,
            compression_report,
            worker_targets,
        )
    finally:
        if local is not None and local.poll() is None:
            local.terminate()
            local.wait(timeout=30)
        operator.stop()
        if prom_proc is not None:
            prom_proc.terminate()
            prom_proc.wait(timeout=30)
        for name in (ns, quota_ns):
            kube.core.delete_namespace(name, propagation_policy="Background")


def test_every_rank_the_local_run_recorded_was_scraped(scenario: Scenario) -> None:
    """One target per process of the local run, each scraped (up == 1) and serving its own rank
    of this run: the ports the run picked are the ones it recorded."""
    manifest = yaml.safe_load((REPO / "examples" / "digits-ddp.yaml").read_text())
    world = manifest["spec"]["workers"] * manifest["spec"]["procsPerWorker"]
    assert len(set(scenario.worker_targets)) == world, scenario.worker_targets
    window = f"{scenario.range_s}s"
    up = scenario.prom.query(
        f'max_over_time(up{{job="torchyard-workers"}}[{window}])', at=scenario.end
    )
    scraped = {s["metric"]["instance"]: s["value"][1] for s in up}
    assert scraped == dict.fromkeys(scenario.worker_targets, "1")
    restarts = f'torchyard_worker_restarts{{torchyard_job="{scenario.local_job}"}}'
    served = scenario.prom.query(
        f"group by (instance, rank) (last_over_time({restarts}[{window}]))", at=scenario.end
    )
    ranks = {s["metric"]["instance"]: s["metric"]["rank"] for s in served}
    assert ranks == {t: str(rank) for rank, t in enumerate(scenario.worker_targets)}


# ---------------------------------------------------------------------------------- dashboards


def _worker_registry_names() -> set[str]:
    from torchyard_trainer.metrics import WorkerMetrics

    m = WorkerMetrics("x", "y", 0, None, None)
    return {metric.name for metric in m.registry.collect()}


def _panel_cases() -> list[tuple[str, str, str, str]]:
    return [
        (path.stem, title, ref, expr)
        for path in DASHBOARDS
        for title, ref, expr in _targets(json.loads(path.read_text()))
    ]


@pytest.mark.parametrize(
    ("board", "title", "ref", "expr"),
    _panel_cases(),
    ids=[f"{b}:{t}:{r}" for b, t, r, _ in _panel_cases()],
)
def test_dashboard_query_returns_data(
    scenario: Scenario, board: str, title: str, ref: str, expr: str
) -> None:
    query = _expand(expr, scenario.variables, scenario.range_s)
    series = scenario.prom.query_range(query, scenario.start, scenario.end)  # raises on error
    absent = [n for n in NOT_ON_THIS_RUN if n in query]
    if absent:
        # Cannot have data on a CPU run; the name must still be the worker's own.
        assert set(absent) <= _worker_registry_names(), absent
        return
    assert series, f"{board} / {title} [{ref}] returned no series:\n{query}"
    assert _finite(series), f"{board} / {title} [{ref}] has no finite value:\n{query}"


def test_compression_result_panels_show_the_report_of_the_real_compression(
    scenario: Scenario,
) -> None:
    """The ratio and accuracy-delta series are the figures of the local int8 run's report,
    carried by the termination message through the operator into Prometheus."""
    report = scenario.compression_report
    assert report["passed"] is True
    sel = 'name="e2e-compress"'
    ratios = {
        s["metric"]["ratio"]: float(s["value"][1])
        for s in scenario.prom.query(f"torchyard_compression_ratio{{{sel}}}", at=scenario.end)
    }
    want = {k: v for k, v in report["ratios"].items() if v is not None}
    assert want, report  # int8 makes the model smaller: at least the size ratio exists
    assert ratios == pytest.approx(want)
    (delta,) = scenario.prom.query(
        f"torchyard_compression_accuracy_delta{{{sel}}}", at=scenario.end
    )
    assert float(delta["value"][1]) == pytest.approx(report["accuracyDelta"])


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_variables_have_values(scenario: Scenario, path: Path) -> None:
    board = json.loads(path.read_text())
    for var in board["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = _label_values_query(_expand(var["query"]["query"], scenario.variables, 60))
        series = scenario.prom.query_range(query, scenario.start, scenario.end)
        assert series, f"variable {var['name']} of {path.name} has no values: {query}"


# ---------------------------------------------------------------------------------- alerts


def _alert_rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def test_prometheus_evaluates_every_alert_rule_without_error(scenario: Scenario) -> None:
    groups = scenario.prom.get("/api/v1/rules")["groups"]
    rules = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(rules) == {r["alert"] for r in _alert_rules()}
    for name, rule in rules.items():
        assert rule["health"] == "ok", (name, rule.get("lastError"))
        assert rule["lastEvaluation"], name
        assert not rule["lastEvaluation"].startswith("0001"), name  # evaluated at least once


@pytest.mark.parametrize("rule", _alert_rules(), ids=lambda r: r["alert"])
def test_alert_expression_evaluates_and_its_selectors_match_real_series(
    scenario: Scenario, rule: dict[str, Any]
) -> None:
    scenario.prom.query_range(rule["expr"], scenario.start, scenario.end)  # no error
    selectors = _selectors(rule["expr"])
    assert selectors, rule["expr"]
    for sel in selectors:
        found = scenario.prom.query_range(f"count({sel})", scenario.start, scenario.end)
        assert found, f"{rule['alert']}: selector {sel} matches no scraped series"


def _firing(scenario: Scenario, alert: str) -> list[dict[str, Any]]:
    alerts = scenario.prom.get("/api/v1/alerts")["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == alert and a["state"] == "firing"]


def test_job_failed_alert_fires_for_the_failed_jobs_only(scenario: Scenario) -> None:
    assert scenario.jobs["e2e-fail"] == "Failed"
    firing = poll(
        lambda: _firing(scenario, "TorchyardJobFailed"),
        timeout=30,
        what="TorchyardJobFailed firing",
    )
    names = {a["labels"]["name"] for a in firing if a["labels"]["namespace"] in scenario.namespaces}
    assert {"e2e-fail", "e2e-restarts"} <= names
    assert "e2e-ok" not in names


def test_restarts_looping_alert_fires_for_a_job_that_keeps_being_killed(scenario: Scenario) -> None:
    ns = scenario.namespaces[0]
    firing = poll(
        lambda: [
            a
            for a in _firing(scenario, "TorchyardRestartsLooping")
            if a["labels"]["namespace"] == ns
        ],
        timeout=30,
        what="TorchyardRestartsLooping firing",
    )
    assert firing[0]["labels"]["kind"] == "TrainingJob"
    assert firing[0]["labels"]["name"] == "e2e-restarts"  # per job, not per namespace
    assert float(firing[0]["value"]) >= 3


def test_throughput_collapse_stays_silent_on_a_healthy_run(scenario: Scenario) -> None:
    (rule,) = [r for r in _alert_rules() if r["alert"] == "TorchyardThroughputCollapse"]
    assert scenario.prom.query_range(rule["expr"], scenario.start, scenario.end) == []
    # the left-hand side does see the run (so the alert is not silent for want of data)
    lhs = rule["expr"].split("<")[0]
    series = scenario.prom.query_range(lhs, scenario.start, scenario.end)
    assert scenario.local_job in {s["metric"]["torchyard_job"] for s in series}


def test_operator_down_alert_fires_when_the_operator_stops(scenario: Scenario) -> None:
    """Runs last: it stops the operator."""
    (rule,) = [r for r in _alert_rules() if r["alert"] == "TorchyardOperatorDown"]
    assert scenario.prom.query(rule["expr"]) == []  # up: silent
    scenario.operator.stop()
    poll(
        lambda: scenario.prom.query('up{job="torchyard"} == 0'),
        timeout=30,
        what="a failed scrape of the stopped operator",
    )
    (series,) = poll(
        lambda: scenario.prom.query(rule["expr"]), timeout=30, what="the operator-down expression"
    )
    assert float(series["value"][1]) == 1.0
