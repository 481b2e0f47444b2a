"""torchyard beside Kubeflow on one cluster (issue 18): the same burst of 4-node jobs.

On a dev cluster of its own (``TORCHYARD_DEV_CLUSTER_DIR``, default
``~/.cache/torchyard/dev-cluster-scale``; never the shared one: the Kubeflow controllers are
cluster-wide) with KWOK nodes of 8 GPUs, submit N jobs of W workers (1 GPU each) at once to:

- ``torchyard``: TrainingJobs, our operator (``torchyard operator``),
- ``baseline``: TrainingJobs, the empty Kopf operator (bench/baseline_operator.py),
- ``trainer``: TrainJobs, Kubeflow Trainer v2.0.0 + JobSet v0.8.2, with a ClusterTrainingRuntime
  equivalent to ours (torch, W nodes, 1 process per node, the same pod resources),
- ``pytorchjob``: PyTorchJobs (1 Master + W-1 Workers), Kubeflow training-operator v1.8.1,

one system at a time (its controllers started for its run only), in ABBA order. Measured:
jobs/s to all pods created, p50/p99 submit → first child (Job / JobSet) and → all pods created
/ Running, the controllers' CPU seconds and peak RSS, API requests per job (each controller runs
as its own user; a FlowSchema per user, ``apiserver_flowcontrol_dispatched_requests_total``),
the 1-minute load average before/after and its mean during the burst.

Worker pods are held Running (KWOK hold annotation). Writes bench/results/kubeflow_compare.json
and the "Beside Kubeflow" section of docs/benchmarks-operator.md.

    python bench/kubeflow_compare.py [--jobs 100] [--workers 4] [--nodes 50]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "kubeflow_compare.json"
DOC = ROOT / "docs" / "benchmarks-operator.md"
SECTION = "## Beside Kubeflow (bench/kubeflow_compare.py)"
DEFAULT_SIZE = (100, 4)  # the size whose figures are RESULTS and SECTION; others get their own
HOLD = "kwok.torchyard.io/hold"
IMAGE = "registry.invalid/trainer:bench"
RUNTIME = "torchyard-bench-torch"
SHARED_DIR = Path.home() / ".cache" / "torchyard" / "dev-cluster"
os.environ.setdefault(
    "TORCHYARD_DEV_CLUSTER_DIR", str(Path.home() / ".cache" / "torchyard" / "dev-cluster-scale")
)

sys.path.insert(0, str(ROOT / "operator"))
sys.path.insert(0, str(ROOT / "bench"))

from _common import replace_doc_section  # noqa: E402
from kubernetes import client, watch  # noqa: E402
from operator_scale import PodWatch, _pct, _proc_stats, _start_operator  # noqa: E402

import torchyard_devcluster as devcluster  # noqa: E402
from torchyard_devcluster import kubeflow  # noqa: E402

#: system -> (pod label grouping a job's pods, controllers it needs)
SYSTEMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "torchyard": ("torchyard.io/job-name", ("torchyard",)),
    "baseline": ("torchyard.io/job-name", ("baseline",)),
    "trainer": ("jobset.sigs.k8s.io/jobset-name", ("jobset", "trainer")),
    "pytorchjob": ("training.kubeflow.org/job-name", ("training-operator",)),
}
RESOURCES = {"nvidia.com/gpu": "1", "cpu": "1", "memory": "1Gi"}
#: Systems whose pods cannot appear in this run: Trainer without a JobSet controller (not
#: built in time) still creates its JobSets — its own share of the work — and no more.
NO_PODS: set[str] = set()
NO_PODS_NOTE = (
    "Trainer ran without its JobSet controller (not built in time, see the report): its rows "
    "cover TrainJob → JobSet only — its own share of the work — and no pods were created "
    "during its runs, so the API server and the CPUs were otherwise idle then, while during "
    "the other systems' runs the Job controller, scheduler and KWOK were creating and "
    "running every job's pods. Its child latency and jobs/s are therefore flattered; its "
    "CPU, RSS and API requests per job are its controller's alone and comparable."
)
#: Notes that hold for every run (rendered under the table).
NOTES = [
    "How the Kubeflow controllers run (operator/torchyard_devcluster/kubeflow.py): as local "
    "processes of the binaries hack/build-kubeflow.sh builds from the Go module proxy, CRDs "
    "and webhook manifests from the same modules. Trainer's and training-operator's cert "
    "rotator (open-policy-agent/cert-controller) cannot be switched off: it gets its Secret "
    "and an empty ValidatingWebhookConfiguration of its fixed name, and the serving "
    "certificate it expects at /tmp/k8s-webhook-server/serving-certs comes from an overlay "
    "on /tmp in the process's own mount namespace (signed by the dev cluster CA, IP SAN "
    "127.0.0.1). The modules' webhooks are registered with url https://127.0.0.1:<port> and "
    "our CA, so Trainer's and JobSet's webhooks ran for every TrainJob, JobSet and pod. "
    "JobSet's Configuration allows internal cert management off (same local webhook set-up). "
    "The Kubeflow controllers are started once and stay up, idle, through every run; ours "
    "and the empty operator are started per run for one namespace.",
    "Builds (hack/build-kubeflow.sh, under nice on 2 shared cores): with the Go build cache "
    "holding the control plane's Kubernetes packages, Trainer v2.0.0 in 155 s, JobSet v0.8.2 "
    "in 109 s, training-operator v1.8.1 in 89 s (nice 19 beside a CI run); a first build at "
    "load average 25-45 took 1,462 s, 3,142 s and 3,181 s. `go install "
    "sigs.k8s.io/jobset@v0.8.2` fails at once (the proxy answers 403 to the module's version "
    "list, which `go install` reads for deprecations): the script runs `go build` inside the "
    "downloaded module instead, which needs no version list.",
    "API req/job counts every request of a controller's own user (FlowSchema per user, "
    "apiserver_flowcontrol_dispatched_requests_total): reads, writes and watch starts. Ours "
    "includes its status writes and two Events per job; Trainer's is the JobSet apply, "
    "JobSet's the child Jobs and Services and its status; the training-operator creates "
    "every pod and Service itself. Ours is higher here than bench/operator_scale.py's "
    "write-only count because reads and Events are included.",
]


def trainer_without_jobset(api: Any) -> None:
    """Trainer v2 with the JobSet CRD but no JobSet controller (see :data:`NO_PODS`); the CRD
    comes from the module in the Go module cache (``go mod download`` has it)."""
    import subprocess

    from torchyard_devcluster.crds import apply_crds

    info = subprocess.run(
        ["go", "mod", "download", "-json", f"sigs.k8s.io/jobset@{kubeflow.VERSIONS['jobset']}"],
        capture_output=True,
        text=True,
        check=True,
    )
    moddir = Path(json.loads(info.stdout)["Dir"])
    apply_crds(api, moddir / "config" / "components" / "crd" / "bases")
    SYSTEMS["trainer"] = (SYSTEMS["trainer"][0], ("trainer",))
    NO_PODS.add("trainer")


def _pod_template(container: str) -> dict[str, Any]:
    return {
        "metadata": {"annotations": {HOLD: "true"}},
        "spec": {
            "containers": [
                {
                    "name": container,
                    "image": IMAGE,
                    "command": ["torchrun", "-m", "train"],
                    "resources": {"limits": RESOURCES, "requests": RESOURCES},
                }
            ]
        },
    }


def runtime(workers: int) -> dict[str, Any]:
    """A ClusterTrainingRuntime like the module's ``torch-distributed``
    (manifests/base/runtimes/torch_distributed.yaml) with ``workers`` nodes of 1 process."""
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "ClusterTrainingRuntime",
        "metadata": {"name": RUNTIME},
        "spec": {
            "mlPolicy": {"numNodes": workers, "torch": {"numProcPerNode": 1}},
            "template": {
                "spec": {
                    "replicatedJobs": [
                        {
                            "name": "node",
                            "template": {
                                "metadata": {
                                    "labels": {
                                        "trainer.kubeflow.org/trainjob-ancestor-step": "trainer"
                                    }
                                },
                                "spec": {"template": _pod_template("node")},
                            },
                        }
                    ]
                }
            },
        },
    }


def manifest(system: str, name: str, workers: int) -> tuple[tuple[str, str, str], dict[str, Any]]:
    """((group, version, plural), body) of one job of ``system``."""
    if system in ("torchyard", "baseline"):
        sys.path.insert(0, str(ROOT / "bench"))
        from operator_scale import _manifest

        return ("torchyard.io", "v1alpha1", "trainingjobs"), _manifest(name, workers)
    if system == "trainer":
        body = {
            "apiVersion": "trainer.kubeflow.org/v1alpha1",
            "kind": "TrainJob",
            "metadata": {"name": name},
            "spec": {
                "runtimeRef": {"name": RUNTIME},
                "trainer": {"numNodes": workers, "resourcesPerNode": {"limits": RESOURCES}},
            },
        }
        return ("trainer.kubeflow.org", "v1alpha1", "trainjobs"), body
    replica = {"restartPolicy": "OnFailure", "template": _pod_template("pytorch")}
    specs = {"Master": {**replica, "replicas": 1}}
    if workers > 1:
        specs["Worker"] = {**replica, "replicas": workers - 1}
    body = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name},
        "spec": {"pytorchReplicaSpecs": specs},
    }
    return ("kubeflow.org", "v1", "pytorchjobs"), body


class ChildWatch(threading.Thread):
    """When each job's first child appeared: the batch Job (ours, baseline) or the JobSet
    (Trainer). The training-operator creates pods itself: no child but the pods."""

    def __init__(self, api: Any, system: str, namespace: str) -> None:
        super().__init__(daemon=True)
        self.api, self.system, self.namespace = api, system, namespace
        self.created_at: dict[str, float] = {}
        self.stop = threading.Event()

    def _stream(self) -> Any:
        w = watch.Watch()
        if self.system == "trainer":
            custom = client.CustomObjectsApi(self.api)
            return w.stream(
                custom.list_namespaced_custom_object,
                "jobset.x-k8s.io",
                "v1alpha2",
                self.namespace,
                "jobsets",
                timeout_seconds=30,
            )
        batch = client.BatchV1Api(self.api)
        return w.stream(batch.list_namespaced_job, self.namespace, timeout_seconds=30)

    def run(self) -> None:
        if self.system == "pytorchjob":
            return
        while not self.stop.is_set():
            try:
                for ev in self._stream():
                    obj = ev["object"]
                    meta = obj["metadata"] if isinstance(obj, dict) else obj.metadata.to_dict()
                    labels = meta.get("labels") or {}
                    key = labels.get("torchyard.io/job-name") or meta["name"]
                    self.created_at.setdefault(key, time.time())
                    if self.stop.is_set():
                        break
            except Exception:
                time.sleep(0.2)


def _rss_now(pid: int) -> float:
    """Resident set (MiB) now: the Kubeflow controllers run for the whole benchmark, so their
    peak (VmHWM) spans earlier runs too."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class LoadSampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(2.0):
            self.samples.append(os.getloadavg()[0])


