"""Gang scheduling modes on the real control plane: each mode produces the objects its
scheduler expects; `auto` picks by the API groups the cluster serves. The PodGroup CRDs are
installed from minimal YAML written from Volcano's and scheduler-plugins' published schemas
(tests/cluster/gang_crds/) and removed afterwards. No gang scheduler runs here, so the Kueue
test below plays Kueue's admission (un-suspending the Job) and checks only our side of that
contract; tests/cluster/test_operator_kueue.py runs the real Kueue."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from tests.cluster.opkit import (
    condition,
    create,
    event_reasons,
    example,
    get,
    running_operator,
    the_event,
    wait_phase,
    worker_jobs,
    worker_pods,
)

from torchyard.api.constants import ConditionType, Phase, Reason
from torchyard_devcluster.testing import Kube, poll

pytestmark = pytest.mark.cluster

CRD_DIR = Path(__file__).parent / "gang_crds"
VOLCANO = ("volcano-podgroup.yaml", "scheduling.volcano.sh", "v1beta1")
COSCHEDULING = ("coscheduling-podgroup.yaml", "scheduling.x-k8s.io", "v1alpha1")


def _groups(kube: Kube) -> set[str]:
    return {g.name for g in client.ApisApi(kube.api_client).get_api_versions().groups}


def _terminating(kube: Kube, name: str) -> bool:
    try:
        crd = kube.apiext.read_custom_resource_definition(name)
    except client.ApiException as e:
        if e.status == 404:
            return False
        raise
    return crd.metadata.deletion_timestamp is not None


@pytest.fixture
def gang_crds(kube: Kube) -> Iterator[Callable[..., None]]:
    installed: list[tuple[str, str]] = []

    def install(*crds: tuple[str, str, str]) -> None:
        for file, group, _ in crds:
            doc = yaml.safe_load((CRD_DIR / file).read_text())
            name = doc["metadata"]["name"]
            # One left over from an earlier run may still be terminating: wait it out.
            poll(lambda n=name: not _terminating(kube, n), timeout=120, what=f"{name} gone")
            try:
                kube.apiext.create_custom_resource_definition(doc)
            except client.ApiException as e:
                if e.status != 409:
                    raise
            installed.append((doc["metadata"]["name"], group))
        want = {g for _, g, _ in crds}
        poll(lambda: want <= _groups(kube), timeout=60, what=f"API groups {want}")

    yield install
    for name, _ in installed:
        try:
            kube.apiext.delete_custom_resource_definition(name)
        except client.ApiException as e:
            if e.status != 404:
                raise
    gone = {g for _, g in installed}
    poll(lambda: not (gone & _groups(kube)), timeout=120, what=f"API groups {gone} removed")


def _job(gang: str, queue: str | None = None) -> dict[str, Any]:
    m = example("digits-ddp.yaml")
    m["spec"]["scheduling"] = {"gang": gang, **({"queue": queue} if queue else {})}
    return m


def _podgroup(kube: Kube, namespace: str, group: str, version: str) -> dict[str, Any]:
    def read() -> dict[str, Any] | None:
        try:
            out: dict[str, Any] = kube.custom.get_namespaced_custom_object(
                group, version, namespace, "podgroups", "digits-ddp"
            )
            return out
        except client.ApiException as e:
            if e.status == 404:
                return None
            raise

    return poll(read, what=f"{group} PodGroup")


def _template(kube: Kube, namespace: str) -> Any:
    (job,) = poll(lambda: worker_jobs(kube, namespace), what="the worker Job")
    return job


def test_volcano_podgroup_and_scheduler(
    kube: Kube, namespace: str, tmp_path: Path, gang_crds: Callable[..., None]
) -> None:
    gang_crds(VOLCANO)
    with running_operator(kube, namespace, tmp_path):
        create(kube, namespace, _job("volcano", queue="research"))
        pg = _podgroup(kube, namespace, "scheduling.volcano.sh", "v1beta1")
        assert pg["spec"]["minMember"] == 2
        assert pg["spec"]["queue"] == "research"
        tj = get(kube, namespace, "TrainingJob", "digits-ddp")
        assert tj is not None
        assert pg["metadata"]["ownerReferences"][0]["uid"] == tj["metadata"]["uid"]
        job = _template(kube, namespace)
        pod_tpl = job.spec.template
        assert pod_tpl.spec.scheduler_name == "volcano"
        assert pod_tpl.metadata.annotations["scheduling.k8s.io/group-name"] == "digits-ddp"
        # no Volcano scheduler here: the pods wait, the job says so
        poll(lambda: len(worker_pods(kube, namespace, "digits-ddp")) == 2, what="pods")
        # (the message is "0/2 workers ready" from the Job's creation on: wait for the counts)
        tj = poll(
            lambda: (
                (t := get(kube, namespace, "TrainingJob", "digits-ddp"))
                and ((t.get("status") or {}).get("workers") or {}).get("active") == 2
                and t
            ),
            what="2 active workers counted",
        )
        assert tj["status"]["phase"] == Phase.PENDING
        assert tj["status"]["message"] == "0/2 workers ready"


def test_coscheduling_podgroup_and_label(
    kube: Kube, namespace: str, tmp_path: Path, gang_crds: Callable[..., None]
) -> None:
    gang_crds(COSCHEDULING)
    with running_operator(kube, namespace, tmp_path):
        m = _job("coscheduling")
        m["spec"]["scheduling"]["scheduleTimeoutSeconds"] = 30
        create(kube, namespace, m)
        pg = _podgroup(kube, namespace, "scheduling.x-k8s.io", "v1alpha1")
        assert pg["spec"] == {"minMember": 2, "scheduleTimeoutSeconds": 30}
        job = _template(kube, namespace)
        assert job.spec.template.metadata.labels["scheduling.x-k8s.io/pod-group"] == "digits-ddp"
        # the default scheduler still places them (the plugin would gate them as a group)
        wait_phase(kube, namespace, "TrainingJob", "digits-ddp", Phase.SUCCEEDED)


def test_auto_prefers_volcano_then_coscheduling(
    kube: Kube, namespace: str, tmp_path: Path, gang_crds: Callable[..., None]
) -> None:
    gang_crds(COSCHEDULING, VOLCANO)
    with running_operator(kube, namespace, tmp_path):
        create(kube, namespace, _job("auto"))
        _podgroup(kube, namespace, "scheduling.volcano.sh", "v1beta1")
        assert _template(kube, namespace).spec.template.spec.scheduler_name == "volcano"


def test_auto_without_gang_schedulers_is_plain(kube: Kube, namespace: str, tmp_path: Path) -> None:
    groups = _groups(kube)
    assert not groups & {"scheduling.volcano.sh", "scheduling.x-k8s.io", "kueue.x-k8s.io"}
    with running_operator(kube, namespace, tmp_path):
        create(kube, namespace, _job("auto"))
        job = _template(kube, namespace)
        tpl = job.spec.template
        assert tpl.spec.scheduler_name in (None, "default-scheduler")
        assert "scheduling.x-k8s.io/pod-group" not in (tpl.metadata.labels or {})
        assert "kueue.x-k8s.io/queue-name" not in (job.metadata.labels or {})
        wait_phase(kube, namespace, "TrainingJob", "digits-ddp", Phase.SUCCEEDED)


def test_kueue_job_starts_suspended_with_queue_label(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    with running_operator(kube, namespace, tmp_path):
        create(kube, namespace, _job("kueue", queue="team-a"))
        job = _template(kube, namespace)
        assert job.metadata.labels["kueue.x-k8s.io/queue-name"] == "team-a"
        assert job.spec.suspend is True
        pending = poll(
            lambda: (
                (tj := get(kube, namespace, "TrainingJob", "digits-ddp"))
                and "admission" in (tj.get("status") or {}).get("message", "")
                and tj
            ),
            what="Pending, waiting for admission",
        )
        assert pending["status"]["phase"] == Phase.PENDING
        assert "startTime" not in pending["status"]
        assert not worker_pods(kube, namespace, "digits-ddp")
        # Admission, as Kueue does it: un-suspend the Job. The operator must not fight it.
        kube.batch.patch_namespaced_job("digits-ddp", namespace, {"spec": {"suspend": False}})
        done = wait_phase(kube, namespace, "TrainingJob", "digits-ddp", Phase.SUCCEEDED)
        assert done["status"]["startTime"]


@pytest.mark.parametrize(
    ("gang", "crd"),
    [("volcano", VOLCANO), ("coscheduling", COSCHEDULING)],
    ids=["volcano", "coscheduling"],
)
def test_missing_gang_scheduler_is_visible_and_installing_it_lets_the_job_proceed(
    kube: Kube,
    namespace: str,
    tmp_path: Path,
    gang_crds: Callable[..., None],
    gang: str,
    crd: tuple[str, str, str],
) -> None:
    _, group, version = crd
    assert group not in _groups(kube)
    with running_operator(kube, namespace, tmp_path) as op:
        create(kube, namespace, _job(gang))

        def blocked() -> dict[str, Any] | None:
            tj = get(kube, namespace, "TrainingJob", "digits-ddp") or {}
            conds = (tj.get("status") or {}).get("conditions") or []
            return tj if any(c["reason"] == Reason.GANG_SCHEDULER_MISSING for c in conds) else None

        tj = poll(blocked, what="Created=False GangSchedulerMissing")
        assert tj["status"]["phase"] == Phase.PENDING
        created = condition(tj, ConditionType.CREATED)
        assert created["status"] == "False"
        for part in (
            f"spec.scheduling.gang is {gang}",
            f"{group}/{version} PodGroup API",
            "install",
        ):
            assert part in created["message"], created["message"]
        event = the_event(kube, namespace, "digits-ddp", Reason.GANG_SCHEDULER_MISSING)
        assert event.type == "Warning"
        assert "spec.scheduling.gang" in event.message
        assert worker_jobs(kube, namespace) == []  # no pods before their gang exists
        # the retries count as reconcile errors (the dashboards' error panel)
        assert 'torchyard_reconcile_errors_total{kind="TrainingJob"}' in op.metrics()

        # The gang scheduler's API arrives: the next retry (backoff <= 30 s) goes through.
        gang_crds(crd)
        _podgroup(kube, namespace, group, version)
        _template(kube, namespace)
        tj = poll(
            lambda: (
                (t := get(kube, namespace, "TrainingJob", "digits-ddp"))
                and condition(t, ConditionType.CREATED)["status"] == "True"
                and t
            ),
            what="Created=True",
        )
        assert condition(tj, ConditionType.CREATED)["reason"] == Reason.JOB_CREATED
        if gang == "coscheduling":
            # the default scheduler places the pods: the job runs to the end
            wait_phase(kube, namespace, "TrainingJob", "digits-ddp", Phase.SUCCEEDED)
        reasons = event_reasons(kube, namespace, "digits-ddp", Reason.GANG_SCHEDULER_MISSING)
        assert reasons.count(Reason.GANG_SCHEDULER_MISSING) == 1
