"""Child names on the real control plane: a TrainingJob and a CompressionJob of the same name
(a natural choice for a train → compress chain) each get their own ConfigMap and worker Job
(and the two-worker TrainingJob its headless Service; the one-worker CompressionJob needs
none) — the TrainingJob's named after it (what torchrun scripts see), the CompressionJob's
with a ``-cj`` suffix — and both run to the end at the same time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.cluster.opkit import (
    create,
    example,
    held,
    release,
    running_operator,
    wait_phase,
    wait_running_pods,
    worker_jobs,
)

from torchyard.api.constants import Phase
from torchyard_devcluster.testing import Kube

pytestmark = pytest.mark.cluster

NAME = "twin"


def _training() -> dict[str, Any]:
    m = held(example("digits-ddp.yaml"))
    m["metadata"]["name"] = NAME
    return m


def _compression() -> dict[str, Any]:
    m = held(example("compress-quantize.yaml"))
    m["metadata"]["name"] = NAME
    # a stored checkpoint, so it does not wait for the TrainingJob's model
    m["spec"]["source"] = {"model": {"builtin": "mlp", "checkpoint": "file:///models/digits/v1"}}
    return m


def _owner(obj: Any) -> tuple[str, str]:
    (ref,) = [r for r in obj.metadata.owner_references or [] if r.controller]
    return ref.kind, ref.uid


def test_training_and_compression_job_of_the_same_name_get_their_own_children(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    with running_operator(kube, namespace, tmp_path):
        tj = create(kube, namespace, _training())
        cj = create(kube, namespace, _compression())
        uid = {"TrainingJob": tj["metadata"]["uid"], "CompressionJob": cj["metadata"]["uid"]}
        tj_pods = wait_running_pods(kube, namespace, NAME, 2, kind="trainingjob")
        (cj_pod,) = wait_running_pods(kube, namespace, NAME, 1, kind="compressionjob")
        wait_phase(kube, namespace, "TrainingJob", NAME, Phase.RUNNING)
        wait_phase(kube, namespace, "CompressionJob", NAME, Phase.RUNNING)

        # One set of children each, owned by its own job.
        jobs = {j.metadata.name: _owner(j) for j in worker_jobs(kube, namespace)}
        assert jobs == {
            NAME: ("TrainingJob", uid["TrainingJob"]),
            f"{NAME}-cj": ("CompressionJob", uid["CompressionJob"]),
        }
        services = {
            s.metadata.name: s
            for s in kube.core.list_namespaced_service(namespace).items
            if s.metadata.name in (NAME, f"{NAME}-cj")
        }
        assert {n: _owner(s) for n, s in services.items()} == {NAME: jobs[NAME]}
        assert services[NAME].spec.selector["torchyard.io/job-kind"] == "trainingjob"
        maps = {
            c.metadata.name: c
            for c in kube.core.list_namespaced_config_map(namespace).items
            if c.metadata.name.endswith("-spec")
        }
        assert {n: _owner(c) for n, c in maps.items()} == {
            f"{NAME}-spec": jobs[NAME],
            f"{NAME}-cj-spec": jobs[f"{NAME}-cj"],
        }
        assert yaml.safe_load(maps[f"{NAME}-spec"].data["spec.yaml"])["kind"] == "TrainingJob"
        assert yaml.safe_load(maps[f"{NAME}-cj-spec"].data["spec.yaml"])["kind"] == (
            "CompressionJob"
        )

        # The TrainingJob's pods rendezvous through its Service, the CompressionJob's single
        # pod on its loopback address; names users see are kept.
        tj_env = {e.name: e.value for e in tj_pods[0].spec.containers[0].env}
        cj_env = {e.name: e.value for e in cj_pod.spec.containers[0].env}
        assert tj_env["PET_MASTER_ADDR"] == f"{NAME}-0.{NAME}.{namespace}.svc"
        assert cj_env["PET_MASTER_ADDR"] == "127.0.0.1"
        assert tj_env["TORCHYARD_JOB_NAME"] == cj_env["TORCHYARD_JOB_NAME"] == NAME
        assert {p.spec.hostname for p in tj_pods} == {f"{NAME}-0", f"{NAME}-1"}
        assert cj_pod.spec.hostname == f"{NAME}-cj-0"
        assert {p.spec.subdomain for p in tj_pods} == {NAME}
        assert cj_pod.spec.subdomain is None
        volumes = {v.name: v for v in cj_pod.spec.volumes}
        assert volumes["spec"].config_map.name == f"{NAME}-cj-spec"

        release(kube, namespace, [*tj_pods, cj_pod])
        wait_phase(kube, namespace, "TrainingJob", NAME, Phase.SUCCEEDED)
        wait_phase(kube, namespace, "CompressionJob", NAME, Phase.SUCCEEDED)
