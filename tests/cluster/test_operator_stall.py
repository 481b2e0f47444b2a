"""Stall detection on the real control plane (issue 16, acceptance 2).

KWOK pods run no processes, so rank 0's training runs here as a real process: a small torch
script that reports through the real reporting helper (``torchyard_trainer.report``), whose
poster POSTs to the operator's real HTTPS progress endpoint with a service-account token the
API server issued bound to the job's rank-0 KWOK pod (TokenRequest, the progress audience);
the operator reviews it (TokenReview), books the step, and its stall watch judges it. The
test SIGSTOPs that process (no more steps) and SIGCONTs it. What a kubelet would do is the
test's part: start the process for the pod, kill it when the pod is deleted, and start it
again for the restarted group's rank-0 pod, where it resumes from its own checkpoint file.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from opkit import (
    condition,
    create,
    env_of,
    example,
    free_port,
    get,
    held,
    release,
    running_operator,
    the_event,
    wait_phase,
    wait_running_pods,
)

from torchyard.api.constants import ConditionType, Phase, Reason
from torchyard.api.contract import PROGRESS_TOKEN_AUDIENCE, Annotation, Env
from torchyard_devcluster import certs
from torchyard_devcluster.testing import Kube, poll

pytestmark = pytest.mark.cluster

NAME = "digits-ddp"
WINDOW = 8
"""runPolicy.stallTimeoutSeconds of the tests' jobs."""

WORKER = """
import os, sys, time
import torch
from torchyard_trainer.report import Reporter

ckpt, total, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
torch.manual_seed(0)
model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.05)
start = 0
if os.path.exists(ckpt):
    state = torch.load(ckpt)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    start = state["step"]
print("resumed-from", start, flush=True)
reporter = Reporter(total_steps=total)
x = torch.randn(256, 4)
y = x.sum(1, keepdim=True)
for step in range(start + 1, total + 1):
    loss = torch.nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, ckpt + ".tmp")
    os.replace(ckpt + ".tmp", ckpt)
    reporter.step(step=step, epoch=0, loss=loss.item())
    time.sleep(pause)
reporter.finish(metrics={"loss": loss.item()})
print("finished", step, flush=True)
"""


