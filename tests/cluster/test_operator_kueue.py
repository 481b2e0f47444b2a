"""Kueue and the operator on the real dev control plane (DESIGN §3: "suspend as Kueue expects").

The question: does Kueue manage the Indexed batch/v1 Job the operator creates for a
TrainingJob, whose controller owner is a TrainingJob (a kind Kueue does not know)? Kueue runs
here for real (built from the Go module proxy, ``hack/build-kueue.sh``; started as a local
process by the ``kueue`` fixture, :mod:`torchyard_devcluster.kueue`, with the ``batch/job``
integration and its webhooks), the operator runs as a real process, KWOK runs the pods.
These tests fail if Kueue ignores the Job (it would stay suspended, the job Pending).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from tests.cluster.opkit import (
    condition,
    create,
    example,
    get,
    held,
    live_pods,
    patch_spec,
    release,
    running_operator,
    wait_phase,
    wait_running_pods,
    worker_jobs,
    worker_pods,
)

from torchyard.api.constants import ConditionType, Phase, Reason
from torchyard.api.contract import Label
from torchyard.state import parse_time
from torchyard_devcluster import GPU_RESOURCE, set_pod_exit
from torchyard_devcluster.kueue import GROUP, VERSION, Kueue
from torchyard_devcluster.testing import Kube, poll

pytestmark = pytest.mark.cluster

GPUS_PER_WORKER = 4  # a request that KWOK's GPU nodes (conftest GPUS_PER_NODE) can place


def _job(name: str, queue: str) -> dict[str, Any]:
    m = copy.deepcopy(example("digits-ddp.yaml"))
    m["metadata"]["name"] = name
    m["spec"]["resources"]["gpu"] = GPUS_PER_WORKER
    m["spec"]["scheduling"] = {"gang": "kueue", "queue": queue}
    return m


def _gpus(manifest: dict[str, Any]) -> int:
    spec = manifest["spec"]
    return int(spec["workers"]) * int(spec["resources"]["gpu"])


@pytest.fixture
def queue(kube: Kube, kueue: Kueue, namespace: str) -> Iterator[Any]:
    """A ResourceFlavor, a ClusterQueue for this namespace and a LocalQueue ``team``; the GPU
    quota is set by the test (``queue(gpus)``) and the ClusterQueue waits until Active."""
    kueue.enable_namespace(namespace)
    made: list[tuple[str, str]] = []

    def make(gpus: int) -> str:
        flavor, cq = f"{namespace}-flavor", f"{namespace}-cq"
        kube.custom.create_cluster_custom_object(
            GROUP,
            VERSION,
            "resourceflavors",
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "ResourceFlavor",
                "metadata": {"name": flavor},
            },
        )
        made.append(("resourceflavors", flavor))
        kube.custom.create_cluster_custom_object(
            GROUP,
            VERSION,
            "clusterqueues",
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "ClusterQueue",
                "metadata": {"name": cq},
                "spec": {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": namespace}
                    },
                    "resourceGroups": [
                        {
                            "coveredResources": ["cpu", "memory", GPU_RESOURCE],
                            "flavors": [
                                {
                                    "name": flavor,
                                    "resources": [
                                        {"name": "cpu", "nominalQuota": "1000"},
                                        {"name": "memory", "nominalQuota": "1000Gi"},
                                        {"name": GPU_RESOURCE, "nominalQuota": gpus},
                                    ],
                                }
                            ],
                        }
                    ],
                },
            },
        )
        made.insert(0, ("clusterqueues", cq))
        kube.custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "localqueues",
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "LocalQueue",
                "metadata": {"name": "team"},
                "spec": {"clusterQueue": cq},
            },
        )

        def active() -> bool:
            obj = kube.custom.get_cluster_custom_object(GROUP, VERSION, "clusterqueues", cq)
            conds = (obj.get("status") or {}).get("conditions") or []
            return any(c["type"] == "Active" and c["status"] == "True" for c in conds)

        poll(active, timeout=60, what=f"ClusterQueue {cq} Active")
        return "team"

    yield make
    for plural, name in made:  # while Kueue runs, so it releases its finalizers
        try:
            kube.custom.delete_cluster_custom_object(GROUP, VERSION, plural, name)
        except client.ApiException as e:
            if e.status != 404:
                raise


def _workloads(kube: Kube, namespace: str) -> list[dict[str, Any]]:
    out = kube.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "workloads")
    return list(out.get("items") or [])


def _workload_of(kube: Kube, namespace: str, job_uid: str) -> dict[str, Any] | None:
    for wl in _workloads(kube, namespace):
        owners = wl["metadata"].get("ownerReferences") or []
        if any(o["kind"] == "Job" and o["uid"] == job_uid for o in owners):
            return wl
    return None


def _cond(obj: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == ctype:
            return dict(c)
    return None


def _wait_workload(
    kube: Kube, namespace: str, job_uid: str, ctype: str, status: str, what: str
) -> dict[str, Any]:
    """The Job's Workload once its condition ``ctype`` has ``status``."""

    def check() -> dict[str, Any] | None:
        w = _workload_of(kube, namespace, job_uid)
        return w if w and (_cond(w, ctype) or {}).get("status") == status else None

    return poll(check, what=what)


