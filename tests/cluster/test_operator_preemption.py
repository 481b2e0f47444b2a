"""Preemption and node loss on the real control plane (KWOK nodes).

* A worker pod fails the way the scheduler's preemption leaves it (condition
  DisruptionTarget=True, reason PreemptionByScheduler, phase Failed, exit 143): the Job's
  podFailurePolicy fails it at once, and the operator restarts the whole group with reason
  Preempted, counted in status.preemptions and not against backoffLimit (0 here: a counted
  restart would fail the job).
* A node goes NotReady under a running job: the node lifecycle controller taints it, the
  taint manager evicts the worker pod once runPolicy.nodeLossTolerationSeconds has passed
  (DisruptionTarget, DeletionByTaintManager), and the group restarts on the remaining node.

The node-loss case uses two KWOK nodes of its own (the job's nodeSelector picks them), so
the shared nodes other tests use are never touched.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from tests.cluster.opkit import (
    condition,
    create,
    example,
    held,
    running_operator,
    the_event,
    wait_phase,
    wait_running_pods,
)

from torchyard.api.constants import ConditionType, Phase, Reason
from torchyard.api.contract import Annotation
from torchyard_devcluster.nodes import create_nodes
from torchyard_devcluster.stages import FAKE_NODE_ANNOTATION
from torchyard_devcluster.testing import Kube, poll

pytestmark = pytest.mark.cluster

NAME = "digits-ddp"


def _attempt(pod: Any) -> str:
    return str(pod.metadata.annotations[Annotation.RESTART_COUNT])


def _job(backoff_limit: int, **run_policy: Any) -> dict[str, Any]:
    m = held(example("digits-ddp.yaml"))
    m["spec"]["runPolicy"] = {"backoffLimit": backoff_limit, **run_policy}
    return m


def _group_of_attempt(kube: Kube, namespace: str, attempt: str) -> list[Any]:
    def check() -> list[Any] | None:
        pods = wait_running_pods(kube, namespace, NAME, 2)
        return pods if {_attempt(p) for p in pods} == {attempt} else None

    result: list[Any] = poll(check, timeout=180, what=f"the group of attempt {attempt}")
    return result


def _preempt_as_the_scheduler_does(kube: Kube, namespace: str, pod: Any) -> None:
    """What preemption leaves on a pod: DisruptionTarget=True, then (kubelet) Failed, 143."""
    terminated = {"exitCode": 143, "reason": "Error"}
    kube.core.patch_namespaced_pod_status(
        pod.metadata.name,
        namespace,
        {
            "status": {
                "phase": "Failed",
                "conditions": [
                    {
                        "type": "DisruptionTarget",
                        "status": "True",
                        "reason": "PreemptionByScheduler",
                        "message": "Preempted in order to admit critical pod",
                    },
                    {"type": "Ready", "status": "False", "reason": "PodFailed"},
                ],
                "containerStatuses": [
                    {
                        "name": c.name,
                        "image": c.image,
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": {"running": None, "terminated": terminated},
                    }
                    for c in pod.spec.containers
                ],
            }
        },
    )


def test_preempted_pod_restarts_the_group_without_counting_against_backoff(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    with running_operator(kube, namespace, tmp_path):
        create(kube, namespace, _job(backoff_limit=0))
        first = _group_of_attempt(kube, namespace, "0")
        wait_phase(kube, namespace, "TrainingJob", NAME, Phase.RUNNING)
        spec = first[0].spec
        assert spec.termination_grace_period_seconds == 30  # runPolicy.gracePeriodSeconds
        rank1 = next(p for p in first if p.metadata.annotations[Annotation.COMPLETION_INDEX] == "1")
        _preempt_as_the_scheduler_does(kube, namespace, rank1)

        event = the_event(kube, namespace, NAME, Reason.PREEMPTED)
        assert "worker 1 was disrupted (PreemptionByScheduler" in event.message
        second = _group_of_attempt(kube, namespace, "1")
        assert not {p.metadata.uid for p in second} & {p.metadata.uid for p in first}
        running = wait_phase(kube, namespace, "TrainingJob", NAME, Phase.RUNNING)
        status = running["status"]
        assert status["restarts"] == 1
        assert status["preemptions"] == 1  # backoffLimit 0: a counted restart would fail it
        restarting = condition(running, ConditionType.RESTARTING)
        assert restarting["status"] == "False"


# --------------------------------------------------------------------------- node loss


@pytest.fixture
def two_nodes(kube: Kube, namespace: str) -> Iterator[list[str]]:
    """Two KWOK nodes only this test's job may use (label pool=<namespace>)."""
    names = create_nodes(
        kube.api_client,
        n=2,
        prefix=f"{namespace}-n"[:60],
        labels={"torchyard-test/pool": namespace},
    )
    try:
        yield names
    finally:
        for n in names:
            try:
                kube.core.delete_node(n)
            except client.ApiException as e:
                if e.status != 404:
                    raise


