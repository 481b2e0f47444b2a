"""The dev control plane itself: real scheduling, Job semantics, garbage collection, KWOK pod
control, CRD schema/explain, and the up/down life cycle. Everything is observed through the
API server; waits poll with generous timeouts, nothing asserts on elapsed time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

import torchyard_devcluster as devcluster
from torchyard_devcluster import (
    EXIT_CODE_ANNOTATION,
    GPU_RESOURCE,
    HOLD_ANNOTATION,
    pod_control_annotations,
    set_pod_exit,
    set_pod_hold,
)
from torchyard_devcluster.testing import Kube, crd_files, poll

pytestmark = pytest.mark.cluster

REPO_ROOT = Path(__file__).resolve().parents[2]


def job_manifest(
    name: str,
    *,
    pods: int = 2,
    gpus: int = 1,
    annotations: dict[str, str] | None = None,
    pod_failure_policy: dict[str, Any] | None = None,
    backoff_limit: int = 0,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "completions": pods,
        "parallelism": pods,
        "backoffLimit": backoff_limit,
        "template": {
            "metadata": {"annotations": annotations or {}, "labels": {"app": name}},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "worker",
                        "image": "registry.invalid/torchyard/worker:test",
                        "resources": {
                            "requests": {"cpu": "1", "memory": "1Gi", GPU_RESOURCE: str(gpus)},
                            "limits": {GPU_RESOURCE: str(gpus)},
                        },
                    }
                ],
            },
        },
    }
    if pod_failure_policy is not None:
        spec["podFailurePolicy"] = pod_failure_policy
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": spec}


def job_pods(kube: Kube, ns: str, job: str) -> list[Any]:
    return list(kube.core.list_namespaced_pod(ns, label_selector=f"job-name={job}").items)


def job_condition(kube: Kube, ns: str, job: str, ctype: str) -> Any:
    j = kube.batch.read_namespaced_job(job, ns)
    for c in (j.status.conditions if j.status else None) or []:
        if c.type == ctype and c.status == "True":
            return c
    return None


def pod_in_phase(kube: Kube, ns: str, name: str, phase: str) -> Any:
    pod = kube.core.read_namespaced_pod(name, ns)
    return pod if pod.status.phase == phase else None


def terminated(pod: Any) -> Any:
    for cs in pod.status.container_statuses or []:
        if cs.state and cs.state.terminated:
            return cs.state.terminated
    return None


# --- scheduling, KWOK, Job, GC ---------------------------------------------------------------


def test_gpu_job_is_scheduled_run_by_kwok_and_garbage_collected(kube: Kube, namespace: str) -> None:
    gpu_nodes = {
        n.metadata.name
        for n in kube.core.list_node().items
        if int((n.status.allocatable or {}).get(GPU_RESOURCE, "0")) > 0
    }
    assert gpu_nodes, "the fixture should have created fake GPU nodes"

    # Held pods stay Running, so each step of Pending -> Running -> Succeeded is observable.
    kube.batch.create_namespaced_job(
        namespace, job_manifest("smoke", annotations=pod_control_annotations(hold=True))
    )

    def running() -> list[Any] | None:
        pods = job_pods(kube, namespace, "smoke")
        ok = len(pods) == 2 and all(p.status.phase == "Running" for p in pods)
        return pods if ok else None

    pods = poll(running, what="2 Running pods")
    for p in pods:
        # Bound by kube-scheduler (there is no other binder) onto a fake GPU node.
        assert p.spec.node_name in gpu_nodes
        sched = {c.type: c.status for c in p.status.conditions or []}
        assert sched.get("PodScheduled") == "True"
        assert sched.get("Ready") == "True"
        assert p.spec.containers[0].resources.limits[GPU_RESOURCE] == "1"
    events = kube.core.list_namespaced_event(namespace).items
    scheduled = [e for e in events if e.reason == "Scheduled"]
    assert len(scheduled) >= 2, [(e.reason, e.reporting_component) for e in events]
    assert {e.reporting_component or e.source.component for e in scheduled} == {"default-scheduler"}

    for p in pods:
        set_pod_hold(kube.api_client, p.metadata.name, namespace, hold=False)

    poll(lambda: job_condition(kube, namespace, "smoke", "Complete"), what="Job Complete")
    job = kube.batch.read_namespaced_job("smoke", namespace)
    assert job.status.succeeded == 2
    done = job_pods(kube, namespace, "smoke")
    assert {p.status.phase for p in done} == {"Succeeded"}
    assert all(terminated(p).exit_code == 0 for p in done)
    uids = {p.metadata.uid for p in done}

    # Owner deleted in the background: the garbage collector removes the dependents.
    kube.batch.delete_namespaced_job("smoke", namespace, propagation_policy="Background")
    poll(
        lambda: (
            not job_pods(kube, namespace, "smoke")
            and not any(
                p.metadata.uid in uids for p in kube.core.list_namespaced_pod(namespace).items
            )
        ),
        what="pods garbage-collected",
    )
    assert not list(kube.batch.list_namespaced_job(namespace).items)


def test_default_job_pods_complete_without_help(kube: Kube, namespace: str) -> None:
    """KWOK's default behaviour: Job pods go Running then Succeeded by themselves."""
    kube.batch.create_namespaced_job(namespace, job_manifest("plain", pods=2))
    poll(lambda: job_condition(kube, namespace, "plain", "Complete"), what="Job Complete")
    assert kube.batch.read_namespaced_job("plain", namespace).status.succeeded == 2