def _batch_job(kube: Kube, namespace: str, name: str) -> Any:
    def find() -> Any:
        return next((j for j in worker_jobs(kube, namespace) if j.metadata.name == name), None)

    return poll(find, what=f"worker Job {name}")


def test_kueue_webhook_suspends_a_queued_job(kube: Kube, kueue: Kueue, namespace: str) -> None:
    """The API server reaches Kueue's webhooks on 127.0.0.1: a Job naming a queue is
    suspended on creation by Kueue's defaulting webhook, as in a real install."""
    kueue.enable_namespace(namespace)
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "plain", "labels": {"kueue.x-k8s.io/queue-name": "nowhere"}},
        "spec": {
            "suspend": False,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "c", "image": "registry.invalid/x:1"}],
                }
            },
        },
    }

    def create_job() -> Any:
        # The API server picks up a new webhook configuration asynchronously.
        try:
            kube.batch.delete_namespaced_job("plain", namespace, propagation_policy="Background")
        except client.ApiException as e:
            if e.status != 404:
                raise
        poll(lambda: _absent(kube, namespace, "plain"), what="Job plain gone")
        made = kube.batch.create_namespaced_job(namespace, job)
        return made if made.spec.suspend else None

    made = poll(create_job, timeout=60, interval=1.0, what="Job suspended by Kueue's webhook")
    assert made.spec.suspend is True


def _absent(kube: Kube, namespace: str, name: str) -> bool:
    try:
        kube.batch.read_namespaced_job(name, namespace)
    except client.ApiException as e:
        if e.status == 404:
            return True
        raise
    return False


def test_kueue_admits_the_job_owned_by_a_trainingjob(
    kube: Kube, kueue: Kueue, namespace: str, queue: Any, tmp_path: Path
) -> None:
    manifest = _job("digits-ddp", "team")
    queue(_gpus(manifest))
    with running_operator(kube, namespace, tmp_path):
        create(kube, namespace, manifest)
        job = _batch_job(kube, namespace, "digits-ddp")
        tj = get(kube, namespace, "TrainingJob", "digits-ddp")
        assert tj is not None
        (owner,) = job.metadata.owner_references
        assert (owner.kind, owner.uid, owner.controller) == (
            "TrainingJob",
            tj["metadata"]["uid"],
            True,
        )
        assert job.metadata.labels["kueue.x-k8s.io/queue-name"] == "team"

        # Kueue made a Workload for the Job (not for the TrainingJob) and admitted it.
        wl = poll(lambda: _workload_of(kube, namespace, job.metadata.uid), what="Workload")
        assert wl["spec"]["queueName"] == "team"
        admitted = _wait_workload(
            kube, namespace, job.metadata.uid, "Admitted", "True", "Workload admitted"
        )
        assert admitted["status"]["admission"]["clusterQueue"] == f"{namespace}-cq"
        (podset,) = admitted["spec"]["podSets"]
        assert podset["count"] == manifest["spec"]["workers"]

        done = wait_phase(kube, namespace, "TrainingJob", "digits-ddp", Phase.SUCCEEDED)
        assert done["status"]["startTime"]
        pods = worker_pods(kube, namespace, "digits-ddp")
        assert len(pods) == manifest["spec"]["workers"]
        assert {p.status.phase for p in pods} == {"Succeeded"}
        finished = _wait_workload(
            kube, namespace, job.metadata.uid, "Finished", "True", "Workload Finished"
        )
        assert finished["metadata"]["name"] == wl["metadata"]["name"]


