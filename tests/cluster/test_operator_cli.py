"""`torchyard get` / `torchyard describe` / `torchyard logs` against the real control plane."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tests.cluster.opkit import (
    create,
    example,
    held,
    release,
    running_operator,
    wait_phase,
    wait_running_pods,
)

from torchyard.api.constants import GROUP, VERSION, Phase
from torchyard_devcluster.testing import Kube, poll

pytestmark = pytest.mark.cluster


def _run_cli(kube: Kube, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
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
        timeout=120,
    )


def _cli(kube: Kube, *args: str) -> str:
    res = _run_cli(kube, *args)
    assert res.returncode == 0, (res.returncode, res.stdout, res.stderr)
    return res.stdout


def test_get_and_describe_tell_the_story(kube: Kube, namespace: str, tmp_path: Path) -> None:
    with running_operator(kube, namespace, tmp_path):
        # Held Running until the operator has seen the workers run: KWOK may otherwise take
        # the pods from Running to Succeeded between two of its reconciles, and a run the
        # operator never saw has no WorkersRunning event to tell.
        create(kube, namespace, held(example("digits-ddp.yaml")))
        pods = wait_running_pods(kube, namespace, "digits-ddp", 2)
        wait_phase(kube, namespace, "TrainingJob", "digits-ddp", Phase.RUNNING)
        release(kube, namespace, pods)
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


def _cli_fail(kube: Kube, *args: str) -> subprocess.CompletedProcess[str]:
    res = _run_cli(kube, *args)
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    return res


def test_logs_picks_the_rank_and_kind_and_says_why_there_is_no_log(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    """`torchyard logs` up to the log itself. KWOK pods run on fake nodes without a kubelet,
    so the API server has no log to hand out (its log request to the node fails); what is real
    here is everything before that — the job found by name and kind, the worker pod of the
    rank and newest attempt chosen by label, the request through the API server — and the
    CLI reporting the API server's answer instead of a traceback. (`torchyard run` keeps each
    local worker's output in torchyard-runs/<job>/pod-<rank>/log.txt instead.)"""
    training = held(example("digits-ddp.yaml"))
    compression = held(example("compress-quantize.yaml"))
    compression["metadata"]["name"] = "digits-ddp"  # same name: --kind tells them apart
    compression["spec"]["source"] = {
        "model": {"builtin": "mlp", "checkpoint": "file:///models/digits/v1"}
    }
    with running_operator(kube, namespace, tmp_path):
        create(kube, namespace, training)
        create(kube, namespace, compression)
        tj_pods = wait_running_pods(kube, namespace, "digits-ddp", 2)
        (cj_pod,) = wait_running_pods(kube, namespace, "digits-ddp", 1, kind="compressionjob")
        rank1 = next(
            p.metadata.name
            for p in tj_pods
            if p.metadata.annotations["batch.kubernetes.io/job-completion-index"] == "1"
        )
        res = _cli_fail(kube, "logs", "digits-ddp", "--rank", "1", "-n", namespace)
        assert f"no log of pod {rank1} (rank 1, attempt 0, Running)" in res.stderr
        res = _cli_fail(kube, "logs", "digits-ddp", "--kind", "cj", "-n", namespace)
        assert f"no log of pod {cj_pod.metadata.name} (rank 0, attempt 0, Running)" in res.stderr
        res = _cli_fail(kube, "logs", "digits-ddp", "--rank", "5", "-n", namespace)
        assert "no pod of rank 5 for digits-ddp" in res.stderr
        res = _cli_fail(kube, "logs", "nosuch", "-n", namespace)
        assert "no TrainingJob or CompressionJob 'nosuch'" in res.stderr


def test_get_formats_watch_and_one_line_errors_from_the_real_api_server(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    """kubectl's habits against the real API server (no operator: the objects as created)."""
    create(kube, namespace, example("digits-ddp.yaml"))
    obj = json.loads(_cli(kube, "get", "tj", "digits-ddp", "-o", "json", "-n", namespace))
    assert obj["kind"] == "TrainingJob"
    assert obj["metadata"]["namespace"] == namespace
    listing = yaml.safe_load(_cli(kube, "get", "-o", "yaml", "-n", namespace))
    assert listing["kind"] == "List"
    assert [i["metadata"]["name"] for i in listing["items"]] == ["digits-ddp"]
    header, row = _cli(kube, "get", "tj", "-o", "wide", "-n", namespace).splitlines()
    assert header.split()[-5:] == ["STRATEGY", "QUEUE", "LOSS", "ACCURACY", "MESSAGE"]
    assert row.split()[2] == "digits-ddp"
    assert row.split()[-5] == "ddp"

    # A real 403: the scheduler's identity may not list TrainingJobs.
    scheduler = kube.cluster.state_dir / "scheduler.kubeconfig"
    res = subprocess.run(
        [sys.executable, "-m", "torchyard.cli", "get", "tj", "-n", namespace],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "KUBECONFIG": str(scheduler)},
        check=False,
    )
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert res.stderr.startswith("error: Forbidden (403): trainingjobs.torchyard.io is forbidden:")
    assert len(res.stderr.splitlines()) == 1, res.stderr
    res = _cli_fail(kube, "get", "tj", "--context", "nope")
    assert res.stderr.startswith('error: context "nope" does not exist in ')

    # -w: the listing, then a row for each change (here: a label added).
    watch = subprocess.Popen(
        [sys.executable, "-m", "torchyard.cli", "get", "tj", "-w", "-n", namespace,
         "--kubeconfig", str(kube.cluster.kubeconfig)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert watch.stdout is not None
        assert watch.stdout.readline().split()[:3] == ["KIND", "NAMESPACE", "NAME"]
        assert watch.stdout.readline().split()[2] == "digits-ddp"
        kube.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "trainingjobs", "digits-ddp",
            {"metadata": {"labels": {"changed": "yes"}}},
        )  # fmt: skip
        assert watch.stdout.readline().split()[2] == "digits-ddp"
    finally:
        watch.kill()
        watch.wait(timeout=30)