#: The Kubeflow controllers, started once for the whole run (see :func:`start_kubeflow`).
_KUBEFLOW: dict[str, kubeflow.Controller] = {}


def start_kubeflow(cluster: Any, api: Any, systems: list[str], workers: int) -> None:
    """Start the Kubeflow controllers the ``systems`` need, once: they are cluster-wide, and
    installing their CRDs takes minutes on this loaded machine. They stay up (idle, watching)
    through every system's runs, so each run has the same background."""
    for system in systems:
        for name in SYSTEMS[system][1]:
            if name in kubeflow.VERSIONS and name not in _KUBEFLOW:
                print(f"starting {name} {kubeflow.VERSIONS[name]}", flush=True)
                _KUBEFLOW[name] = kubeflow.start(cluster, name, timeout=600)
    if "trainer" in systems:
        custom = client.CustomObjectsApi(api)
        try:
            custom.create_cluster_custom_object(
                "trainer.kubeflow.org", "v1alpha1", "clustertrainingruntimes", runtime(workers)
            )
        except client.ApiException as e:
            if e.status != 409:
                raise


def stop_kubeflow() -> None:
    for ctl in reversed(list(_KUBEFLOW.values())):
        ctl.stop()
    _KUBEFLOW.clear()


def _start_controllers(
    system: str, cluster: Any, api: Any, ns: str, log_dir: Path
) -> list[tuple[str, Any, int]]:
    """(name, handle, pid) of the processes that serve ``system``'s jobs; ours and the
    baseline are started per run (they watch one namespace)."""
    if system in ("torchyard", "baseline"):
        kc = kubeflow.ensure_identity(cluster, api, system)
        proc, _port = _start_operator(system, ns, kc, log_dir / f"{system}.log")
        return [(system, proc, proc.pid)]
    return [(n, _KUBEFLOW[n], _KUBEFLOW[n].pid) for n in SYSTEMS[system][1]]