def test_second_job_waits_for_quota_then_runs(
    kube: Kube, kueue: Kueue, namespace: str, queue: Any, tmp_path: Path
) -> None:
    first_m, second_m = _job("first", "team"), _job("second", "team")
    queue(_gpus(first_m))  # room for one job at a time
    with running_operator(kube, namespace, tmp_path):
        create(kube, namespace, held(first_m))
        first_pods = wait_running_pods(kube, namespace, "first", first_m["spec"]["workers"])
        create(kube, namespace, second_m)
        second_job = _batch_job(kube, namespace, "second")

        # Kueue holds the second one: its Workload has no quota, the Job stays suspended,
        # the TrainingJob says it is queued.
        wl = poll(lambda: _workload_of(kube, namespace, second_job.metadata.uid), what="Workload")
        assert (_cond(wl, "Admitted") or {}).get("status") != "True"

        def queued() -> dict[str, Any] | None:
            tj = get(kube, namespace, "TrainingJob", "second")
            c = _cond(tj or {}, ConditionType.SUSPENDED)
            return tj if c and c["reason"] == Reason.QUEUED_BY_KUEUE else None

        tj = poll(queued, what="second TrainingJob queued by Kueue")
        assert tj["status"]["phase"] == Phase.PENDING
        assert "team" in tj["status"]["message"]
        assert condition(tj, ConditionType.SUSPENDED)["status"] == "True"
        assert "startTime" not in tj["status"]
        assert kube.batch.read_namespaced_job("second", namespace).spec.suspend is True
        assert not worker_pods(kube, namespace, "second")
        pending = _cond(
            _workload_of(kube, namespace, second_job.metadata.uid) or {}, "QuotaReserved"
        )
        assert pending is not None
        assert pending["status"] == "False"

        # The first one finishes and gives its quota back: Kueue admits the second.
        first_job = _batch_job(kube, namespace, "first")
        release(kube, namespace, first_pods)
        wait_phase(kube, namespace, "TrainingJob", "first", Phase.SUCCEEDED)
        second = wait_phase(kube, namespace, "TrainingJob", "second", Phase.SUCCEEDED)
        admitted = condition(second, ConditionType.SUSPENDED)
        assert (admitted["status"], admitted["reason"]) == ("False", Reason.ADMITTED_BY_KUEUE)
        assert second["status"]["startTime"]
        # Kueue's own record: the second Workload was admitted once the first had finished.
        first_wl = _workload_of(kube, namespace, first_job.metadata.uid)
        second_wl = _workload_of(kube, namespace, second_job.metadata.uid)
        assert first_wl is not None
        assert second_wl is not None
        finished = parse_time((_cond(first_wl, "Finished") or {}).get("lastTransitionTime"))
        took = parse_time((_cond(second_wl, "Admitted") or {}).get("lastTransitionTime"))
        assert finished is not None
        assert took is not None
        assert took >= finished


