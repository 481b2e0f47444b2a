"""Kueue's own labels on a TrainingJob/CompressionJob (issue 15): ``kueue.x-k8s.io/queue-name``
is honoured like ``spec.scheduling.queue`` (a conflict between them fails the job, naming both),
``kueue.x-k8s.io/priority-class`` reaches the worker Job Kueue makes its Workload from."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import pytest

from tests.conftest import EXAMPLES
from tests.unit.test_status import cond, kinds, run, tj_body
from torchyard.api import CompressionJob, TrainingJob, load_manifest
from torchyard.api.constants import ConditionType, Phase, Reason
from torchyard.api.contract import KUEUE_GROUP, VOLCANO_GROUP, Label
from torchyard.builders import build_children, kueue_queue_of
from torchyard.controller.gang import GangResolver
from torchyard.state import ActionKind
from torchyard.state.kueue import job_queue, kueue_label_conflict


def digits(labels: dict[str, str], queue: str | None = None) -> TrainingJob:
    job = load_manifest(EXAMPLES / "digits-ddp.yaml")
    assert isinstance(job, TrainingJob)
    job.metadata.labels = dict(labels)
    job.spec.scheduling.queue = queue
    return job


def labelled(body: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    body["metadata"]["labels"] = labels
    return body


# ------------------------------------------------------------------------ the builders


def test_the_queue_label_alone_puts_the_worker_job_in_that_queue() -> None:
    job = digits({Label.KUEUE_QUEUE_NAME: "team"})
    built = build_children(job, gang="kueue").job
    assert built["metadata"]["labels"][Label.KUEUE_QUEUE_NAME] == "team"
    assert built["spec"]["suspend"] is True  # held until Kueue admits it


def test_the_spec_queue_and_an_equal_label_agree() -> None:
    job = digits({Label.KUEUE_QUEUE_NAME: "team"}, queue="team")
    assert kueue_queue_of(job) == job_queue(job) == "team"
    assert kueue_label_conflict(job) is None


def test_no_queue_anywhere_leaves_the_job_to_no_queue() -> None:
    job = digits({})
    assert kueue_queue_of(job) is None
    built = build_children(job, gang="kueue").job
    assert Label.KUEUE_QUEUE_NAME not in built["metadata"]["labels"]
    assert built["spec"]["suspend"] is False


@pytest.mark.parametrize("gang", ["kueue", "none"])
def test_the_priority_class_label_reaches_the_worker_job(gang: str) -> None:
    job = digits({Label.KUEUE_QUEUE_NAME: "team", Label.KUEUE_PRIORITY_CLASS: "urgent"})
    built = build_children(job, gang=gang).job  # type: ignore[arg-type]
    assert built["metadata"]["labels"][Label.KUEUE_PRIORITY_CLASS] == "urgent"
    # The pods' own PriorityClass is a different thing (spec.scheduling.priorityClassName).
    assert "priorityClassName" not in built["spec"]["template"]["spec"]


def test_a_compressionjob_honours_the_labels_too() -> None:
    job = load_manifest(EXAMPLES / "compress-quantize.yaml")
    assert isinstance(job, CompressionJob)
    job.metadata.labels = {Label.KUEUE_QUEUE_NAME: "team", Label.KUEUE_PRIORITY_CLASS: "low"}
    labels = build_children(job, gang="kueue").job["metadata"]["labels"]
    assert labels[Label.KUEUE_QUEUE_NAME] == "team"
    assert labels[Label.KUEUE_PRIORITY_CLASS] == "low"


# ------------------------------------------------------------------------ gang: auto


class _Served(GangResolver):
    """A resolver whose cluster serves ``groups`` (no API server asked)."""

    def __init__(self, groups: Collection[str]) -> None:
        super().__init__(api=None)
        self._served = frozenset(groups)

    def groups(self) -> frozenset[str]:
        return self._served


def test_auto_chooses_kueue_for_a_job_that_only_carries_the_label() -> None:
    job = digits({Label.KUEUE_QUEUE_NAME: "team"})
    resolver = _Served({KUEUE_GROUP, VOLCANO_GROUP})
    assert resolver.resolve(job.spec.scheduling, kueue_queue_of(job)) == "kueue"
    assert resolver.resolve(digits({}).spec.scheduling, None) == "volcano"


# ------------------------------------------------------------------------ the state machine


def test_a_label_that_contradicts_the_spec_fails_the_job_naming_both() -> None:
    body = labelled(tj_body(scheduling={"queue": "team-a"}), {Label.KUEUE_QUEUE_NAME: "team-b"})
    d = run(body)
    assert ActionKind.CREATE not in kinds(d)
    assert d.status["phase"] == Phase.FAILED
    failed = cond(d, ConditionType.FAILED)
    assert failed["reason"] == Reason.INVALID_SPEC
    for part in ("metadata.labels['kueue.x-k8s.io/queue-name']", "spec.scheduling.queue"):
        assert part in failed["message"]
    assert "'team-a'" in failed["message"]
    assert "'team-b'" in failed["message"]


def test_a_job_queued_by_its_label_gets_no_start_time_before_admission() -> None:
    # Kueue may hold the new Job (suspended): startTime is set on admission, as with the spec.
    d = run(labelled(tj_body(), {Label.KUEUE_QUEUE_NAME: "team"}))
    assert kinds(d) == [ActionKind.CREATE]
    assert d.status["phase"] == Phase.PENDING
    assert "startTime" not in d.status
    assert "startTime" in run(tj_body()).status