def _stop_controllers(procs: list[tuple[str, Any, int]]) -> None:
    for _name, handle, _pid in procs:
        if isinstance(handle, kubeflow.Controller):
            continue  # stopped at the end (stop_kubeflow)
        handle.terminate()
        try:
            handle.wait(timeout=30)
        except Exception:
            handle.kill()


def _new_namespace(core: Any, system: str) -> str:
    ns = f"kf-{system}-{uuid.uuid4().hex[:5]}"
    labels = {kubeflow.NAMESPACE_LABEL: "true"}
    core.create_namespace({"metadata": {"name": ns, "labels": labels}})
    deadline = time.monotonic() + 60
    while True:
        try:
            core.read_namespaced_service_account("default", ns)
            return ns
        except client.ApiException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


#: What a run leaves in its namespace; finalizers are cleared after its controllers stopped.
_KINDS = (
    ("torchyard.io", "v1alpha1", "trainingjobs"),
    ("trainer.kubeflow.org", "v1alpha1", "trainjobs"),
    ("jobset.x-k8s.io", "v1alpha2", "jobsets"),
    ("kubeflow.org", "v1", "pytorchjobs"),
)


def _delete_namespace(api: Any, ns: str) -> None:
    """Delete the run's namespace and wait until it is gone. Held pods keep the Job
    controller's ``job-tracking`` finalizer until that controller gets to them (minutes on
    this loaded machine; the pods' GPUs stay taken meanwhile), and a CR's finalizer has no
    controller left to remove it: both are cleared here (the measurement is over)."""
    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)
    core.delete_namespace(ns, propagation_policy="Background")
    clear = {"metadata": {"finalizers": None}}
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            core.read_namespace(ns)
        except client.ApiException as e:
            if e.status == 404:
                return
        for pod in core.list_namespaced_pod(ns).items:
            if pod.metadata.finalizers:
                with contextlib.suppress(client.ApiException):
                    core.patch_namespaced_pod(pod.metadata.name, ns, clear)
        for group, version, plural in _KINDS:
            with contextlib.suppress(client.ApiException):
                listing = custom.list_namespaced_custom_object(group, version, ns, plural)
                for obj in listing.get("items") or []:
                    if obj["metadata"].get("finalizers"):
                        custom.patch_namespaced_custom_object(
                            group, version, ns, plural, obj["metadata"]["name"], clear
                        )
        time.sleep(2.0)