def test_suspend_deactivates_the_workload_and_resume_requeues_it(
    kube: Kube, kueue: Kueue, namespace: str, queue: Any, tmp_path: Path
) -> None:
    """runPolicy.suspend on a Kueue-admitted job: Kueue owns the Job's spec.suspend (it
    un-suspends an admitted Job the operator suspends), so the operator deactivates the Job's
    Workload; Kueue evicts it, suspends the Job and releases the quota (a waiting job runs).
    Resume re-activates the Workload: Kueue admits the Job again and it runs to the end."""
    first_m, second_m = _job("first", "team"), _job("second", "team")
    queue(_gpus(first_m))  # room for one job at a time
    workers = first_m["spec"]["workers"]
    with running_operator(kube, namespace, tmp_path):
        create(kube, namespace, held(first_m))
        wait_running_pods(kube, namespace, "first", workers)
        wait_phase(kube, namespace, "TrainingJob", "first", Phase.RUNNING)
        job = _batch_job(kube, namespace, "first")
        uid = job.metadata.uid
        create(kube, namespace, second_m)
        second_job = _batch_job(kube, namespace, "second")
        wl2 = poll(lambda: _workload_of(kube, namespace, second_job.metadata.uid), what="WL 2")
        assert (_cond(wl2, "Admitted") or {}).get("status") != "True"

        patch_spec(kube, namespace, "TrainingJob", "first", {"runPolicy": {"suspend": True}})

        def deactivated() -> dict[str, Any] | None:
            w = _workload_of(kube, namespace, uid)
            return w if w and w["spec"].get("active") is False else None

        wl = poll(deactivated, what="first Workload spec.active false")
        poll(
            lambda: kube.batch.read_namespaced_job("first", namespace).spec.suspend is True,
            what="first Job suspended by Kueue",
        )
        poll(lambda: not live_pods(kube, namespace, "first"), what="first job's pods gone")
        released = _wait_workload(
            kube, namespace, uid, "QuotaReserved", "False", "first Workload's quota released"
        )
        assert (_cond(released, "Evicted") or {}).get("status") == "True"
        tj = wait_phase(kube, namespace, "TrainingJob", "first", Phase.SUSPENDED)
        held_by = poll(
            lambda: (
                (c := _cond(get(kube, namespace, "TrainingJob", "first") or {}, "Suspended"))
                and c["reason"] == Reason.WORKLOAD_DEACTIVATED
                and c
            ),
            what="first TrainingJob Suspended through its Workload",
        )
        assert held_by["status"] == "True"
        assert held_by["reason"] != Reason.QUEUED_BY_KUEUE
        assert condition(tj, ConditionType.RUNNING)["status"] == "False"

        # The quota it gave back admits the job that waited for it, which runs to the end.
        wait_phase(kube, namespace, "TrainingJob", "second", Phase.SUCCEEDED)
        # Meanwhile Kueue did not bring the suspended one back (no un-suspend/suspend loop).
        assert kube.batch.read_namespaced_job("first", namespace).spec.suspend is True
        assert not live_pods(kube, namespace, "first")
        assert (_workload_of(kube, namespace, uid) or {})["spec"]["active"] is False
        still = get(kube, namespace, "TrainingJob", "first") or {}
        assert still["status"]["phase"] == Phase.SUSPENDED

        patch_spec(kube, namespace, "TrainingJob", "first", {"runPolicy": {"suspend": False}})
        readmitted = poll(
            lambda: (
                (w := _workload_of(kube, namespace, uid))
                and w["spec"].get("active", True) is True
                and (_cond(w, "Admitted") or {}).get("status") == "True"
                and w
            ),
            what="first Workload active and admitted again",
        )
        assert readmitted["metadata"]["name"] == wl["metadata"]["name"]
        pods = wait_running_pods(kube, namespace, "first", workers)
        running = wait_phase(kube, namespace, "TrainingJob", "first", Phase.RUNNING)
        back = condition(running, ConditionType.SUSPENDED)
        assert back["status"] == "False"
        assert back["reason"] in (Reason.RESUMED, Reason.ADMITTED_BY_KUEUE)
        release(kube, namespace, pods)
        done = wait_phase(kube, namespace, "TrainingJob", "first", Phase.SUCCEEDED)
        assert done["status"]["startTime"]


# ------------------------------------------------------------------ Kueue's own labels (issue 15)


def _labelled_job(name: str, labels: dict[str, str]) -> dict[str, Any]:
    """A job that names its queue only the way Kueue users do: labels on the job itself
    (no ``spec.scheduling``: gang ``auto``)."""
    m = copy.deepcopy(example("digits-ddp.yaml"))
    m["metadata"]["name"] = name
    m["metadata"]["labels"] = dict(labels)
    m["spec"]["resources"]["gpu"] = GPUS_PER_WORKER
    m["spec"].pop("scheduling", None)
    return m


