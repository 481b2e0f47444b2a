"""torchyard_devcluster.kueue's pure parts: the Kueue Configuration and the rewriting of
Kueue's webhook manifests for a process on 127.0.0.1 (the cluster part is
tests/cluster/test_operator_kueue.py)."""

from __future__ import annotations

import base64
from pathlib import Path

from torchyard_devcluster import kueue

# The shape of config/components/webhook/manifests.yaml in the Kueue module (abridged).
MANIFESTS = """
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: mutating-webhook-configuration
webhooks:
- admissionReviewVersions: [v1]
  clientConfig:
    service: {name: webhook-service, namespace: system, path: /mutate-batch-v1-job}
  failurePolicy: Fail
  name: mjob.kb.io
  rules:
  - apiGroups: [batch]
    apiVersions: [v1]
    operations: [CREATE]
    resources: [jobs]
  sideEffects: None
- admissionReviewVersions: [v1]
  clientConfig:
    service: {name: webhook-service, namespace: system, path: /mutate--v1-pod}
  failurePolicy: Fail
  name: mpod.kb.io
  rules:
  - apiGroups: [""]
    apiVersions: [v1]
    operations: [CREATE]
    resources: [pods]
  sideEffects: None
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata:
  name: validating-webhook-configuration
webhooks:
- admissionReviewVersions: [v1]
  clientConfig:
    service: {name: webhook-service, namespace: system,
              path: /validate-kueue-x-k8s-io-v1beta2-clusterqueue}
  failurePolicy: Fail
  name: vclusterqueue.kb.io
  rules:
  - apiGroups: [kueue.x-k8s.io]
    apiVersions: [v1beta2]
    operations: [CREATE, UPDATE]
    resources: [clusterqueues]
  sideEffects: None
"""


def test_webhooks_point_at_localhost_and_only_batch_and_kueue_types() -> None:
    docs = kueue.webhook_configurations(MANIFESTS, port=9443, ca_bundle=b"CA PEM")
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [
        ("MutatingWebhookConfiguration", "torchyard-dev-kueue-mutating"),
        ("ValidatingWebhookConfiguration", "torchyard-dev-kueue-validating"),
    ]
    mutating, validating = docs
    # The pod webhook (integration "pod" is not enabled) would reject every pod: left out.
    assert [h["name"] for h in mutating["webhooks"]] == ["mjob.kb.io"]
    hook = mutating["webhooks"][0]
    assert hook["clientConfig"] == {
        "url": "https://127.0.0.1:9443/mutate-batch-v1-job",
        "caBundle": base64.b64encode(b"CA PEM").decode(),
    }
    assert hook["namespaceSelector"] == {"matchLabels": {kueue.NAMESPACE_LABEL: "true"}}
    assert hook["failurePolicy"] == "Fail"
    assert [h["name"] for h in validating["webhooks"]] == ["vclusterqueue.kb.io"]
    assert validating["webhooks"][0]["clientConfig"]["url"].endswith(
        "/validate-kueue-x-k8s-io-v1beta2-clusterqueue"
    )


def test_configuration_is_local_and_scoped() -> None:
    cfg = kueue.configuration(webhook_port=1, health_port=2, cert_dir=Path("/c"))
    assert cfg["internalCertManagement"] == {"enable": False}
    assert cfg["webhook"] == {"host": "127.0.0.1", "port": 1, "certDir": "/c"}
    assert cfg["health"]["healthProbeBindAddress"] == "127.0.0.1:2"
    assert cfg["leaderElection"] == {"leaderElect": False}
    assert cfg["integrations"] == {"frameworks": ["batch/job"]}
    assert cfg["managedJobsNamespaceSelector"] == {"matchLabels": {kueue.NAMESPACE_LABEL: "true"}}