def results_path(jobs: int, workers: int) -> Path:
    if (jobs, workers) == DEFAULT_SIZE:
        return RESULTS
    return RESULTS.with_name(f"kubeflow_compare_{jobs}x{workers}.json")


def section_title(jobs: int, workers: int) -> str:
    if (jobs, workers) == DEFAULT_SIZE:
        return SECTION
    return f"## Beside Kubeflow at {jobs:,} × {workers} (bench/kubeflow_compare.py)"


def _done(system: str, jobs: int, pods: PodWatch, children: ChildWatch, until: str) -> bool:
    if system in NO_PODS:
        return len(children.created_at) >= jobs
    with pods.lock:
        return len(pods.running_at if until == "running" else pods.created_at) >= jobs


def _burst(
    system: str,
    api: Any,
    ns: str,
    jobs: int,
    workers: int,
    pods: PodWatch,
    children: ChildWatch,
    until: str,
) -> tuple[dict[str, float], float, float]:
    """Submit the jobs (16 threads); wait until all their pods Run or exist (``until``), or,
    for a system in :data:`NO_PODS`, all their children exist. (submit times, t0, t_end)"""
    custom = client.CustomObjectsApi(api)
    submitted: dict[str, float] = {}

    def submit(i: int) -> None:
        name = f"j{i:04d}"
        (group, version, plural), body = manifest(system, name, workers)
        submitted[name] = time.time()
        custom.create_namespaced_custom_object(group, version, ns, plural, body)

    t0 = time.time()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(submit, range(jobs)))
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        if _done(system, jobs, pods, children, until):
            break
        time.sleep(0.25)
    return submitted, t0, time.time()


