"""The namespace's shared look at waiting worker pods (torchyard/controller/waiting_pods.py):
one list, filtered on the server to our scheduled Pending pods, answers every job of the
namespace for a few seconds, grouped by the Job that owns each pod.

Against a stand-in API server (tests/unit/kubestub.py) through the operator's real client,
so the query it sends is the one checked. That the API server accepts the field selector and
that a stuck pod is found through it on a real kubelet: tests/real/test_jobs_on_real_pods.py
(test_an_image_that_does_not_exist_is_named_in_the_job_status)."""

from __future__ import annotations

import threading
from typing import Any

from kubernetes.client import ApiClient, Configuration

from tests.unit.kubestub import serving
from torchyard.api.contract import Label
from torchyard.controller.kube import Kube
from torchyard.controller.waiting_pods import FORGET_SECONDS, SELECTOR, WAITING, WaitingPods
from torchyard.metrics import OperatorMetrics

PODS = "/api/v1/namespaces/ml/pods"


def _pod(name: str, job_uid: str | None, reason: str = "ImagePullBackOff") -> dict[str, Any]:
    labels = {Label.MANAGED_BY: Label.MANAGED_BY_VALUE}
    if job_uid:
        labels[Label.JOB_CONTROLLER_UID] = job_uid
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": "node-1"},
        "status": {
            "phase": "Pending",
            "containerStatuses": [{"name": "worker", "state": {"waiting": {"reason": reason}}}],
        },
    }


def _waiting(url: str, clock: list[float]) -> WaitingPods:
    api = ApiClient(Configuration(host=url))
    return WaitingPods(Kube(api, OperatorMetrics()), reuse_seconds=5.0, clock=lambda: clock[0])


def test_one_list_serves_every_job_of_the_namespace_grouped_by_job() -> None:
    clock = [100.0]
    with serving() as stub:
        items = [_pod("a-0", "job-a"), _pod("a-1", "job-a"), _pod("b-0", "job-b"), _pod("x", None)]
        stub.answers[PODS] = (200, {"kind": "PodList", "items": items})
        waiting = _waiting(stub.url, clock)
        at, pods_a = waiting.of("ml", "job-a")
        clock[0] += 4.9
        at_b, pods_b = waiting.of("ml", "job-b")
        _, none = waiting.of("ml", "job-c")
        assert [p.name for p in pods_a] == ["a-0", "a-1"]
        assert [p.waiting_reason for p in pods_b] == ["ImagePullBackOff"]
        assert none == ()
        assert at_b == at  # the same look, and it says when it was taken
        queries = stub.asked(PODS)
        assert len(queries) == 1
        # Only our pods, only those on a node and not started: no others are sent.
        assert queries[0]["labelSelector"] == [SELECTOR]
        assert queries[0]["fieldSelector"] == [WAITING]
        assert WAITING == "status.phase=Pending,spec.nodeName!="


def test_a_look_older_than_the_reuse_time_is_taken_again() -> None:
    clock = [100.0]
    with serving() as stub:
        stub.answers[PODS] = (200, {"kind": "PodList", "items": [_pod("a-0", "job-a")]})
        waiting = _waiting(stub.url, clock)
        first, _ = waiting.of("ml", "job-a")
        clock[0] += 5.0
        stub.answers[PODS] = (200, {"kind": "PodList", "items": []})
        second, pods = waiting.of("ml", "job-a")
        assert pods == ()  # the pod started since
        assert second > first
        assert len(stub.asked(PODS)) == 2
        # Each namespace has its own look.
        stub.answers["/api/v1/namespaces/other/pods"] = (200, {"kind": "PodList", "items": []})
        waiting.of("other", "job-a")
        assert len(stub.asked("/api/v1/namespaces/other/pods")) == 1
        # A namespace nobody asks about any more keeps no look (its pods' memory).
        clock[0] += FORGET_SECONDS + 1
        waiting.of("other", "job-a")
        assert set(waiting._looks) == {"other"}


def test_jobs_asking_at_once_wait_for_one_look() -> None:
    # Reconciles run on many threads; in a burst many jobs are due at the same moment.
    clock = [100.0]
    with serving() as stub:
        stub.answers[PODS] = (200, {"kind": "PodList", "items": [_pod("a-0", "job-a")]})
        waiting = _waiting(stub.url, clock)
        start = threading.Barrier(8)
        found: list[int] = []

        def ask() -> None:
            start.wait()
            found.append(len(waiting.of("ml", "job-a")[1]))

        threads = [threading.Thread(target=ask) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert found == [1] * 8
        assert len(stub.asked(PODS)) == 1
