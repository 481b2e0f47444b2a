"""Serving on the real node, the lifecycle of docs/models.md end to end: examples/digits-ddp.yaml
trains on two real pods, examples/compress-quantize.yaml quantizes its model (dynamic int8), the
operator records both ModelVersions; ``torchyard promote digits-mlp@production vN`` and
``torchyard deploy digits-mlp@production`` (the int8 one by ``digits-mlp-int8/vN``), the CLI as
a user runs it, with ``--pod-monitor``; the serving pods run the trainer image on the real node
with the model claim mounted read-only, and answer Open Inference Protocol v2 requests.

How the requests get there: from this host straight to the pod's address (the node's CNI bridge
``tyd0`` is this host's interface, pods are routable from here), and once through the
Service's ClusterIP (kube-proxy's iptables rules apply to this host's own traffic too).

What is compared, and the tolerance: the served outputs for 64 real digits (the held-out split
the trainer uses) against the same version loaded on this host from the claim's folder (the
local PV), (a) by the loader the server itself runs (``torchyard_trainer.serve.model.load``)
and (b) by the compression code's loader that verified the CompressionJob's report
(``compress.stored.load_version``); atol and rtol 1e-5 for both variants. Same weights file
(sha256-checked by the server), same torch, one intra-op thread on both sides: what is left is
float summation order; JSON carries float32 values exactly. Dynamic int8 quantizes activations
per batch, so the reference gets the very batch the server got; the quantized kernels are the
same fbgemm ones on the same CPU, hence the same tolerance as fp32.

Prometheus: upstream's (hack/build-prometheus.sh, Kubernetes discovery compiled in) discovers
the serving pods with ``kubernetes_sd_configs`` (role pod, the real cluster's kubeconfig) from
the PodMonitors ``deploy --pod-monitor`` created (the real Prometheus Operator CRD is installed
first), converted as prometheus-operator would (tests/e2e/test_prometheus_sd.py's converter);
``torchyard_serving_requests_total`` then counts exactly the requests this test sent, with the
namespace and pod of the target."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

import torchyard_devcluster as devcluster
from tests.e2e.test_prometheus_sd import (  # noqa: F401 - prometheus_k8s_sd: the fixture
    Prom,
    _start_prometheus,
    podmonitor_scrape_configs,
    prometheus_k8s_sd,
)
from torchyard_devcluster import realconfig
from torchyard_devcluster.testing import Kube, poll

from . import jobkit, servekit
from .jobkit import EXAMPLES, Release, wait_finished
from .servekit import GROUP, MONITORING, VERSION, V2Client, infer_request

pytestmark = pytest.mark.real

TRAINING, COMPRESSION = EXAMPLES / "digits-ddp.yaml", EXAMPLES / "compress-quantize.yaml"
ALIAS = "production"
SAMPLES = 64
TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}


@dataclass
class Served:
    variant: str
    model: str
    version: int
    uri: str
    deployment: str
    deploy_stdout: str
    pod: Any
    client: V2Client


@dataclass
class Lifecycle:
    namespace: str
    served: dict[str, Served]


def _run_example(cluster: devcluster.DevCluster, kube: Kube, ns: str, path: Path) -> Any:
    doc = yaml.safe_load(path.read_text())
    cluster.kubectl("apply", "-n", ns, "-f", str(path))
    job = wait_finished(kube, ns, doc["metadata"]["name"], doc["kind"])
    assert job["status"]["phase"] == "Succeeded", job["status"]
    return job["status"]["model"]


def _model_version(kube: Kube, ns: str, name: str) -> Any:
    from kubernetes import client

    try:
        return kube.custom.get_namespaced_custom_object(GROUP, VERSION, ns, "modelversions", name)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _deploy(
    cluster: devcluster.DevCluster,
    kube: Kube,
    ns: str,
    ref: str,
    model: Any,
    image: str,
    variant: str,
) -> Served:
    res = servekit.torchyard(
        cluster,
        "deploy",
        ref,
        "-n",
        ns,
        "--image",
        image,
        "--image-pull-policy",
        "IfNotPresent",
        "--cpu",
        "500m",
        "--pod-monitor",
    )
    assert res.returncode == 0, res.stderr
    name = f"{model['name']}-v{model['version']}"
    servekit.wait_deployment_ready(kube, ns, name)
    # the wait `deploy` prints, as a user runs it (done by now: the replica is Ready)
    wait = next(ln for ln in res.stdout.splitlines() if ln.strip().startswith("wait:"))
    assert wait.split(":", 1)[1].split() == [
        "kubectl",
        "rollout",
        "status",
        "-n",
        ns,
        f"deployment/{name}",
    ], res.stdout
    cluster.kubectl("rollout", "status", "-n", ns, f"deployment/{name}", "--timeout=60s")
    (pod,) = [p for p in servekit.pods_of(kube, ns, name) if p.status.pod_ip]
    client = V2Client(f"http://{pod.status.pod_ip}:8080", model["name"])
    return Served(
        variant, model["name"], int(model["version"]), model["uri"], name, res.stdout, pod, client
    )


@pytest.fixture(scope="module")
def lifecycle(
    real_cluster: devcluster.DevCluster, kube: Kube, release: Release, trainer_image: str
) -> Iterator[Lifecycle]:
    with jobkit.jobs_namespace(real_cluster, kube) as ns:
        fp32 = _run_example(real_cluster, kube, ns, TRAINING)
        int8 = _run_example(real_cluster, kube, ns, COMPRESSION)
        for m in (fp32, int8):
            name = f"{m['name']}-v{m['version']}"
            poll(
                lambda n=name: _model_version(kube, ns, n), timeout=300, what=f"ModelVersion {name}"
            )
        servekit.install_pod_monitor_crd(real_cluster)
        promoted = servekit.torchyard(
            real_cluster, "promote", f"{fp32['name']}@{ALIAS}", f"v{fp32['version']}", "-n", ns
        )
        assert promoted.returncode == 0, promoted.stderr
        assert f"{fp32['name']}@{ALIAS} -> {fp32['name']}-v{fp32['version']}" in promoted.stdout
        served = {
            "fp32": _deploy(
                real_cluster, kube, ns, f"{fp32['name']}@{ALIAS}", fp32, trainer_image, "fp32"
            ),
            "int8": _deploy(
                real_cluster,
                kube,
                ns,
                f"{int8['name']}/v{int8['version']}",
                int8,
                trainer_image,
                "int8",
            ),
        }
        try:
            yield Lifecycle(ns, served)
        finally:
            for s in served.values():
                s.client.http.close()


@pytest.fixture(scope="module")
def digits() -> Any:
    import torch

    from tests.worker.serve_versions import digits as load_digits

    torch.set_num_threads(1)  # as the pods (--cpu 500m -> one thread): same summation order
    return load_digits()


# ------------------------------------------------------------------------------- the objects


def test_deploy_by_alias_runs_the_promoted_version_on_the_real_node(
    real_cluster: devcluster.DevCluster, kube: Kube, lifecycle: Lifecycle, trainer_image: str
) -> None:
    ns, s = lifecycle.namespace, lifecycle.served["fp32"]
    assert (
        f"deployment/{s.deployment}, service/{s.deployment}, podmonitor/{s.deployment} "
        f"applied in {ns}: {s.model} v{s.version} ({s.model}@{ALIAS})"
    ) in s.deploy_stdout
    dep = kube.apps.read_namespaced_deployment(s.deployment, ns)
    assert dep.metadata.labels["torchyard.io/model-alias"] == ALIAS
    [owner] = dep.metadata.owner_references
    assert (owner.kind, owner.name) == ("ModelVersion", s.deployment)
    for served in lifecycle.served.values():
        pod = served.pod
        assert pod.spec.node_name.startswith(realconfig.NODE_PREFIX), pod.spec.node_name
        (container,) = pod.spec.containers
        assert container.image == trainer_image
        [store] = [m for m in container.volume_mounts if m.name == "store"]
        assert store.read_only is True
        claims = [v.persistent_volume_claim for v in pod.spec.volumes if v.persistent_volume_claim]
        assert [c.claim_name for c in claims] == [jobkit.CLAIM]


# ------------------------------------------------------------------------- the v2 protocol


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_health_and_model_metadata(lifecycle: Lifecycle, variant: str) -> None:
    s = lifecycle.served[variant]
    assert s.client.get("/v2/health/ready", "ready").json() == {"ready": True}
    meta = s.client.get(f"/v2/models/{s.model}", "model_metadata").json()
    assert meta["name"] == s.model
    assert meta["versions"] == [str(s.version)]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert meta["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}]


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_outputs_equal_the_saved_version_loaded_on_this_host(
    real_cluster: devcluster.DevCluster, lifecycle: Lifecycle, digits: Any, variant: str
) -> None:
    import torch

    from torchyard_trainer.compress.stored import load_version
    from torchyard_trainer.serve.model import load

    s = lifecycle.served[variant]
    x = digits.val_x[:SAMPLES]
    resp = s.client.infer(infer_request(x.numpy(), f"{variant}-1"))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["model_name"], body["model_version"], body["id"]) == (
        s.model,
        str(s.version),
        f"{variant}-1",
    )
    [out] = body["outputs"]
    assert (out["name"], out["datatype"], out["shape"]) == ("output", "FP32", [SAMPLES, 10])
    got = torch.tensor(out["data"], dtype=torch.float32).reshape(out["shape"])

    version_dir = servekit.host_path(real_cluster, lifecycle.namespace, s.uri)
    served_here = load(version_dir, servekit.claim_dir(real_cluster, lifecycle.namespace))
    assert served_here.variant == variant
    torch.testing.assert_close(got, torch.from_numpy(served_here.predict(x.numpy())), **TOLERANCE)
    saved, card = load_version(version_dir, digits.info)
    with torch.no_grad():
        torch.testing.assert_close(got, saved.eval()(x), **TOLERANCE)
    # the answers are the model's: as accurate as its card says (same held-out split)
    accuracy = float((got.argmax(1) == digits.val_y[:SAMPLES]).float().mean())
    assert accuracy >= card["metrics"]["accuracy"] - 0.1, (accuracy, card["metrics"])


def test_int8_is_not_the_fp32_model(lifecycle: Lifecycle, digits: Any) -> None:
    """The int8 deployment really serves the quantized weights (its outputs differ from fp32's
    beyond the tolerance above, by the quantization error)."""
    import torch

    x = infer_request(digits.val_x[:SAMPLES].numpy(), "pair")
    outs = {
        v: torch.tensor(lifecycle.served[v].client.infer(x).json()["outputs"][0]["data"])
        for v in ("fp32", "int8")
    }
    assert not torch.allclose(outs["fp32"], outs["int8"], **TOLERANCE)


def test_a_bad_request_is_a_400_naming_the_field(lifecycle: Lifecycle, digits: Any) -> None:
    s = lifecycle.served["int8"]
    body = infer_request(digits.val_x[:2].numpy(), "bad")
    body["inputs"][0]["datatype"] = "INT64"
    resp = s.client.infer(body)
    assert resp.status_code == 400
    assert "inputs[0].datatype" in resp.json()["error"]


def test_the_service_cluster_ip_reaches_the_server(kube: Kube, lifecycle: Lifecycle) -> None:
    s = lifecycle.served["fp32"]
    svc = kube.core.read_namespaced_service(s.deployment, lifecycle.namespace)
    via_service = V2Client(f"http://{svc.spec.cluster_ip}:8080", s.model, sent=s.client.sent)
    try:
        assert via_service.get("/v2/health/ready", "ready").json() == {"ready": True}
    finally:
        via_service.http.close()


# ----------------------------------------------------------------------------- Prometheus


@pytest.fixture(scope="module")
def prometheus(
    real_cluster: devcluster.DevCluster,
    kube: Kube,
    lifecycle: Lifecycle,
    prometheus_k8s_sd: str,  # noqa: F811 - the imported fixture
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Prom, dict[str, str]]]:
    """(Prometheus, its scrape job per variant) scraping the serving pods, discovered from the
    PodMonitors `deploy --pod-monitor` created (read back from the API server)."""
    ns, configs, jobs = lifecycle.namespace, [], {}
    for variant, s in lifecycle.served.items():
        pm = kube.custom.get_namespaced_custom_object(
            *MONITORING[:2], ns, MONITORING[2], s.deployment
        )
        configs += podmonitor_scrape_configs(pm, real_cluster.kubeconfig)
        jobs[variant] = f"{ns}/{s.deployment}"
    proc, prom = _start_prometheus(prometheus_k8s_sd, tmp_path_factory.mktemp("prom"), configs)
    try:
        yield prom, jobs
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _requests(prom: Prom, ns: str) -> dict[tuple[str, str], dict[str, Any]]:
    series = prom.query(f'torchyard_serving_requests_total{{namespace="{ns}", handler="infer"}}')
    return {(s["metric"]["model"], s["metric"]["code"]): s for s in series}


def test_prometheus_scrapes_the_requests_sent_with_the_pods_namespace(
    lifecycle: Lifecycle, prometheus: tuple[Prom, dict[str, str]]
) -> None:
    prom, jobs = prometheus
    ns = lifecycle.namespace
    want = {
        (s.model, str(code)): n
        for s in lifecycle.served.values()
        for (handler, code), n in s.client.sent.items()
        if handler == "infer"
    }
    assert want[lifecycle.served["int8"].model, "400"] == 1

    def counted() -> dict[tuple[str, str], dict[str, Any]] | None:
        got = _requests(prom, ns)
        return got if {k: float(v["value"][1]) for k, v in got.items()} == want else None

    got = poll(counted, timeout=120, interval=1, what=f"scraped infer counts {want}")
    for s in lifecycle.served.values():
        for (model, _), series in got.items():
            if model != s.model:
                continue
            labels = series["metric"]
            assert labels["namespace"] == ns, labels
            assert labels["pod"] == s.pod.metadata.name, labels
            assert labels["job"] == jobs[s.variant], labels
            assert labels["version"] == str(s.version), labels
            # the PodMonitor's port: the server's own route label (handler) collides with none
            assert labels["endpoint"] == "metrics-0", labels
            assert not [k for k in labels if k.startswith("exported_")], labels
    info = prom.query(f'torchyard_serving_model_info{{namespace="{ns}"}}')
    assert {i["metric"]["model"]: i["metric"]["variant"] for i in info} == {
        s.model: s.variant for s in lifecycle.served.values()
    }
    # the latency histogram saw every infer request, good and bad
    counts = prom.query(f'torchyard_serving_request_duration_seconds_count{{namespace="{ns}"}}')
    assert {c["metric"]["model"]: float(c["value"][1]) for c in counts} == {
        s.model: float(sum(n for (e, _), n in s.client.sent.items() if e == "infer"))
        for s in lifecycle.served.values()
    }


# ------------------------------------------------------------- versions listed, then deleted


def test_kubectl_shows_the_versions_with_their_lineage(
    real_cluster: devcluster.DevCluster, lifecycle: Lifecycle
) -> None:
    ns, fp32, int8 = lifecycle.namespace, lifecycle.served["fp32"], lifecycle.served["int8"]
    listing = real_cluster.kubectl("get", "modelversions", "-n", ns).stdout
    print(listing)
    rows = {line.split()[0]: line for line in listing.splitlines()[1:]}
    assert set(rows) == {fp32.deployment, int8.deployment}, listing
    assert ALIAS in rows[fp32.deployment], listing  # the ALIASES column
    assert ALIAS not in rows[int8.deployment], listing
    got = yaml.safe_load(
        real_cluster.kubectl("get", "modelversion", int8.deployment, "-n", ns, "-o", "yaml").stdout
    )
    assert got["spec"]["origin"]["source"].startswith("CompressionJob/"), got["spec"]
    assert got["spec"]["origin"]["parent"] == fp32.deployment, got["spec"]
    assert got["spec"]["artifact"]["uri"] == int8.uri
    assert got["status"]["phase"] == "Ready", got["status"]


def _pod_monitors(kube: Kube, ns: str) -> set[str]:
    got = kube.custom.list_namespaced_custom_object(*MONITORING[:2], ns, MONITORING[2])
    return {m["metadata"]["name"] for m in got["items"]}


def test_deleting_a_version_takes_its_serving_and_keeps_its_files(
    real_cluster: devcluster.DevCluster, kube: Kube, lifecycle: Lifecycle
) -> None:
    """Last: the int8 serving goes away with its version (owner reference, garbage collector);
    artifactPolicy Keep (the default) leaves the folder on the claim."""
    from kubernetes import client

    ns, s = lifecycle.namespace, lifecycle.served["int8"]
    real_cluster.kubectl("delete", "modelversion", s.deployment, "-n", ns)
    assert _model_version(kube, ns, s.deployment) is None

    def gone() -> bool:
        try:
            kube.apps.read_namespaced_deployment(s.deployment, ns)
        except client.ApiException as exc:
            return exc.status == 404
        return False

    poll(gone, timeout=300, interval=1, what=f"deployment/{s.deployment} collected")
    poll(
        lambda: s.deployment not in _pod_monitors(kube, ns),
        timeout=300,
        interval=1,
        what=f"podmonitor/{s.deployment} collected",
    )
    assert (servekit.host_path(real_cluster, ns, s.uri) / "model.safetensors").is_file()
    # the other version's serving is untouched
    assert kube.apps.read_namespaced_deployment(lifecycle.served["fp32"].deployment, ns)