def run_one(
    system: str, cluster: Any, api: Any, jobs: int, workers: int, until: str = "running"
) -> dict[str, Any]:
    core = client.CoreV1Api(api)
    log_dir = ROOT / "bench" / "results" / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    ns = _new_namespace(core, system)
    procs = _start_controllers(system, cluster, api, ns, log_dir)
    try:
        pods = PodWatch(core, ns, workers, label=SYSTEMS[system][0])
        children = ChildWatch(api, system, ns)
        load = LoadSampler()
        for t in (pods, children, load):
            t.start()
        time.sleep(1.0)
        cpu0 = {n: _proc_stats(pid)[0] for n, _h, pid in procs}
        flows0 = kubeflow.flow_counts(api)
        load0 = round(os.getloadavg()[0], 2)
        submitted, t0, _t1 = _burst(system, api, ns, jobs, workers, pods, children, until)
        stats = {n: _proc_stats(pid) for n, _h, pid in procs}
        now_rss = {n: round(_rss_now(pid), 1) for n, _h, pid in procs}
        time.sleep(3.0)  # trailing status writes
        flows1 = kubeflow.flow_counts(api)
        for t in (pods, children, load):
            t.stop.set()
        with pods.lock:
            created, running = dict(pods.created_at), dict(pods.running_at)
        child = dict(children.created_at)
    finally:
        _stop_controllers(procs)
        _delete_namespace(api, ns)
    names = [n for n, _h, _p in procs]
    requests = {n: flows1.get(n, 0.0) - flows0.get(n, 0.0) for n in names}
    return _result(
        system, jobs, workers, submitted, t0, created, running, child,
        cpu={n: round(stats[n][0] - cpu0[n], 2) for n in names},
        rss={n: round(stats[n][1], 1) for n in names},
        now_rss=now_rss,
        requests=requests,
        load=(load0, round(os.getloadavg()[0], 2), load.samples),
    )  # fmt: skip


def _result(
    system: str,
    jobs: int,
    workers: int,
    submitted: dict[str, float],
    t0: float,
    created: dict[str, float],
    running: dict[str, float],
    child: dict[str, float],
    *,
    cpu: dict[str, float],
    rss: dict[str, float],
    now_rss: dict[str, float],
    requests: dict[str, float],
    load: tuple[float, float, list[float]],
) -> dict[str, Any]:
    to_created = [created[j] - submitted[j] for j in created if j in submitted]
    to_running = [running[j] - submitted[j] for j in running if j in submitted]
    to_child = [child[j] - submitted[j] for j in child if j in submitted]
    span = (max(created.values()) - t0) if created else float("nan")
    child_span = (max(child.values()) - t0) if child else float("nan")
    return {
        "system": system,
        "jobs": jobs,
        "workers": workers,
        "jobs_all_pods_created": len(created),
        "jobs_all_running": len(running),
        "jobs_per_s": round(len(created) / span, 2) if span > 0 else None,
        "pods_per_s": round(len(created) * workers / span, 1) if span > 0 else None,
        "child_jobs_per_s": round(len(child) / child_span, 2) if child_span > 0 else None,
        "child_created_p50_s": round(_pct(to_child, 0.5), 3) if to_child else None,
        "child_created_p99_s": round(_pct(to_child, 0.99), 3) if to_child else None,
        "pods_created_p50_s": round(_pct(to_created, 0.5), 3),
        "pods_created_p99_s": round(_pct(to_created, 0.99), 3),
        "running_p50_s": round(_pct(to_running, 0.5), 3) if to_running else None,
        "running_p99_s": round(_pct(to_running, 0.99), 3) if to_running else None,
        "controller_cpu_s": round(sum(cpu.values()), 2),
        "controller_peak_rss_mib": round(sum(rss.values()), 1),
        "controller_rss_mib": round(sum(now_rss.values()), 1),
        "api_requests_per_job": round(sum(requests.values()) / jobs, 2),
        "by_controller": {
            n: {
                "cpu_s": cpu[n],
                "peak_rss_mib": rss[n],
                "rss_mib": now_rss[n],
                "api_per_job": round(requests[n] / jobs, 2),
            }
            for n in cpu
        },
        "load_1m_before": load[0],
        "load_1m_after": load[1],
        "load_1m_mean": round(statistics.fmean(load[2]), 2) if load[2] else None,
    }