def _lose_node(kube: Kube, node: str) -> None:
    """The node's kubelet dies: KWOK stops acting for it (no heartbeat, no pod updates) and
    its Ready condition turns False, which the node lifecycle controller reads and taints
    (node.kubernetes.io/not-ready:NoExecute)."""
    kube.core.patch_node(node, {"metadata": {"annotations": {FAKE_NODE_ANNOTATION: None}}})
    kube.core.patch_node_status(
        node,
        {
            "status": {
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "False",
                        "reason": "KubeletNotReady",
                        "message": "test: node lost",
                    }
                ]
            }
        },
    )


def _disruption_of(kube: Kube, namespace: str, name: str) -> str | None:
    pod = kube.core.read_namespaced_pod(name, namespace)
    for c in pod.status.conditions or []:
        if c.type == "DisruptionTarget" and c.status == "True":
            return str(c.reason)
    return None


def test_node_not_ready_restarts_the_group_on_the_remaining_node(
    kube: Kube, namespace: str, tmp_path: Path, two_nodes: list[str]
) -> None:
    m = _job(backoff_limit=0, nodeLossTolerationSeconds=2)
    m["spec"]["scheduling"] = {"nodeSelector": {"torchyard-test/pool": namespace}}
    with running_operator(kube, namespace, tmp_path):
        create(kube, namespace, m)
        first = _group_of_attempt(kube, namespace, "0")
        victim = first[0]
        lost = victim.spec.node_name
        assert lost in two_nodes
        _lose_node(kube, lost)
        # evicted by the taint manager after nodeLossTolerationSeconds (2 s here; the
        # admission default of 300 s would outlast this wait)
        reason = poll(
            lambda: _disruption_of(kube, namespace, victim.metadata.name),
            timeout=120,
            what="the eviction of the pod on the lost node",
        )
        assert reason == "DeletionByTaintManager"
        # No kubelet confirms the deletion, and a Job with a podFailurePolicy waits for the
        # pod's Failed phase: Kubernetes' rule for a node that is gone for good is that the
        # node is deleted or tainted out-of-service; pod GC then marks the pod Failed.
        kube.core.patch_node(
            lost,
            {
                "spec": {
                    "taints": [
                        {
                            "key": "node.kubernetes.io/out-of-service",
                            "value": "nodeshutdown",
                            "effect": "NoExecute",
                        }
                    ]
                }
            },
        )
        event = the_event(kube, namespace, NAME, Reason.PREEMPTED)
        # pod GC deleted the lost pod once Failed: the Job's condition names it
        assert f"{victim.metadata.name} was disrupted" in event.message
        second = _group_of_attempt(kube, namespace, "1")
        assert {p.spec.node_name for p in second} == set(two_nodes) - {lost}
        running = wait_phase(kube, namespace, "TrainingJob", NAME, Phase.RUNNING)
        assert running["status"]["preemptions"] == 1