def _set_gpu_quota(kube: Kube, namespace: str, gpus: int) -> None:
    """Change the GPU quota of the ``queue`` fixture's ClusterQueue."""
    cq = f"{namespace}-cq"
    obj = kube.custom.get_cluster_custom_object(GROUP, VERSION, "clusterqueues", cq)
    groups = obj["spec"]["resourceGroups"]
    for r in groups[0]["flavors"][0]["resources"]:
        if r["name"] == GPU_RESOURCE:
            r["nominalQuota"] = gpus
    kube.custom.patch_cluster_custom_object(
        GROUP, VERSION, "clusterqueues", cq, {"spec": {"resourceGroups": groups}}
    )


def test_the_queue_label_on_the_trainingjob_alone_queues_it_in_kueue(
    kube: Kube, kueue: Kueue, namespace: str, queue: Any, tmp_path: Path
) -> None:
    """A TrainingJob with only ``kueue.x-k8s.io/queue-name: team`` on itself: the operator
    (gang auto) hands its Job to Kueue, which holds it while the ClusterQueue has no GPU quota
    and admits it once it has; the job runs to the end."""
    manifest = _labelled_job("labelled", {Label.KUEUE_QUEUE_NAME: "team"})
    queue(0)  # no GPUs yet: only Kueue can keep the Job from running
    with running_operator(kube, namespace, tmp_path):
        create(kube, namespace, manifest)
        job = _batch_job(kube, namespace, "labelled")
        assert job.metadata.labels[Label.KUEUE_QUEUE_NAME] == "team"
        wl = poll(lambda: _workload_of(kube, namespace, job.metadata.uid), what="Workload")
        assert wl["spec"]["queueName"] == "team"
        _wait_workload(
            kube, namespace, job.metadata.uid, "QuotaReserved", "False", "Workload pending"
        )

        def queued() -> dict[str, Any] | None:
            tj = get(kube, namespace, "TrainingJob", "labelled")
            c = _cond(tj or {}, ConditionType.SUSPENDED)
            return tj if c and c["reason"] == Reason.QUEUED_BY_KUEUE else None

        tj = poll(queued, what="TrainingJob queued by Kueue")
        assert tj["status"]["phase"] == Phase.PENDING
        assert "LocalQueue team" in tj["status"]["message"]
        # The operator knows Kueue holds it (not just Kueue, from the label kopf's adopt also
        # copies onto the Job): no startTime before admission, so a deadline waits for it.
        assert "startTime" not in tj["status"]
        assert kube.batch.read_namespaced_job("labelled", namespace).spec.suspend is True
        assert not worker_pods(kube, namespace, "labelled")

        _set_gpu_quota(kube, namespace, _gpus(manifest))
        admitted = _wait_workload(
            kube, namespace, job.metadata.uid, "Admitted", "True", "Workload admitted"
        )
        assert admitted["metadata"]["name"] == wl["metadata"]["name"]
        done = wait_phase(kube, namespace, "TrainingJob", "labelled", Phase.SUCCEEDED)
        took = condition(done, ConditionType.SUSPENDED)
        assert (took["status"], took["reason"]) == ("False", Reason.ADMITTED_BY_KUEUE)
        assert len(worker_pods(kube, namespace, "labelled")) == manifest["spec"]["workers"]


@pytest.fixture
def priority_class(kube: Kube, kueue: Kueue, namespace: str) -> Iterator[tuple[str, int]]:
    """A WorkloadPriorityClass (cluster-scoped; named after the test's namespace)."""
    name, value = f"{namespace}-urgent"[:63], 4242
    kube.custom.create_cluster_custom_object(
        GROUP,
        VERSION,
        "workloadpriorityclasses",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "WorkloadPriorityClass",
            "metadata": {"name": name},
            "value": value,
        },
    )
    yield name, value
    try:
        kube.custom.delete_cluster_custom_object(GROUP, VERSION, "workloadpriorityclasses", name)
    except client.ApiException as e:
        if e.status != 404:
            raise


