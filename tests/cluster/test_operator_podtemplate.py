"""spec.podTemplate on the real control plane (issue 14): what the override adds reaches the
pods the Job controller creates (read back from the API server), the Secret's value and the
env values are in no ConfigMap, an override of an operator-owned field is refused by the API
server naming the field, and a privileged/hostPath override in a namespace that enforces Pod
Security "restricted" fails the job with a condition naming the policy and the fields."""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from tests.cluster.opkit import (
    condition,
    create,
    example,
    held,
    live_pods,
    running_operator,
    wait_phase,
    wait_running_pods,
    worker_jobs,
)

from torchyard.api.constants import ConditionType, Phase, Reason
from torchyard_devcluster.testing import Kube, poll

pytestmark = pytest.mark.cluster

SECRET_VALUE = "s3cr3t-token-for-the-podtemplate-test"
PLAIN_VALUE = "plain-env-value-for-the-podtemplate-test"
OVERRIDE_VALUE = "override-env-value-for-the-podtemplate-test"


def _job(name: str, pod_template: dict[str, Any] | None) -> dict[str, Any]:
    m = held(example("digits-ddp.yaml"))
    m["metadata"]["name"] = name
    if pod_template is not None:
        m["spec"]["podTemplate"] = copy.deepcopy(pod_template)
    return m


def _secret_and_account(kube: Kube, namespace: str) -> None:
    kube.core.create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": "hub"},
            "data": {"token": base64.b64encode(SECRET_VALUE.encode()).decode()},
        },
    )
    kube.core.create_namespaced_service_account(namespace, {"metadata": {"name": "trainer"}})


OVERRIDE = {
    "metadata": {"labels": {"team": "nlp"}},
    "spec": {
        "serviceAccountName": "trainer",
        "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}}],
        "containers": [
            {
                "name": "worker",
                "env": [
                    {
                        "name": "HF_TOKEN",
                        "valueFrom": {"secretKeyRef": {"name": "hub", "key": "token"}},
                    },
                    {"name": "FROM_OVERRIDE", "value": OVERRIDE_VALUE},
                ],
                "envFrom": [{"secretRef": {"name": "hub"}}],
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
            }
        ],
    },
}


def test_override_reaches_the_pods_and_no_configmap_holds_env_values(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    _secret_and_account(kube, namespace)
    manifest = _job("pt-reach", OVERRIDE)
    manifest["spec"]["env"] = [{"name": "PLAIN", "value": PLAIN_VALUE}]
    with running_operator(kube, namespace, tmp_path):
        create(kube, namespace, manifest)
        pods = wait_running_pods(kube, namespace, "pt-reach", 2)
        for listed in pods:
            pod = kube.core.read_namespaced_pod(listed.metadata.name, namespace)
            assert pod.spec.service_account_name == "trainer"
            assert pod.metadata.labels["team"] == "nlp"
            assert "scratch" in [v.name for v in pod.spec.volumes]
            (worker,) = [c for c in pod.spec.containers if c.name == "worker"]
            env = {e.name: e for e in worker.env}
            ref = env["HF_TOKEN"].value_from.secret_key_ref
            assert (ref.name, ref.key) == ("hub", "token")
            assert env["HF_TOKEN"].value is None  # the value stays in the Secret
            assert env["FROM_OVERRIDE"].value == OVERRIDE_VALUE
            assert env["PLAIN"].value == PLAIN_VALUE
            assert "MASTER_ADDR" in env  # the contract env is still the operator's
            assert [f.secret_ref.name for f in worker.env_from] == ["hub"]
            assert "/scratch" in [m.mount_path for m in worker.volume_mounts]
            assert pod.spec.restart_policy == "Never"
        configmaps = kube.core.list_namespaced_config_map(namespace).items
        assert any(cm.metadata.name == "pt-reach-spec" for cm in configmaps)
        for cm in configmaps:
            text = "".join((cm.data or {}).values())
            for value in (SECRET_VALUE, PLAIN_VALUE, OVERRIDE_VALUE):
                assert value not in text, f"ConfigMap {cm.metadata.name} holds {value!r}"


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"spec": {"restartPolicy": "OnFailure"}}, "podTemplate.spec.restartPolicy"),
        (
            {"spec": {"containers": [{"name": "worker", "command": ["sh", "-c", "true"]}]}},
            "podTemplate.spec.containers[worker].command",
        ),
        (
            {
                "spec": {
                    "containers": [
                        {"name": "worker", "env": [{"name": "MASTER_ADDR", "value": "x"}]}
                    ]
                }
            },
            "podTemplate.spec.containers[worker].env",
        ),
        (
            {"spec": {"containers": [{"name": "worker", "terminationMessagePath": "/tmp/x"}]}},
            "podTemplate.spec.containers[worker].terminationMessagePath",
        ),
    ],
)
def test_an_owned_field_is_refused_naming_it(
    kube: Kube, namespace: str, override: dict[str, Any], field: str
) -> None:
    with pytest.raises(client.ApiException) as exc:
        create(kube, namespace, _job("pt-owned", override))
    assert exc.value.status == 422
    assert field in str(exc.value.body)


PRIVILEGED = {
    "spec": {
        "volumes": [{"name": "host", "hostPath": {"path": "/var/log"}}],
        "containers": [
            {
                "name": "worker",
                "securityContext": {"privileged": True, "allowPrivilegeEscalation": True},
                "volumeMounts": [{"name": "host", "mountPath": "/host-logs"}],
            }
        ],
    }
}


def test_a_privileged_override_in_a_restricted_namespace_fails_naming_field_and_policy(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    kube.core.patch_namespace(
        namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
    )
    with running_operator(kube, namespace, tmp_path):
        # The control: the operator's own pod passes "restricted" in the same namespace.
        create(kube, namespace, _job("pt-allowed", None))
        wait_running_pods(kube, namespace, "pt-allowed", 2)

        create(kube, namespace, _job("pt-privileged", PRIVILEGED))
        failed = wait_phase(kube, namespace, "TrainingJob", "pt-privileged", Phase.FAILED)
        cond = condition(failed, ConditionType.FAILED)
        assert cond["reason"] == Reason.POD_SECURITY_REJECTED, cond
        message = cond["message"]
        assert '"restricted:latest"' in message
        assert "securityContext.privileged=true" in message
        assert "hostPath" in message
        # No Job left behind for the Job controller to retry forever, and no pod.
        poll(
            lambda: (
                not [j for j in worker_jobs(kube, namespace) if j.metadata.name == "pt-privileged"]
            ),
            what="the refused worker Job deleted",
        )
        assert live_pods(kube, namespace, "pt-privileged") == []