def test_pod_fails_with_exit_code_137_and_pod_failure_policy_sees_it(
    kube: Kube, namespace: str
) -> None:
    policy = {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": "worker", "operator": "In", "values": [137]},
            }
        ]
    }
    kube.batch.create_namespaced_job(
        namespace,
        job_manifest(
            "oom",
            pods=1,
            annotations=pod_control_annotations(exit_code=137),
            pod_failure_policy=policy,
            backoff_limit=5,
        ),
    )
    cond = poll(lambda: job_condition(kube, namespace, "oom", "Failed"), what="Job Failed")
    assert cond.reason == "PodFailurePolicy", cond
    pods = job_pods(kube, namespace, "oom")
    assert len(pods) == 1, "FailJob must not retry"
    pod = pods[0]
    assert pod.status.phase == "Failed"
    t = terminated(pod)
    assert t.exit_code == 137
    assert t.reason == "Error"


def test_live_pod_controlled_by_annotations(kube: Kube, namespace: str) -> None:
    """A bare pod stays Running (KWOK default); patching the annotations ends it."""
    for name in ("bare-fail", "bare-ok"):
        kube.core.create_namespaced_pod(
            namespace,
            {
                "metadata": {"name": name},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "c", "image": "registry.invalid/x:1"}],
                },
            },
        )
    for name in ("bare-fail", "bare-ok"):
        poll(partial(pod_in_phase, kube, namespace, name, "Running"), what=f"{name} Running")
    set_pod_exit(kube.api_client, "bare-fail", namespace, 3, reason="OOMKilled")
    set_pod_exit(kube.api_client, "bare-ok", namespace, 0)
    failed = poll(
        lambda: pod_in_phase(kube, namespace, "bare-fail", "Failed"),
        what="bare-fail Failed",
    )
    assert terminated(failed).exit_code == 3
    assert terminated(failed).reason == "OOMKilled"
    ok = poll(
        lambda: pod_in_phase(kube, namespace, "bare-ok", "Succeeded"),
        what="bare-ok Succeeded",
    )
    assert terminated(ok).exit_code == 0


def test_hold_wins_over_exit_code_until_released(kube: Kube, namespace: str) -> None:
    ann = {**pod_control_annotations(exit_code=42, hold=True)}
    kube.batch.create_namespaced_job(namespace, job_manifest("held", pods=1, annotations=ann))
    pod = poll(
        lambda: next(
            (p for p in job_pods(kube, namespace, "held") if p.status.phase == "Running"), None
        ),
        what="held pod Running",
    )
    assert pod.metadata.annotations[HOLD_ANNOTATION] == "true"
    assert pod.metadata.annotations[EXIT_CODE_ANNOTATION] == "42"
    set_pod_hold(kube.api_client, pod.metadata.name, namespace, hold=False)
    done = poll(
        lambda: pod_in_phase(kube, namespace, pod.metadata.name, "Failed"),
        what="released pod Failed",
    )
    assert terminated(done).exit_code == 42
    poll(lambda: job_condition(kube, namespace, "held", "Failed"), what="Job Failed")


def test_server_version_is_the_pinned_release(kube: Kube) -> None:
    from kubernetes import client

    info = client.VersionApi(kube.api_client).get_code()
    assert info.git_version == devcluster.versions()["K8S_VERSION"]
    out = kube.cluster.kubectl("version", "-o", "json").stdout
    assert json.loads(out)["serverVersion"]["gitVersion"] == info.git_version


# --- CRDs ------------------------------------------------------------------------------------


def _trainingjob_crd(crd_dir: Path) -> dict[str, Any] | None:
    for path in crd_files(crd_dir):
        for doc in yaml.safe_load_all(path.read_text()):
            if (
                isinstance(doc, dict)
                and doc.get("kind") == "CustomResourceDefinition"
                and doc["spec"]["names"]["kind"] == "TrainingJob"
            ):
                return doc
    return None