def test_the_priority_class_label_reaches_the_workload(
    kube: Kube,
    kueue: Kueue,
    namespace: str,
    queue: Any,
    priority_class: tuple[str, int],
    tmp_path: Path,
) -> None:
    """``kueue.x-k8s.io/priority-class`` on the TrainingJob: Kueue gives the Workload of its
    worker Job that WorkloadPriorityClass's value (without it the priority would be 0)."""
    name, value = priority_class
    manifest = _labelled_job(
        "urgent", {Label.KUEUE_QUEUE_NAME: "team", Label.KUEUE_PRIORITY_CLASS: name}
    )
    queue(_gpus(manifest))
    with running_operator(kube, namespace, tmp_path):
        create(kube, namespace, manifest)
        job = _batch_job(kube, namespace, "urgent")
        assert job.metadata.labels[Label.KUEUE_PRIORITY_CLASS] == name
        wl = poll(lambda: _workload_of(kube, namespace, job.metadata.uid), what="Workload")
        assert wl["spec"]["priority"] == value
        ref = wl["spec"]["priorityClassRef"]  # Kueue v1beta2
        assert (ref["group"], ref["kind"], ref["name"]) == (GROUP, "WorkloadPriorityClass", name)
        wait_phase(kube, namespace, "TrainingJob", "urgent", Phase.SUCCEEDED)


def test_a_group_restart_loses_its_admission_and_queues_again(
    kube: Kube, kueue: Kueue, namespace: str, queue: Any, tmp_path: Path
) -> None:
    """What a group restart under Kueue looks like (docs/operator.md): the failed Job's
    Workload finishes with it and its quota is released; the next attempt is a new Job, hence
    a new Workload that must be admitted again. Here the ClusterQueue's GPU quota is taken away
    while the first attempt runs (Kueue leaves an admitted Workload alone), so the restarted
    group cannot start until the quota is back: the job says Restarting (queued) meanwhile."""
    manifest = held(_labelled_job("first", {Label.KUEUE_QUEUE_NAME: "team"}))
    queue(_gpus(manifest))
    workers = manifest["spec"]["workers"]
    with running_operator(kube, namespace, tmp_path):
        create(kube, namespace, manifest)
        pods = wait_running_pods(kube, namespace, "first", workers)
        wait_phase(kube, namespace, "TrainingJob", "first", Phase.RUNNING)
        old_uid = _batch_job(kube, namespace, "first").metadata.uid
        old_wl = _wait_workload(kube, namespace, old_uid, "Admitted", "True", "first admitted")
        _set_gpu_quota(kube, namespace, 0)

        # A rank is OOM-killed (137: retryable): the whole group restarts.
        set_pod_exit(kube.api_client, pods[1].metadata.name, namespace, 137, reason="OOMKilled")

        def new_attempt() -> Any:
            j = _batch_job(kube, namespace, "first")
            return j if j.metadata.uid != old_uid else None

        new_uid = poll(new_attempt, what="the next worker Job").metadata.uid
        new_wl = _wait_workload(
            kube, namespace, new_uid, "QuotaReserved", "False", "the new Workload pending"
        )
        assert new_wl["metadata"]["name"] != old_wl["metadata"]["name"]

        def restarting_queued() -> dict[str, Any] | None:
            tj = get(kube, namespace, "TrainingJob", "first")
            c = _cond(tj or {}, ConditionType.SUSPENDED)
            return tj if c and c["reason"] == Reason.QUEUED_BY_KUEUE else None

        tj = poll(restarting_queued, what="TrainingJob restarting, queued by Kueue")
        assert tj["status"]["phase"] == Phase.RESTARTING
        assert tj["status"]["message"].startswith("restarting: queued by Kueue in LocalQueue")
        assert tj["status"]["restarts"] == 1
        assert condition(tj, ConditionType.RESTARTING)["status"] == "True"
        assert kube.batch.read_namespaced_job("first", namespace).spec.suspend is True
        assert not live_pods(kube, namespace, "first")

        _set_gpu_quota(kube, namespace, _gpus(manifest))
        _wait_workload(kube, namespace, new_uid, "Admitted", "True", "admitted again")
        again = wait_running_pods(kube, namespace, "first", workers)
        running = wait_phase(kube, namespace, "TrainingJob", "first", Phase.RUNNING)
        assert condition(running, ConditionType.RESTARTING)["status"] == "False"
        back = condition(running, ConditionType.SUSPENDED)
        assert (back["status"], back["reason"]) == ("False", Reason.ADMITTED_BY_KUEUE)
        release(kube, namespace, again)
        done = wait_phase(kube, namespace, "TrainingJob", "first", Phase.SUCCEEDED)
        assert done["status"]["restarts"] == 1
