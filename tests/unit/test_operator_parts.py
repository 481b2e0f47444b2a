"""Pure parts of the operator: gang-mode choice, metrics bookkeeping, Kopf settings."""

from __future__ import annotations

import json

import kopf
import pytest
from prometheus_client import generate_latest

from torchyard.api.constants import COMPRESSION_JOB_PLURAL, GROUP, TRAINING_JOB_PLURAL, VERSION
from torchyard.controller import FINALIZER, configure
from torchyard.controller.gang import choose_gang
from torchyard.controller.modelversions import has_model_to_record
from torchyard.metrics import OperatorMetrics

ALL = {"kueue.x-k8s.io", "scheduling.volcano.sh", "scheduling.x-k8s.io"}


@pytest.mark.parametrize(
    ("requested", "queue", "groups", "mode"),
    [
        ("auto", None, set(), "none"),
        ("auto", None, {"scheduling.x-k8s.io"}, "coscheduling"),
        ("auto", None, {"scheduling.x-k8s.io", "scheduling.volcano.sh"}, "volcano"),
        ("auto", "q", ALL, "kueue"),
        ("auto", None, ALL, "volcano"),  # Kueue needs a queue name
        ("none", "q", ALL, "none"),
        ("volcano", None, set(), "volcano"),  # explicit modes are not second-guessed
        ("coscheduling", None, set(), "coscheduling"),
        ("kueue", "q", set(), "kueue"),
    ],
)
def test_choose_gang(requested: str, queue: str | None, groups: set[str], mode: str) -> None:
    assert choose_gang(requested, queue, groups) == mode


def _text(m: OperatorMetrics) -> str:
    return generate_latest(m.registry).decode()


def test_job_series_follow_the_phase_and_go_with_the_job() -> None:
    m = OperatorMetrics()
    m.observe_job("TrainingJob", "ml", "a", "Pending", strategy="ddp", workers=2, gang="auto")
    m.observe_job("TrainingJob", "ml", "a", "Running", strategy="ddp", workers=2, gang="auto")
    m.observe_job("TrainingJob", "ml", "b", "Running", strategy="ddp", workers=4, gang="none")
    m.restarts.labels("TrainingJob", "ml", "a").inc()
    m.restarts.labels("TrainingJob", "ml", "b").inc()
    text = _text(m)
    assert 'torchyard_job_restarts_total{kind="TrainingJob",name="a",namespace="ml"} 1.0' in text
    assert (
        'torchyard_job_status{kind="TrainingJob",name="a",namespace="ml",phase="Running"} 1.0'
        in text
    )
    assert 'phase="Pending"} 1.0' not in text  # the old phase's series is gone
    assert 'torchyard_jobs{kind="TrainingJob",phase="Running"} 2.0' in text
    assert 'torchyard_job_transitions_total{kind="TrainingJob",phase="Running"} 1.0' in text
    m.forget_job("TrainingJob", "ml", "a")
    text = _text(m)
    assert 'name="a"' not in text
    assert 'torchyard_jobs{kind="TrainingJob",phase="Running"} 1.0' in text
    assert 'name="b"' in text


def test_settings_use_our_prefix_not_kopfs() -> None:
    settings = kopf.OperatorSettings()
    configure(settings)
    assert settings.persistence.finalizer == FINALIZER == "torchyard.io/finalizer"
    progress = settings.persistence.progress_storage
    assert isinstance(progress, kopf.AnnotationsProgressStorage)
    assert progress.prefix == "torchyard.io"
    diffbase = settings.persistence.diffbase_storage
    assert isinstance(diffbase, kopf.AnnotationsDiffBaseStorage)
    assert diffbase.prefix == "torchyard.io"
    assert settings.peering.standalone is True
    configure(settings, peering="torchyard")
    assert settings.peering.standalone is False
    assert settings.peering.name == "torchyard"


def test_no_diff_base_is_built_for_kinds_that_have_only_event_handlers() -> None:
    settings = kopf.OperatorSettings()
    configure(settings)
    diffbase = settings.persistence.diffbase_storage
    spec = {"spec": {"model": {"name": "m"}, "replicas": 2}}
    job = {"apiVersion": "torchyard.io/v1alpha1", "kind": "TrainingJob", "metadata": {}, **spec}
    version = {**job, "kind": "ModelVersion"}
    other = {**job, "apiVersion": "example.com/v1"}  # our kind's name, someone else's group
    assert diffbase.build(body=kopf.Body(job)) == {}
    assert diffbase.build(body=kopf.Body({**job, "kind": "CompressionJob"})) == {}
    # ModelVersions have on.delete and a timer: Kopf needs their real diff base
    assert diffbase.build(body=kopf.Body(version))["spec"] == spec["spec"]
    assert diffbase.build(body=kopf.Body(other))["spec"] == spec["spec"]


def test_no_stored_diff_base_is_read_for_kinds_that_have_only_event_handlers() -> None:
    settings = kopf.OperatorSettings()
    configure(settings)
    diffbase = settings.persistence.diffbase_storage
    stored = {"spec": {"replicas": 1}}
    meta = {"annotations": {"torchyard.io/last-handled-configuration": json.dumps(stored)}}
    job = {"apiVersion": "torchyard.io/v1alpha1", "kind": "TrainingJob", "metadata": meta}
    # what an earlier version's on.create handlers left on a job is not read: the diff of
    # an event-only kind is always empty
    assert diffbase.fetch(body=kopf.Body(job)) == {}
    assert diffbase.fetch(body=kopf.Body({**job, "kind": "CompressionJob"})) == {}
    assert diffbase.fetch(body=kopf.Body({**job, "kind": "ModelVersion"})) == stored


def test_each_job_kind_has_one_event_handler() -> None:
    """Kopf's work around a handler call is paid per handler and event: one handler per job
    kind does the reconciler's part and the ModelVersion's."""
    registry = kopf.get_default_registry()
    for plural in (TRAINING_JOB_PLURAL, COMPRESSION_JOB_PLURAL):
        resource = kopf.Resource(GROUP, VERSION, plural)
        handlers = [
            h for h in registry._watching.get_all_handlers() if h.selector.check(resource)
        ]
        assert len(handlers) == 1, [h.id for h in handlers]


def test_only_a_succeeded_job_with_a_model_is_recorded() -> None:
    model = {"name": "digits", "uri": "pvc://models/digits/v1", "version": 1}
    assert has_model_to_record({"status": {"phase": "Succeeded", "model": model}})
    assert not has_model_to_record({"status": {"phase": "Running", "model": model}})
    assert not has_model_to_record({"status": {"phase": "Succeeded", "model": {"name": "d"}}})
    assert not has_model_to_record({})


def test_compression_report_series_go_with_the_job() -> None:
    m = OperatorMetrics()
    m.observe_job("CompressionJob", "ml", "c", "Succeeded")
    m.observe_report("ml", "c", {"ratios": {"size": 3.9, "speedup": 1.5}, "accuracyDelta": -0.004})
    text = _text(m)
    assert 'torchyard_compression_ratio{name="c",namespace="ml",ratio="size"} 3.9' in text
    assert 'torchyard_compression_accuracy_delta{name="c",namespace="ml"} -0.004' in text
    m.forget_job("CompressionJob", "ml", "c")
    assert 'name="c"' not in _text(m)