@pytest.fixture
def progress_endpoint(
    kube: Kube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """The operator's progress endpoint on 127.0.0.1, its certificate signed by the dev
    cluster's CA (the operator process reads these variables at start)."""
    pki = kube.cluster.state_dir / "pki"
    ca = certs.CertPaths(pki / "ca.crt", pki / "ca.key")
    serving = certs.serving_cert(tmp_path / "progress-tls", "tls", ca, "torchyard-progress")
    port = free_port()
    env = {
        "TORCHYARD_PROGRESS_PORT": str(port),
        "TORCHYARD_PROGRESS_ADVERTISE_URL": f"https://127.0.0.1:{port}",
        "TORCHYARD_PROGRESS_TLS_CERT": str(serving.cert),
        "TORCHYARD_PROGRESS_TLS_KEY": str(serving.key),
        "TORCHYARD_PROGRESS_TLS_CA": str(ca.cert),
        "TORCHYARD_PROGRESS_WRITE_SECONDS": "1",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


def _job(run_policy: dict[str, Any]) -> dict[str, Any]:
    m = example("digits-ddp.yaml")
    m["spec"]["runPolicy"] = {"stallTimeoutSeconds": WINDOW, **run_policy}
    return held(m)


def _rank0(pods: list[Any]) -> Any:
    return next(p for p in pods if p.metadata.annotations[Annotation.COMPLETION_INDEX] == "0")


def _pod_token(kube: Kube, namespace: str, pod: Any, path: Path) -> Path:
    """What the kubelet mounts: a token for the progress audience, bound to this pod."""
    request = {
        "spec": {
            "audiences": [PROGRESS_TOKEN_AUDIENCE],
            "expirationSeconds": 600,
            "boundObjectRef": {
                "kind": "Pod",
                "apiVersion": "v1",
                "name": pod.metadata.name,
                "uid": pod.metadata.uid,
            },
        }
    }
    sa = pod.spec.service_account_name or "default"
    out = kube.core.create_namespaced_service_account_token(sa, namespace, request)
    path.write_text(out.status.token)
    return path


@contextmanager
def rank0_process(
    kube: Kube, namespace: str, pod: Any, work: Path, *, total: int
) -> Iterator[subprocess.Popen[bytes]]:
    """The pod's worker as a real local process with the pod's progress variables."""
    work.mkdir(parents=True, exist_ok=True)
    pod_env = env_of(pod.spec.containers[0])
    script = work.parent / "worker.py"
    script.write_text(WORKER)
    env = {
        **os.environ,
        Env.RANK: "0",
        Env.OUTPUT_DIR: str(work / "out"),
        Env.JOB_NAME: NAME,
        Env.NAMESPACE: namespace,
        Env.PROGRESS_URL: str(pod_env[Env.PROGRESS_URL]),
        Env.PROGRESS_CA: str(pod_env[Env.PROGRESS_CA]),
        Env.PROGRESS_TOKEN_FILE: str(_pod_token(kube, namespace, pod, work / "token")),
    }
    env.pop(Env.METRICS_PORT, None)
    log = open(work / "worker.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, str(script), str(work.parent / "ckpt.pt"), str(total), "0.3"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait(timeout=30)


def _status(kube: Kube, namespace: str) -> dict[str, Any]:
    obj = get(kube, namespace, "TrainingJob", NAME)
    assert obj is not None
    return dict(obj.get("status") or {})


def _step(kube: Kube, namespace: str) -> int:
    return int((_status(kube, namespace).get("progress") or {}).get("step") or 0)


def _wait_steps(kube: Kube, namespace: str, at_least: int) -> int:
    return int(
        poll(
            lambda: (s := _step(kube, namespace)) >= at_least and s,
            timeout=180,
            what=f"status.progress.step >= {at_least}",
        )
    )


def _stalled(kube: Kube, namespace: str, value: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = get(kube, namespace, "TrainingJob", NAME)
        if obj is None:
            return None
        try:
            c = condition(obj, ConditionType.STALLED)
        except AssertionError:
            return None
        return c if c["status"] == value else None

    found: dict[str, Any] = poll(check, timeout=180, interval=0.25, what=f"Stalled={value}")
    return found


def _since(stopped: datetime, c: dict[str, Any]) -> float:
    at = datetime.fromisoformat(c["lastTransitionTime"].replace("Z", "+00:00"))
    return (at - stopped).total_seconds()


def test_sigstopped_worker_is_stalled_then_cleared_on_sigcont(
    kube: Kube, namespace: str, tmp_path: Path, progress_endpoint: dict[str, str]
) -> None:
    with running_operator(kube, namespace, tmp_path):
        create(kube, namespace, _job({}))
        pods = wait_running_pods(kube, namespace, NAME, 2)
        wait_phase(kube, namespace, "TrainingJob", NAME, Phase.RUNNING)
        with rank0_process(kube, namespace, _rank0(pods), tmp_path / "a", total=120) as proc:
            _wait_steps(kube, namespace, 3)
            stopped = datetime.now(UTC)
            proc.send_signal(signal.SIGSTOP)
            c = _stalled(kube, namespace, "True")
            assert c["reason"] == Reason.NO_PROGRESS
            idle = re.fullmatch(rf"no step for (\d+)s \(window {WINDOW}s\)", c["message"])
            assert idle is not None, c["message"]
            assert int(idle.group(1)) > WINDOW
            # Not before the window: the last step came before the stop. Two seconds of slack:
            # lastTransitionTime is truncated to the second, and the last step may have come
            # up to one step interval (plus its report) before `stopped` was read.
            assert _since(stopped, c) >= WINDOW - 2
            print(f"Stalled=True {_since(stopped, c):.1f}s after SIGSTOP (window {WINDOW}s)")
            event = the_event(kube, namespace, NAME, Reason.NO_PROGRESS)
            assert event.type == "Warning"
            assert _status(kube, namespace)["phase"] == Phase.RUNNING  # stallAction None
            before = _step(kube, namespace)

            resumed_at = datetime.now(UTC)
            proc.send_signal(signal.SIGCONT)
            c = _stalled(kube, namespace, "False")
            assert c["reason"] == Reason.PROGRESS_RESUMED
            print(f"Stalled=False {_since(resumed_at, c):.1f}s after SIGCONT")
            assert the_event(kube, namespace, NAME, Reason.PROGRESS_RESUMED).type == "Normal"
            assert _wait_steps(kube, namespace, before + 1) > before
            assert proc.wait(timeout=180) == 0
        release(kube, namespace, pods)
        done = wait_phase(kube, namespace, "TrainingJob", NAME, Phase.SUCCEEDED)
        assert done["status"]["restarts"] == 0


def test_stall_action_restart_restarts_the_group_from_the_checkpoint(
    kube: Kube, namespace: str, tmp_path: Path, progress_endpoint: dict[str, str]
) -> None:
    with running_operator(kube, namespace, tmp_path):
        create(kube, namespace, _job({"stallAction": "Restart", "backoffLimit": 2}))
        first = wait_running_pods(kube, namespace, NAME, 2)
        wait_phase(kube, namespace, "TrainingJob", NAME, Phase.RUNNING)
        with rank0_process(kube, namespace, _rank0(first), tmp_path / "a", total=200) as a:
            reported = _wait_steps(kube, namespace, 3)
            a.send_signal(signal.SIGSTOP)
            restarted = poll(
                lambda: _status(kube, namespace).get("restarts") == 1,
                timeout=180,
                what="restarts == 1",
            )
            assert restarted
            event = the_event(kube, namespace, NAME, Reason.STALLED)
            assert event.type == "Warning"
            assert event.message.startswith("Stalled: no step for ")
            assert "restarting the whole group from the newest checkpoint" in event.message

            def second_attempt() -> list[Any] | None:
                pods = wait_running_pods(kube, namespace, NAME, 2)
                attempts = {p.metadata.annotations[Annotation.RESTART_COUNT] for p in pods}
                return pods if attempts == {"1"} else None

            second = poll(second_attempt, timeout=180, what="the restarted group")
        # leaving the block killed process A: its pod is gone, as a kubelet would kill it
        wait_phase(kube, namespace, "TrainingJob", NAME, Phase.RUNNING)
        with rank0_process(kube, namespace, _rank0(second), tmp_path / "b", total=40) as b:
            c = _stalled(kube, namespace, "False")  # the new attempt's first step
            assert c["reason"] == Reason.PROGRESS_RESUMED
            assert b.wait(timeout=180) == 0
        log = (tmp_path / "b" / "worker.log").read_text()
        resumed = re.search(r"resumed-from (\d+)", log)
        assert resumed is not None, log
        assert int(resumed.group(1)) >= reported  # the checkpoint of attempt 0, not step 0
        assert "finished 40" in log
        release(kube, namespace, second)
        done = wait_phase(kube, namespace, "TrainingJob", NAME, Phase.SUCCEEDED)
        assert done["status"]["restarts"] == 1
