"""The serving builders (torchyard.builders.serving) and `torchyard deploy --dry-run/--kserve`:
pure data in, Kubernetes objects out."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from torchyard.api.contract import DEFAULT_METRICS_PORT, Label
from torchyard.api.modelversion import MODEL_LABEL
from torchyard.builders.serving import (
    HTTP_PORT,
    METRICS_PORT_NAME,
    ROLE_SERVING,
    VERSION_LABEL,
    ServingError,
    ServingOptions,
    ServingTarget,
    build_deployment,
    build_inference_service,
    build_service,
    target_from_version,
)
from torchyard.builders.workers import METRICS_PORT_NAME_REGEX
from torchyard.cli import app

URI = "pvc://models/store/digits-mlp/v3"


def _version(phase: str = "Ready") -> dict[str, Any]:
    return {
        "apiVersion": "torchyard.io/v1alpha1", "kind": "ModelVersion",
        "metadata": {"name": "digits-mlp-v3", "namespace": "team-a", "uid": "u-123"},
        "spec": {"model": "digits-mlp", "version": 3, "aliases": ["production"],
                 "artifact": {"uri": URI, "sha256": "ab" * 32}},
        "status": {"phase": phase},
    }


def test_deployment_serves_the_version_read_only_owned_by_it() -> None:
    target = target_from_version(_version())
    dep = build_deployment(target, ServingOptions(cpu="1500m", memory="2Gi"))
    meta, pod = dep["metadata"], dep["spec"]["template"]
    assert meta["name"] == "digits-mlp-v3"
    assert meta["namespace"] == "team-a"
    [owner] = meta["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("ModelVersion", "digits-mlp-v3",
                                                            "u-123")
    labels = pod["metadata"]["labels"]
    assert labels[Label.ROLE] == ROLE_SERVING
    assert (labels[MODEL_LABEL], labels[VERSION_LABEL]) == ("digits-mlp", "3")
    # the selector picks exactly these pods
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    [c] = pod["spec"]["containers"]
    args = c["args"]
    assert args[args.index("--model-dir") + 1] == "/mnt/torchyard/models/store/digits-mlp/v3"
    assert args[args.index("--threads") + 1] == "2"  # 1500m -> two whole cores
    [store] = [v for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert store["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    mount = next(m for m in c["volumeMounts"] if m["name"] == store["name"])
    assert mount == {"name": store["name"], "mountPath": "/mnt/torchyard/models",
                     "readOnly": True}
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert c["resources"]["limits"]["memory"] == "2Gi"
    assert pod["metadata"]["annotations"]["torchyard.io/model-sha256"] == "ab" * 32


def test_pods_meet_the_restricted_pod_security_standard() -> None:
    pod = build_deployment(target_from_version(_version()), ServingOptions())["spec"]["template"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    sc = pod["spec"]["containers"][0]["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert sc["readOnlyRootFilesystem"] is True
    # a read-only root needs a writable /tmp
    assert any(m["mountPath"] == "/tmp" for m in pod["spec"]["containers"][0]["volumeMounts"])


def test_metrics_port_follows_the_workers_convention_and_the_service_exposes_both() -> None:
    import re

    t = target_from_version(_version())
    ports = {p["name"]: p["containerPort"] for p in
             build_deployment(t, ServingOptions())["spec"]["template"]["spec"]["containers"][0][
                 "ports"]}
    assert ports == {"http": HTTP_PORT, METRICS_PORT_NAME: DEFAULT_METRICS_PORT}
    assert re.fullmatch(METRICS_PORT_NAME_REGEX, METRICS_PORT_NAME)
    svc = build_service(t, ServingOptions())
    assert svc["spec"]["selector"] == build_deployment(t, ServingOptions())["spec"]["selector"][
        "matchLabels"]
    assert {p["port"] for p in svc["spec"]["ports"]} == {HTTP_PORT, DEFAULT_METRICS_PORT}
    assert svc["metadata"]["ownerReferences"][0]["uid"] == "u-123"


def test_a_stable_name_and_a_long_model_name() -> None:
    t = target_from_version(_version())
    assert build_deployment(t, ServingOptions(name="digits-prod"))["metadata"]["name"] == \
        "digits-prod"
    long = ServingTarget("m" * 70, 12, URI)
    name = build_deployment(long, ServingOptions())["metadata"]["name"]
    assert len(name) <= 63
    assert name.endswith("-v12")


@pytest.mark.parametrize("phase", ["Missing", "Deleting"])
def test_a_missing_or_deleting_version_is_not_served(phase: str) -> None:
    with pytest.raises(ServingError, match=phase):
        target_from_version(_version(phase))


def test_an_object_store_needs_kserve() -> None:
    t = ServingTarget("digits-mlp", 3, "s3://bucket/models/digits-mlp/v3")
    with pytest.raises(ServingError, match="--kserve"):
        build_deployment(t, ServingOptions())
    isvc = build_inference_service(t, ServingOptions())
    [c] = isvc["spec"]["predictor"]["containers"]
    assert {"name": "STORAGE_URI", "value": t.uri} in c["env"]
    assert c["args"][c["args"].index("--model-dir") + 1] == "/mnt/models"


def test_inference_service_is_a_v2_custom_predictor_with_prometheus_annotations() -> None:
    isvc = build_inference_service(target_from_version(_version()), ServingOptions())
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1",
                                                  "InferenceService")
    assert isvc["spec"]["predictor"]["protocolVersion"] == "v2"
    ann = isvc["metadata"]["annotations"]
    assert ann["prometheus.kserve.io/port"] == str(DEFAULT_METRICS_PORT)
    [c] = isvc["spec"]["predictor"]["containers"]
    assert c["name"] == "kserve-container"
    assert c["command"] == ["python", "-m", "torchyard_trainer.serve"]


def test_cli_dry_run_and_kserve_print_yaml_without_a_cluster() -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["deploy", "digits-mlp/v3", "--uri", URI, "--dry-run", "-n", "ns1"])
    assert res.exit_code == 0, res.output
    docs = list(yaml.safe_load_all(res.stdout))
    assert [d["kind"] for d in docs] == ["Deployment", "Service"]
    assert {d["metadata"]["namespace"] for d in docs} == {"ns1"}
    assert "ownerReferences" not in docs[0]["metadata"]  # no ModelVersion object: no owner
    res = runner.invoke(app, ["deploy", "digits-mlp/v3", "--uri", URI, "--kserve"])
    assert res.exit_code == 0, res.output
    assert [d["kind"] for d in yaml.safe_load_all(res.stdout)] == ["InferenceService"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["digits-mlp@production", "--uri", URI, "--dry-run"], "--uri serves one folder"),
        (["Digits!", "--dry-run"], "expected <model>@<alias> or <model>/v<N>"),
    ],
)
def test_cli_usage_errors(args: list[str], message: str) -> None:
    res = CliRunner().invoke(app, ["deploy", *args])
    assert res.exit_code == 2
    assert message in res.output


def test_pod_monitor_scrapes_the_metrics_port_of_exactly_these_pods() -> None:
    from torchyard.builders.serving import build_pod_monitor

    t = target_from_version(_version())
    pm = build_pod_monitor(t, ServingOptions())
    assert pm["spec"]["selector"]["matchLabels"] == build_deployment(t, ServingOptions())[
        "spec"]["selector"]["matchLabels"]
    [endpoint] = pm["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == METRICS_PORT_NAME
    assert endpoint["honorLabels"] is False
    res = CliRunner().invoke(app, ["deploy", "digits-mlp/v3", "--uri", URI, "--dry-run",
                                   "--pod-monitor"])
    assert [d["kind"] for d in yaml.safe_load_all(res.stdout)] == ["Deployment", "Service",
                                                                 "PodMonitor"]
