"""`torchyard deploy` on the dev control plane: `<model>@<alias>` resolves to the ModelVersion
holding the alias, the Deployment and Service are server-side applied (twice: idempotent),
owned by the version, their pods pass the restricted Pod Security admission, and deleting the
version garbage-collects its serving. (No operator runs here: the ModelVersion has no finalizer,
so its deletion is immediate; the real-node tier is where the served model answers.)"""

from __future__ import annotations

import subprocess
import sys

import pytest

from torchyard.api.constants import GROUP, VERSION
from torchyard.api.modelversion import MODEL_LABEL, MODEL_VERSION_PLURAL
from torchyard_devcluster.testing import Kube, poll

pytestmark = pytest.mark.cluster

URI = "pvc://models/store/digits-mlp/v3"


def _deploy(kube: Kube, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "torchyard.cli", "deploy", *args, "-n", namespace,
         "--kubeconfig", str(kube.cluster.kubeconfig)],
        # generous: the CLI's imports alone took 35 s at load average 30 on the shared machine
        capture_output=True, text=True, timeout=600)


def _version(model: str, number: int, aliases: list[str]) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelVersion",
        "metadata": {"name": f"{model}-v{number}", "labels": {MODEL_LABEL: model}},
        "spec": {"model": model, "version": number, "aliases": aliases,
                 "artifact": {"uri": f"pvc://models/store/{model}/v{number}", "sha256": "a" * 64},
                 "origin": {"source": "TrainingJob/train"}},
    }


def test_deploy_by_alias_owned_by_the_version_and_collected_with_it(
    kube: Kube, namespace: str
) -> None:
    from kubernetes import client

    kube.core.patch_namespace(namespace, {"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "restricted"}}})
    for number, aliases in ((2, []), (3, ["production"])):
        body = _version("digits-mlp", number, aliases)
        kube.custom.create_namespaced_custom_object(GROUP, VERSION, namespace,
                                                    MODEL_VERSION_PLURAL, body)
    mv = kube.custom.get_namespaced_custom_object(GROUP, VERSION, namespace,
                                                  MODEL_VERSION_PLURAL, "digits-mlp-v3")

    for _ in range(2):  # the second apply changes nothing and succeeds
        res = _deploy(kube, namespace, "digits-mlp@production", "--cpu", "100m")
        assert res.returncode == 0, res.stderr
    assert "deployment/digits-mlp-v3" in res.stdout

    dep = kube.apps.read_namespaced_deployment("digits-mlp-v3", namespace)
    svc = kube.core.read_namespaced_service("digits-mlp-v3", namespace)
    for obj in (dep, svc):
        [owner] = obj.metadata.owner_references
        assert (owner.kind, owner.name, owner.uid) == ("ModelVersion", "digits-mlp-v3",
                                                       mv["metadata"]["uid"])
    assert dep.metadata.labels["torchyard.io/model-alias"] == "production"
    args = dep.spec.template.spec.containers[0].args
    assert args[args.index("--model-dir") + 1] == "/mnt/torchyard/models/store/digits-mlp/v3"
    # the ReplicaSet's pod got past restricted admission (a refused pod never exists)
    selector = ",".join(f"{k}={v}" for k, v in dep.spec.selector.match_labels.items())
    poll(lambda: kube.core.list_namespaced_pod(namespace, label_selector=selector).items,
         timeout=120, what="a serving pod")

    missing = _deploy(kube, namespace, "digits-mlp@canary")
    assert missing.returncode == 1
    assert "no ModelVersion digits-mlp@canary" in missing.stderr

    kube.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, MODEL_VERSION_PLURAL,
                                                "digits-mlp-v3")

    def gone() -> bool:
        try:
            kube.apps.read_namespaced_deployment("digits-mlp-v3", namespace)
        except client.ApiException as exc:
            return exc.status == 404
        return False

    poll(gone, timeout=120, what="the Deployment collected with its ModelVersion")
    # the other version's name was never taken
    assert not kube.apps.list_namespaced_deployment(namespace).items or all(
        d.metadata.name != "digits-mlp-v2"
        for d in kube.apps.list_namespaced_deployment(namespace).items)
