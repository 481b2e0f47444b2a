"""The framework baseline of bench/operator_scale.py: an "empty" Kopf operator that only
creates the same child objects (ConfigMap, Service, Indexed Job — the same builders) from a
plain ``@kopf.on.create`` handler, with Kopf's default settings (progress kept in
annotations: our CRD's status schema has no room for Kopf's fields). No status, no events,
no restarts — what a minimal Kopf operator costs.

Run: ``kopf run --standalone --namespace NS bench/baseline_operator.py``
"""

from __future__ import annotations

from typing import Any

import kopf
from kubernetes import client, config

from torchyard.api import TrainingJob
from torchyard.builders import build_children

_api: dict[str, Any] = {}


@kopf.on.startup()
def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage()
    config.load_kube_config()  # type: ignore[no-untyped-call]
    cfg = client.Configuration.get_default_copy()
    cfg.connection_pool_maxsize = 32
    api = client.ApiClient(cfg)
    _api["core"] = client.CoreV1Api(api)
    _api["batch"] = client.BatchV1Api(api)


@kopf.on.create("torchyard.io", "v1alpha1", "trainingjobs")
def create(body: Any, namespace: str, **_: Any) -> None:
    meta = body["metadata"]
    job = TrainingJob.model_validate(
        {
            "apiVersion": body["apiVersion"],
            "kind": body["kind"],
            "metadata": {"name": meta["name"], "namespace": namespace},
            "spec": dict(body["spec"]),
        }
    )
    children = build_children(
        job, namespace=namespace, default_image="registry.invalid/trainer:bench"
    )
    objs = children.all()
    kopf.adopt(objs)
    for obj in objs:
        try:
            if obj["kind"] == "ConfigMap":
                _api["core"].create_namespaced_config_map(namespace, obj)
            elif obj["kind"] == "Service":
                _api["core"].create_namespaced_service(namespace, obj)
            elif obj["kind"] == "Job":
                _api["batch"].create_namespaced_job(namespace, obj)
        except client.ApiException as e:
            if e.status != 409:
                raise
