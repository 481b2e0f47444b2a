"""spec.podTemplate: the strategic-merge-like merge into the built worker pod, the fields the
operator owns (rejected by the API model, naming the field, and checked again after the merge),
the spec ConfigMap without env values, and the /dev/shm default of multi-process GPU pods."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from torchyard.api import TrainingJob
from torchyard.api.contract import SPEC_MOUNT_DIR, TERMINATION_MESSAGE_PATH
from torchyard.builders import build_children
from torchyard.builders.podtemplate import PodTemplateConflict, apply_pod_template, merge


def _job(pod_template: dict[str, Any] | None = None, **spec: Any) -> TrainingJob:
    doc: dict[str, Any] = {
        "apiVersion": "torchyard.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "pt", "namespace": "team-a"},
        "spec": {
            "workers": 2,
            "model": {"builtin": "mlp"},
            "data": {"builtin": "digits"},
            **spec,
        },
    }
    if pod_template is not None:
        doc["spec"]["podTemplate"] = pod_template
    return TrainingJob.model_validate(doc)


def _pod(job: TrainingJob) -> dict[str, Any]:
    template: dict[str, Any] = build_children(job).job["spec"]["template"]
    return template


def _worker(pod: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod["spec"]["containers"] if c["name"] == "worker")


SECRET_ENV = {
    "name": "HF_TOKEN",
    "valueFrom": {"secretKeyRef": {"name": "hub", "key": "token"}},
}


def test_override_reaches_the_pod_merged_by_name() -> None:
    pod = _pod(
        _job(
            {
                "metadata": {"labels": {"team": "nlp"}, "annotations": {"a": "b"}},
                "spec": {
                    "serviceAccountName": "trainer",
                    "imagePullSecrets": [{"name": "regcred"}],
                    "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "c"}}],
                    "initContainers": [{"name": "fetch", "image": "busybox"}],
                    "containers": [
                        {
                            "name": "worker",
                            "env": [SECRET_ENV, {"name": "EXTRA", "value": "override"}],
                            "envFrom": [{"secretRef": {"name": "s3"}}],
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                            "resources": {"limits": {"amd.com/gpu": "1"}},
                            "securityContext": {"readOnlyRootFilesystem": True},
                        },
                        {"name": "sidecar", "image": "busybox"},
                    ],
                    "tolerations": [{"key": "x", "operator": "Exists"}],
                },
            },
            env=[{"name": "EXTRA", "value": "spec"}],
            resources={"memory": "1Gi"},
            scheduling={"tolerations": [{"key": "y", "operator": "Exists"}]},
        )
    )
    spec = pod["spec"]
    assert pod["metadata"]["labels"]["team"] == "nlp"
    assert pod["metadata"]["labels"]["torchyard.io/job-name"] == "pt"  # the operator's kept
    assert spec["serviceAccountName"] == "trainer"
    assert [v["name"] for v in spec["volumes"]] == ["spec", "data"]
    assert [c["name"] for c in spec["containers"]] == ["worker", "sidecar"]  # worker first
    assert [c["name"] for c in spec["initContainers"]] == ["fetch"]
    assert spec["restartPolicy"] == "Never"
    keys = [t["key"] for t in spec["tolerations"]]  # the template's appended
    assert keys == ["y", "node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable", "x"]
    worker = _worker(pod)
    env = {e["name"]: e for e in worker["env"]}
    assert env["HF_TOKEN"] == SECRET_ENV
    assert env["EXTRA"]["value"] == "override"  # the override wins over spec.env
    assert "MASTER_ADDR" in env
    assert "TORCHYARD_SPEC" in env
    assert worker["envFrom"] == [{"secretRef": {"name": "s3"}}]
    assert [m["mountPath"] for m in worker["volumeMounts"]] == [SPEC_MOUNT_DIR, "/data"]
    assert worker["resources"]["limits"] == {"memory": "1Gi", "amd.com/gpu": "1"}
    security = worker["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}  # additions, the defaults kept


def test_no_override_leaves_the_pod_as_built() -> None:
    assert _pod(_job()) == _pod(_job({}))


def test_merge_is_pure_and_keys_lists() -> None:
    base = {"spec": {"containers": [{"name": "a", "env": [{"name": "X", "value": "1"}]}]}}
    over = {"spec": {"containers": [{"name": "a", "env": [{"name": "X", "value": "2"}]}]}}
    out = merge(base, over)
    assert out["spec"]["containers"][0]["env"] == [{"name": "X", "value": "2"}]
    assert base["spec"]["containers"][0]["env"][0]["value"] == "1"  # inputs untouched
    assert merge({"nodeSelector": {"a": "1"}}, {"nodeSelector": {"b": "2"}}) == {
        "nodeSelector": {"a": "1", "b": "2"}
    }
    assert merge({"args": ["a"]}, {"args": ["b"]}) == {"args": ["b"]}  # other lists replaced


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"spec": {"restartPolicy": "OnFailure"}}, "podTemplate.spec.restartPolicy"),
        ({"spec": {"subdomain": "x"}}, "podTemplate.spec.subdomain"),
        ({"spec": {"hostname": "x"}}, "podTemplate.spec.hostname"),
        ({"spec": {"schedulerName": "x"}}, "podTemplate.spec.schedulerName"),
        (
            {"spec": {"containers": [{"name": "worker", "command": ["sh"]}]}},
            "containers[worker].command",
        ),
        (
            {"spec": {"containers": [{"name": "worker", "args": ["--x"]}]}},
            "containers[worker].args",
        ),
        (
            {"spec": {"containers": [{"name": "worker", "terminationMessagePath": "/x"}]}},
            "containers[worker].terminationMessagePath",
        ),
        (
            {"spec": {"containers": [{"name": "worker", "terminationMessagePolicy": "File"}]}},
            "containers[worker].terminationMessagePolicy",
        ),
        (
            {"spec": {"containers": [{"name": "worker", "env": [{"name": "RANK", "value": "0"}]}]}},
            "containers[worker].env",
        ),
        (
            {"spec": {"containers": [{"name": "worker", "env": [{"name": "TORCHYARD_SPEC"}]}]}},
            "containers[worker].env",
        ),
        (
            {
                "spec": {
                    "containers": [
                        {"name": "worker", "volumeMounts": [{"name": "v", "mountPath": "/dev/shm"}]}
                    ]
                }
            },
            "containers[worker].volumeMounts",
        ),
        ({"spec": {"volumes": [{"name": "spec", "emptyDir": {}}]}}, "spec.volumes"),
        ({"spec": {"volumes": [{"name": "storage-0", "emptyDir": {}}]}}, "spec.volumes"),
        ({"metadata": {"labels": {"torchyard.io/job-name": "x"}}}, "metadata.labels"),
        (
            {"metadata": {"annotations": {"torchyard.io/restart-count": "9"}}},
            "metadata.annotations",
        ),
    ],
)
def test_owned_fields_are_rejected_by_name(override: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as exc:
        _job(override)
    assert field in str(exc.value)


def test_sidecars_may_set_what_the_worker_may_not() -> None:
    job = _job(
        {
            "spec": {
                "containers": [
                    {"name": "proxy", "image": "p", "command": ["p"], "env": [{"name": "RANK"}]}
                ]
            }
        }
    )
    assert _worker(_pod(job))["command"][0] == "python"


def test_merge_refuses_to_change_an_owned_field_the_api_let_through() -> None:
    built = _pod(_job())
    for override, field in [
        (
            {
                "spec": {
                    "containers": [
                        {"name": "worker", "env": [{"name": "WORLD_SIZE", "value": "99"}]}
                    ]
                }
            },
            "env[WORLD_SIZE]",
        ),
        ({"spec": {"restartPolicy": "Always"}}, "spec.restartPolicy"),
        ({"spec": {"containers": [{"name": "worker", "image": "x"}]}}, "image"),
    ]:
        with pytest.raises(PodTemplateConflict, match=field.replace("[", r"\[")):
            apply_pod_template(built, override)


def test_the_worker_command_stays_the_operators() -> None:
    worker = _worker(_pod(_job(command=["torchrun", "train.py"])))
    assert worker["command"] == ["torchrun", "train.py"]
    assert worker.get("terminationMessagePath", TERMINATION_MESSAGE_PATH) == (
        TERMINATION_MESSAGE_PATH
    )


def test_the_spec_configmap_holds_no_env_values() -> None:
    job = _job(
        {
            "spec": {
                "containers": [
                    {
                        "name": "worker",
                        "env": [
                            {"name": "FROM_OVERRIDE", "value": "override-secret-value"},
                            SECRET_ENV,
                        ],
                    }
                ]
            }
        },
        env=[{"name": "PLAIN", "value": "spec-secret-value"}],
    )
    text = build_children(job).configmap["data"]["spec.yaml"]
    assert "spec-secret-value" not in text
    assert "override-secret-value" not in text
    spec = yaml.safe_load(text)["spec"]
    assert spec["env"] == [{"name": "PLAIN"}]
    assert "podTemplate" not in spec
    # what the worker reads back is still a valid job
    TrainingJob.model_validate(yaml.safe_load(text))


@pytest.mark.parametrize(
    ("resources", "procs", "size"),
    [
        ({"gpu": 8}, 8, "16Gi"),  # 2 GiB per process
        ({"gpu": 2}, 2, "4Gi"),
        ({"gpu": 8, "sharedMemory": "1Gi"}, 8, "1Gi"),  # stated size wins
        ({"gpu": 1}, 1, None),  # one process: nothing shared between processes
        ({"cpu": "4"}, 4, None),  # CPU (gloo) workers: no NCCL buffers
    ],
)
def test_shared_memory_default(resources: dict[str, Any], procs: int, size: str | None) -> None:
    pod = _pod(_job(resources=resources, procsPerWorker=procs, batchSize=64))
    dshm = [v for v in pod["spec"]["volumes"] if v["name"] == "dshm"]
    if size is None:
        assert dshm == []
    else:
        assert dshm == [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": size}}]
        assert {"name": "dshm", "mountPath": "/dev/shm"} in _worker(pod)["volumeMounts"]


def test_a_compression_job_takes_a_pod_template() -> None:
    from torchyard.api import CompressionJob

    job = CompressionJob.model_validate(
        {
            "apiVersion": "torchyard.io/v1alpha1",
            "kind": "CompressionJob",
            "metadata": {"name": "cj"},
            "spec": {
                "source": {"trainingJobRef": "pt"},
                "data": {"builtin": "digits"},
                "steps": [{"quantize": {"method": "dynamicInt8"}}],
                "podTemplate": {"spec": {"serviceAccountName": "compressor"}},
            },
        }
    )
    pod = build_children(job).job["spec"]["template"]
    assert pod["spec"]["serviceAccountName"] == "compressor"


# The API server's warning on creating a Job whose pod template violates a level (verbatim
# from the dev cluster's kube-apiserver, header value as urllib3 returns it).
PSA_WARNING = (
    '299 - "would violate PodSecurity \\"restricted:latest\\": privileged (container '
    '\\"worker\\" must not set securityContext.privileged=true), hostPath volumes (volume '
    '\\"host\\")"'
)


def test_pod_security_refusal_names_policy_and_fields() -> None:
    from torchyard.state.podsecurity import pod_security_refusal

    refusal = pod_security_refusal(
        [PSA_WARNING], "team-a", {"pod-security.kubernetes.io/enforce": "restricted"}
    )
    assert refusal is not None
    assert refusal.reason == "PodSecurityRejected"
    assert not refusal.temporary
    assert '"restricted:latest"' in refusal.message
    assert 'container "worker" must not set securityContext.privileged=true' in refusal.message
    assert 'hostPath volumes (volume "host")' in refusal.message


@pytest.mark.parametrize(
    "labels",
    [
        {},  # nothing enforced
        {"pod-security.kubernetes.io/enforce": "baseline"},  # another level enforced
        {"pod-security.kubernetes.io/warn": "restricted"},  # only warned about: pods start
        {
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "v1.30",  # another version
        },
    ],
)
def test_a_warning_for_a_level_not_enforced_is_no_refusal(labels: dict[str, str]) -> None:
    from torchyard.state.podsecurity import pod_security_refusal

    assert pod_security_refusal([PSA_WARNING], "team-a", labels) is None


def test_the_crd_types_what_the_rules_read_and_keeps_the_rest() -> None:
    from torchyard.crd import all_crds

    # The two job kinds run pods; a ModelVersion has no podTemplate.
    jobs = [c for c in all_crds().values() if c["spec"]["names"]["kind"].endswith("Job")]
    assert len(jobs) == 2
    for crd in jobs:
        (version,) = crd["spec"]["versions"]
        spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
        template = spec["properties"]["podTemplate"]
        pod_spec = template["properties"]["spec"]
        # Unknown PodSpec fields (volumes' sources, securityContext...) are kept, not pruned,
        assert pod_spec["x-kubernetes-preserve-unknown-fields"] is True
        container = pod_spec["properties"]["containers"]["items"]
        assert container["x-kubernetes-preserve-unknown-fields"] is True
        # while the fields a CEL rule reads are typed (CEL cannot see unknown fields).
        assert container["properties"]["command"]["type"] == "array"
        assert pod_spec["properties"]["restartPolicy"]["type"] == "string"
        messages = [r["message"] for r in template["x-kubernetes-validations"]]
        assert any("podTemplate.spec.restartPolicy" in m for m in messages)
