"""The operator is SIGKILLed mid-reconcile, over and over, while jobs are submitted, restart
and finish; each time it comes back no child exists twice and every status converges."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from tests.cluster.opkit import (
    OperatorProcess,
    create,
    example,
    get,
    with_pod_annotations,
)

from torchyard.api.constants import Phase
from torchyard_devcluster import EXIT_CODE_ANNOTATION
from torchyard_devcluster.testing import Kube, poll

pytestmark = pytest.mark.cluster

JOBS = 6


def _manifests() -> list[dict[str, Any]]:
    out = []
    for i in range(JOBS):
        m = example("digits-ddp.yaml")
        m["metadata"]["name"] = f"crash-{i}"
        m["spec"]["runPolicy"] = {"backoffLimit": 1}
        m = with_pod_annotations(m, {"kwok.torchyard.io/delay": "1500ms"})
        if i == JOBS - 1:
            # one job fails retryably on every attempt: restart, then BackoffLimitExceeded
            m = with_pod_annotations(m, {EXIT_CODE_ANNOTATION: "137"})
        out.append(m)
    return out


@pytest.mark.parametrize("round_", range(3))
def test_killed_operator_leaves_no_duplicates_and_converges(
    kube: Kube, namespace: str, tmp_path: Path, round_: int
) -> None:
    rng = random.Random(round_)
    op = OperatorProcess(kube, namespace, tmp_path)
    op.start()
    try:
        for m in _manifests():
            create(kube, namespace, m)
        # Kill it at random points while it creates children, watches pods finish and
        # restarts the failing group; start it again each time.
        for _ in range(5):
            poll(lambda: "torchyard_reconcile" in op.metrics(), what="operator up")
            time.sleep(rng.uniform(0.1, 1.5))  # picks the kill point; asserts nothing
            op.kill(signal.SIGKILL)
            _assert_no_duplicates(kube, namespace)
            op.start()

        def converged() -> dict[str, str] | None:
            phases = {}
            for i in range(JOBS):
                tj = get(kube, namespace, "TrainingJob", f"crash-{i}") or {}
                phases[f"crash-{i}"] = (tj.get("status") or {}).get("phase", "")
            want_ok = all(phases[f"crash-{i}"] == Phase.SUCCEEDED for i in range(JOBS - 1))
            return phases if want_ok and phases[f"crash-{JOBS - 1}"] == Phase.FAILED else None

        poll(converged, timeout=300, interval=0.5, what="every job finished")
        _assert_no_duplicates(kube, namespace)
        for i in range(JOBS - 1):
            tj = get(kube, namespace, "TrainingJob", f"crash-{i}")
            assert tj is not None
            assert tj["status"]["restarts"] == 0, tj["status"]
        bad = get(kube, namespace, "TrainingJob", f"crash-{JOBS - 1}")
        assert bad is not None
        assert bad["status"]["restarts"] == 1  # counted once, however often we were killed
        conds = {c["type"]: c for c in bad["status"]["conditions"]}
        assert conds["Failed"]["reason"] == "BackoffLimitExceeded"
    finally:
        op.kill(signal.SIGTERM)


def _assert_no_duplicates(kube: Kube, namespace: str) -> None:
    jobs = kube.batch.list_namespaced_job(namespace).items
    names = [j.metadata.name for j in jobs]
    assert len(names) == len(set(names))
    assert len(jobs) <= JOBS
    services = [s.metadata.name for s in kube.core.list_namespaced_service(namespace).items]
    assert len(services) == len(set(services)) <= JOBS
    cms = [
        c.metadata.name
        for c in kube.core.list_namespaced_config_map(namespace).items
        if c.metadata.name.endswith("-spec")
    ]
    assert len(cms) == len(set(cms)) <= JOBS
    # every live pod belongs to a live Job of the current attempt, and each rank runs once
    live_jobs = {j.metadata.uid for j in jobs}
    ranks: dict[tuple[str, str], int] = {}
    for p in kube.core.list_namespaced_pod(namespace).items:
        if p.metadata.deletion_timestamp is not None or p.status.phase not in (
            "Pending",
            "Running",
        ):
            continue
        owner = next((r.uid for r in p.metadata.owner_references or []), None)
        assert owner in live_jobs, p.metadata.name
        key = (
            p.metadata.labels["torchyard.io/job-name"],
            p.metadata.annotations["batch.kubernetes.io/job-completion-index"],
        )
        ranks[key] = ranks.get(key, 0) + 1
    assert all(n == 1 for n in ranks.values()), ranks
