"""`torchyard get` / `torchyard describe` against the real control plane."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tests.cluster.opkit import create, example, running_operator, wait_phase

from torchyard.api.constants import Phase
from torchyard.devcluster.testing import Kube, poll

pytestmark = pytest.mark.cluster


def _cli(kube: Kube, *args: str) -> str:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "torchyard.cli",
            *args,
            "--kubeconfig",
            str(kube.cluster.kubeconfig),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return out.stdout


def test_get_and_describe_tell_the_story(kube: Kube, namespace: str, tmp_path: Path) -> None:
    with running_operator(kube, namespace, tmp_path):
        create(kube, namespace, example("digits-ddp.yaml"))
        wait_phase(kube, namespace, "TrainingJob", "digits-ddp", Phase.SUCCEEDED)
        listing = _cli(kube, "get", "tj", "-n", namespace)
        (row,) = [line for line in listing.splitlines() if "digits-ddp" in line]
        assert row.split()[:4] == ["tj", namespace, "digits-ddp", "Succeeded"]

        def story() -> str | None:
            text = _cli(kube, "describe", "digits-ddp", "-n", namespace)
            return text if "JobCompleted" in text and "WorkersRunning" in text else None

        text = poll(story, timeout=60, what="describe with events")
        assert "TrainingJob" in text
        assert "phase: Succeeded" in text
        for needle in ("Conditions", "Created", "Succeeded", "Pods", "Events", "JobCreated"):
            assert needle in text
        assert text.count("digits-ddp-") >= 2  # both worker pods listed