def _median(runs: list[dict[str, Any]], system: str) -> dict[str, Any] | None:
    mine = [r for r in runs if r["system"] == system]
    if not mine:
        return None
    out: dict[str, Any] = {"system": f"{system} (median of {len(mine)})"}
    for key, value in mine[0].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            vals = [r[key] for r in mine if isinstance(r.get(key), int | float)]
            out[key] = round(statistics.median(vals), 3) if vals else None
    return out


COLS = [
    ("jobs/s (child)", "child_jobs_per_s"),
    ("jobs/s (all pods)", "jobs_per_s"),
    ("pods/s", "pods_per_s"),
    ("submit→child p50 (s)", "child_created_p50_s"),
    ("p99 (s)", "child_created_p99_s"),
    ("submit→pods created p50 (s)", "pods_created_p50_s"),
    ("p99 (s)", "pods_created_p99_s"),
    ("submit→Running p50 (s)", "running_p50_s"),
    ("p99 (s)", "running_p99_s"),
    ("CPU (s)", "controller_cpu_s"),
    ("RSS after burst (MiB)", "controller_rss_mib"),
    ("peak RSS (MiB)", "controller_peak_rss_mib"),
    ("API req/job", "api_requests_per_job"),
    ("load 1m before/mean/after", "load"),
]


def _cell(r: dict[str, Any], key: str) -> str:
    if key == "load":
        return f"{r.get('load_1m_before')}/{r.get('load_1m_mean')}/{r.get('load_1m_after')}"
    v = r.get(key)
    return "–" if v is None or v != v else str(v)  # v != v: NaN (no pods in that run)


def section(data: dict[str, Any]) -> str:
    gpus = data.get("gpus_per_node", 8)
    until = (
        "all pods Running"
        if data.get("until", "running") == "running"
        else "all pods created (Pending pods count: the nodes' GPUs hold only part of them)"
    )
    lines = [
        section_title(data["jobs"], data["workers"]),
        "",
        f"One burst of {data['jobs']} jobs × {data['workers']} workers (1 GPU each) on a dev "
        f"cluster of its own with {data['nodes']} KWOK nodes × {gpus} GPUs, waited to {until}; "
        "one system at a time "
        "(the Kubeflow controllers started once and left up, ours and the empty operator "
        "started per run), in the order "
        f"{', '.join(data['order'])}. Machine: {data['machine']}. Controllers: "
        + "; ".join(
            f"{k} {v}"
            for k, v in data["versions"].items()
            if any(k in SYSTEMS[s][1] for s in set(data["order"]))
        )
        + ". Child = the batch Job (torchyard, baseline) or the JobSet (Trainer); the "
        "training-operator creates the pods itself. CPU and RSS are the controllers' processes "
        "summed (Trainer + JobSet); API req/job counts every request of the controllers' users "
        "(reads, writes and watch starts; FlowSchema per user).",
        "",
        "| system | " + " | ".join(c for c, _ in COLS) + " |",
        "|---|" + "---:|" * len(COLS),
    ]
    # a median of one run is that run again
    several = any(int(str(m["system"]).split("median of ")[-1].rstrip(")")) > 1
                  for m in data["medians"].values() if m)  # fmt: skip
    rows = [*data["runs"], *([m for m in data["medians"].values() if m] if several else [])]
    for r in rows:
        lines.append(f"| {r['system']} | " + " | ".join(_cell(r, k) for _, k in COLS) + " |")
    lines.append("")
    for k, v in data["ratios"].items():
        lines.append(f"- {k} (torchyard ÷ the other{', medians' if several else ''}): **{v}**")
    for note in data.get("notes", []):
        lines.append(f"- {note}")
    return "\n".join(lines) + "\n"


def write_doc(data: dict[str, Any]) -> None:
    replace_doc_section(DOC, section_title(data["jobs"], data["workers"]), section(data))


