"""Child ownership (torchyard.state): a child's name taken by an object this job does not own
is never adopted, patched or deleted; the job is held (``NameConflict``) until the name is free.
Pure data in, decision out."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

from tests.unit.test_status import (
    T0,
    blocked,
    cond,
    held_then_created,
    job,
    run,
    step,
    tj_body,
)
from torchyard.api.constants import (
    COMPRESSION_JOB_KIND,
    TRAINING_JOB_KIND,
    ConditionType,
    Phase,
    Reason,
)
from torchyard.builders import child_name, configmap_name
from torchyard.state import (
    ActionKind,
    classify_existing,
    controlled_by,
    controller_ref,
)

CJ_UID = "cj-uid"
TJ_UID = "tj-uid"


def owner_ref(kind: str, name: str, uid: str, controller: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": "torchyard.io/v1alpha1",
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": controller,
        "blockOwnerDeletion": True,
    }


def existing(name: str, *refs: dict[str, Any], deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "ml", "uid": "obj-uid"}
    if refs:
        meta["ownerReferences"] = list(refs)
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T12:00:00Z"
    return {"metadata": meta}


def test_a_compression_job_and_a_training_job_named_with_its_suffix_share_child_names() -> None:
    # Why the check is needed at all: the names alone cannot keep these two apart.
    assert child_name(COMPRESSION_JOB_KIND, "x") == child_name(TRAINING_JOB_KIND, "x-cj")
    assert configmap_name(COMPRESSION_JOB_KIND, "x") == configmap_name(TRAINING_JOB_KIND, "x-cj")


def test_own_child_is_not_a_conflict() -> None:
    mine = existing("x-cj-spec", owner_ref(COMPRESSION_JOB_KIND, "x", CJ_UID))
    assert controlled_by(mine, CJ_UID)
    assert classify_existing("ConfigMap", mine, COMPRESSION_JOB_KIND, "x", CJ_UID) is None


def test_another_jobs_child_is_a_name_conflict_naming_it_and_what_to_do() -> None:
    theirs = existing(
        configmap_name(TRAINING_JOB_KIND, "x-cj"), owner_ref(TRAINING_JOB_KIND, "x-cj", TJ_UID)
    )
    r = classify_existing("ConfigMap", theirs, COMPRESSION_JOB_KIND, "x", CJ_UID)
    assert r is not None
    assert (r.reason, r.temporary) == (Reason.NAME_CONFLICT, True)
    assert "spec ConfigMap x-cj-spec" in r.message
    assert "belongs to TrainingJob x-cj" in r.message
    assert "rename this CompressionJob or the TrainingJob x-cj" in r.message
    assert "never adopts, changes or deletes" in r.message


def test_a_users_object_without_an_owner_is_a_name_conflict() -> None:
    r = classify_existing("Job", existing("x"), TRAINING_JOB_KIND, "x", TJ_UID)
    assert r is not None
    assert (r.reason, r.temporary) == (Reason.NAME_CONFLICT, True)
    assert "worker Job x" in r.message
    assert "not owned by any job" in r.message
    assert "rename this TrainingJob" in r.message


def test_an_owner_reference_that_is_not_the_controller_does_not_make_it_ours() -> None:
    shared = existing("x", owner_ref(TRAINING_JOB_KIND, "x", TJ_UID, controller=False))
    assert controller_ref(shared) is None
    assert not controlled_by(shared, TJ_UID)
    r = classify_existing("Service", shared, TRAINING_JOB_KIND, "x", TJ_UID)
    assert r is not None
    assert r.reason == Reason.NAME_CONFLICT


def test_other_controllers_are_named_by_kind_and_name() -> None:
    r = classify_existing(
        "Service",
        existing("x", owner_ref("Deployment", "web", "d-uid"), deleting=True),
        TRAINING_JOB_KIND,
        "x",
        TJ_UID,
    )
    assert r is not None
    assert "headless Service x already exists (being deleted) and belongs to Deployment web" in (
        r.message
    )
    assert "named after it" not in r.message  # the TrainingJob/CompressionJob hint only for them


def test_the_leftover_of_an_earlier_job_of_the_same_name_is_waited_out() -> None:
    old = existing("x-spec", owner_ref(TRAINING_JOB_KIND, "x", "old-uid"))
    r = classify_existing("ConfigMap", old, TRAINING_JOB_KIND, "x", TJ_UID)
    assert r is not None
    assert (r.reason, r.temporary) == (Reason.NAME_CONFLICT, True)
    assert "earlier TrainingJob x (uid old-uid)" in r.message
    assert "garbage-collected" in r.message


def test_no_uid_owns_nothing() -> None:
    assert not controlled_by(existing("x", owner_ref(TRAINING_JOB_KIND, "x", "")), "")


def test_name_conflict_holds_the_job_says_so_once_then_proceeds() -> None:
    theirs = existing("digits", owner_ref(COMPRESSION_JOB_KIND, "digit", "cj"))
    r = classify_existing("Job", theirs, TRAINING_JOB_KIND, "digits", "u1")
    assert r is not None
    d = blocked(tj_body(), r.reason, r.message)
    assert d.actions == []
    assert d.status["phase"] == Phase.PENDING
    c = cond(d, ConditionType.CREATED)
    assert (c["status"], c["reason"], c["message"]) == ("False", Reason.NAME_CONFLICT, r.message)
    assert [(e.type, e.reason) for e in d.events] == [("Warning", Reason.NAME_CONFLICT)]
    # retried while the name is taken; the other object is gone: the children are created
    go = held_then_created(d, r.reason, r.message)
    assert cond(go, ConditionType.CREATED)["reason"] == Reason.JOB_CREATED


def test_cleaning_pods_names_the_jobs_own_batch_job() -> None:
    body = tj_body(run_policy={"activeDeadlineSeconds": 30})
    body = step(body, run(body, job=job(active=2, ready=2)))
    late = run(body, job=job(active=2, ready=2, uid="mine"), now=T0 + timedelta(seconds=31))
    assert late.status["phase"] == Phase.FAILED
    clean = [a for a in late.actions if a.kind is ActionKind.CLEAN_PODS]
    assert [a.job_uid for a in clean] == ["mine"]


def test_a_job_another_object_controls_is_never_stopped_or_cleaned() -> None:
    body = tj_body(run_policy={"activeDeadlineSeconds": 30})
    body = step(body, run(body, job=job(active=2, ready=2)))
    # what the reconciler makes of a Job with our labels but another controller
    foreign = replace(job(active=2, ready=2), deleting=True, restart_count=-1, owned=False)
    late = run(body, job=foreign, now=T0 + timedelta(seconds=31))
    assert late.status["phase"] == Phase.FAILED
    assert late.actions == []