def test_crd_explain_and_schema_validation(kube: Kube, crd_dir: Path) -> None:
    crd = _trainingjob_crd(crd_dir)
    if crd is None:
        pytest.skip(f"no TrainingJob CRD in {crd_dir} yet (generated by the API work: crds/*.yaml)")
    group = crd["spec"]["group"]
    plural = crd["spec"]["names"]["plural"]
    version = next(v for v in crd["spec"]["versions"] if v.get("served", True))
    spec_schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]

    def explain() -> str | None:
        r = kube.cluster.kubectl("explain", "trainingjob.spec", check=False)
        return r.stdout if r.returncode == 0 and "FIELDS" in r.stdout else None

    out = poll(explain, timeout=60, what="kubectl explain (OpenAPI published)")
    described = [
        (name, prop["description"])
        for name, prop in spec_schema.get("properties", {}).items()
        if prop.get("description")
    ]
    assert described, "the CRD's spec fields should carry descriptions"
    for name, desc in described[:5]:
        assert name in out
        assert " ".join(desc.split())[:30] in " ".join(out.split()), (name, desc)

    # A wrong type for a typed field is rejected by the apiserver's structural schema.
    bad_spec: dict[str, Any] = {}
    for name, prop in spec_schema.get("properties", {}).items():
        if prop.get("type") == "integer":
            bad_spec[name] = "not-a-number"
            break
    else:
        bad_spec = {"__not_a_field__": 1, **{n: {"x": 1} for n in spec_schema.get("required", [])}}
    from kubernetes import client

    with pytest.raises(client.ApiException) as err:
        kube.custom.create_namespaced_custom_object(
            group,
            version["name"],
            "default",
            plural,
            {
                "apiVersion": f"{group}/{version['name']}",
                "kind": "TrainingJob",
                "metadata": {"name": "invalid"},
                "spec": bad_spec,
            },
            field_validation="Strict",
        )
    assert err.value.status == 422, err.value.body


# --- scale -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_hundred_plus_nodes(kube: Kube) -> None:
    """Benchmarks create 100+ nodes with the same helper; they become Ready and are removable."""
    names = devcluster.create_nodes(
        kube.api_client,
        n=120,
        gpus_per_node=8,
        prefix="scale-",
        labels={"torchyard.io/pool": "scale-test"},
    )
    assert len(names) == 120
    try:
        gpus = sum(
            int(n.status.allocatable[GPU_RESOURCE])
            for n in kube.core.list_node(label_selector="torchyard.io/pool=scale-test").items
        )
        assert gpus == 960
    finally:
        devcluster.delete_nodes(kube.api_client, label_selector="torchyard.io/pool=scale-test")


# --- life cycle: a second, throw-away cluster in its own state folder ------------------------


def _cli(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TORCHYARD_DEV_CLUSTER_DIR=str(state))
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT / "operator"), env.get("PYTHONPATH", "")) if p
    )
    return subprocess.run(
        [sys.executable, "-m", "torchyard_devcluster", *args],
        env=env,
        text=True,
        capture_output=True,
        timeout=600,
        check=False,
    )


def _pids(state: Path) -> dict[str, int]:
    data = json.loads((state / "state.json").read_text())
    return {p["name"]: int(p["pid"]) for p in data["processes"]}


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] in "ZX"


@pytest.mark.slow
def test_up_twice_down_twice_and_recovery_after_kill(
    cluster: devcluster.DevCluster, tmp_path: Path
) -> None:
    state = tmp_path / "dc"
    first = _cli(state, "up", "--nodes", "1", "--no-build")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"export KUBECONFIG={state / 'kubeconfig'}"
    pids = _pids(state)
    assert set(pids) == {
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kwok",
    }

    second = _cli(state, "up", "--nodes", "1", "--no-build")
    assert second.returncode == 0, second.stderr
    assert "reused" in second.stderr
    assert _pids(state) == pids, "a second up must reuse the running processes"

    env = _cli(state, "env")
    assert env.returncode == 0
    assert env.stdout.startswith("export KUBECONFIG=")
    st = _cli(state, "status", "--json")
    assert st.returncode == 0
    assert json.loads(st.stdout)["running"] is True

    # A crash: kill -9 the apiserver. status notices; the next up cleans up and starts afresh.
    os.kill(pids["kube-apiserver"], signal.SIGKILL)
    poll(lambda: _gone(pids["kube-apiserver"]), timeout=30, what="apiserver gone")
    assert _cli(state, "status").returncode != 0
    third = _cli(state, "up", "--nodes", "1", "--no-build")
    assert third.returncode == 0, third.stderr
    assert "started" in third.stderr
    new_pids = _pids(state)
    assert all(_gone(pid) for pid in pids.values()), "the crashed run's processes are stopped"
    assert set(new_pids.values()).isdisjoint(pids.values())
    nodes = _cli(state, "nodes")
    assert nodes.returncode == 0, nodes.stderr
    assert "Ready=True" in nodes.stdout, nodes.stdout

    d1 = _cli(state, "down")
    assert d1.returncode == 0
    assert "stopped" in d1.stderr
    assert all(_gone(pid) for pid in new_pids.values())
    assert not state.exists()
    d2 = _cli(state, "down")
    assert d2.returncode == 0
    assert "not running" in d2.stderr

    # The session cluster was never touched.
    assert devcluster.current(state_dir=cluster.state_dir) is not None