def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None, key: str) -> float | None:
    if not a or not b or not a.get(key) or not b.get(key):
        return None
    return round(a[key] / b[key], 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--jobs", type=int, default=100)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--nodes", type=int, default=50)
    p.add_argument("--order", default="torchyard,trainer,pytorchjob,baseline")
    p.add_argument(
        "--allow-no-jobset",
        action="store_true",
        help="JobSet not built: run Trainer to its JobSets only (no pods)",
    )
    p.add_argument("--rounds", type=int, default=2, help="2: the order, then reversed (ABBA)")
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument(
        "--until",
        choices=("running", "created"),
        default="running",
        help="wait for all pods Running, or only created (when the GPUs cannot hold them all)",
    )
    p.add_argument(
        "--render", action="store_true", help="only rewrite the doc section from the JSON"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results JSON (default: bench/results/kubeflow_compare[_JOBSxWORKERS].json); "
        "also what --render reads",
    )
    p.add_argument("--no-doc", action="store_true", help="do not rewrite the doc section")
    args = p.parse_args()
    out = args.out or results_path(args.jobs, args.workers)
    if args.render:
        write_doc(json.loads(out.read_text()))
        return
    state_dir = Path(os.environ["TORCHYARD_DEV_CLUSTER_DIR"])
    if state_dir.resolve() == SHARED_DIR.resolve():
        raise SystemExit("refusing the shared dev cluster: set TORCHYARD_DEV_CLUSTER_DIR")
    order = args.order.split(",")
    missing = [n for s in order for n in SYSTEMS[s][1] if n in kubeflow.VERSIONS]
    missing = [n for n in missing if not kubeflow.ready(n)]
    if missing == ["jobset"] and args.allow_no_jobset:
        missing = []
    if missing:
        raise SystemExit(f"not built: {missing} (hack/build-kubeflow.sh)")
    cluster = devcluster.up(nodes=args.nodes, gpus_per_node=args.gpus_per_node, timeout=400)
    api = cluster.api_client()
    from torchyard_devcluster.crds import apply_crds

    apply_crds(api, ROOT / "crds")
    if args.allow_no_jobset and "trainer" in order and not kubeflow.ready("jobset"):
        trainer_without_jobset(api)
    sequence = [s for i in range(args.rounds) for s in (order if i % 2 == 0 else order[::-1])]
    runs = []
    try:
        start_kubeflow(cluster, api, order, args.workers)
        for system in sequence:
            print(f"== {system}", flush=True)
            r = run_one(system, cluster, api, args.jobs, args.workers, args.until)
            print(json.dumps(r), flush=True)
            runs.append(r)
            out.with_suffix(".partial.json").write_text(json.dumps(runs, indent=2))
    finally:
        stop_kubeflow()
    medians = {s: _median(runs, s) for s in order}
    ours = medians.get("torchyard")
    ratios = {
        f"torchyard vs {s}, jobs/s to the first child": _ratio(
            ours, medians.get(s), "child_jobs_per_s"
        )
        for s in order
        if s not in ("torchyard", "pytorchjob")
    }
    ratios |= {
        f"torchyard vs {s}, jobs/s to all pods": _ratio(ours, medians.get(s), "jobs_per_s")
        for s in order
        if s != "torchyard" and s not in NO_PODS
    }
    ratios.update(
        {
            f"torchyard vs {s}, RSS after burst": _ratio(ours, medians.get(s), "controller_rss_mib")
            for s in order
            if s != "torchyard"
        }
    )
    data = {
        "title": "torchyard beside Kubeflow Trainer v2, training-operator v1, empty Kopf operator",
        "jobs": args.jobs,
        "workers": args.workers,
        "nodes": args.nodes,
        "gpus_per_node": args.gpus_per_node,
        "until": args.until,
        "order": sequence,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "versions": dict(kubeflow.VERSIONS),
        "runs": runs,
        "medians": medians,
        "ratios": ratios,
        "notes": [*([NO_PODS_NOTE] if NO_PODS else []), *NOTES],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2) + "\n")
    if args.no_doc:
        print(f"wrote {out}")
    else:
        write_doc(data)
        print(f"wrote {out} and {DOC}")
    api.close()


if __name__ == "__main__":
    main()
