"""Live progress on the real control plane (KWOK nodes): the operator's HTTPS endpoint, real
projected-style tokens from the TokenRequest API bound to the job's worker pods, a real
TokenReview, real status writes watched with a real watch.

KWOK pods run nothing, so the workers that post are this machine's processes: the built-in
trainer run by `torchyard run examples/digits-ddp.yaml` (real torch.distributed processes) and
a user script's ``Reporter``, each given the progress URL of a KWOK job and a token bound to
that job's rank-0 pod — exactly what the pod's projected volume would hold.
"""

from __future__ import annotations

import datetime
import itertools
import json
import os
import re
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes import watch
from tests.cluster.opkit import (
    REPO_ROOT,
    OperatorProcess,
    create,
    example,
    free_port,
    get,
    held,
    running_operator,
    wait_running_pods,
)

from torchyard.api.constants import GROUP, VERSION
from torchyard.api.contract import PROGRESS_TOKEN_AUDIENCE, Annotation, Env
from torchyard.state.observed import parse_time
from torchyard_devcluster.testing import Kube, poll

pytestmark = pytest.mark.cluster

WRITE_SECONDS = 2.0
EXAMPLE = REPO_ROOT / "examples" / "digits-ddp.yaml"


@dataclass
class Endpoint:
    base_url: str
    ca_pem: str
    ca_file: Path

    def url(self, namespace: str, name: str) -> str:
        return f"{self.base_url}/v1/progress/{namespace}/trainingjobs/{name}"


def _make_tls(d: Path) -> tuple[Path, Path, Path]:
    """A CA and a serving certificate for 127.0.0.1 (what the chart's Secret holds)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "torchyard-test-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = d / "ca.crt", d / "tls.crt", d / "tls.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.fixture
def endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Endpoint:
    """The operator's progress settings (its environment, as the chart sets it)."""
    ca, cert, key = _make_tls(tmp_path)
    port = free_port()
    base = f"https://127.0.0.1:{port}"
    for name, value in {
        "PORT": str(port),
        "ADVERTISE_URL": base,
        "TLS_CERT": str(cert),
        "TLS_KEY": str(key),
        "TLS_CA": str(ca),
        "WRITE_SECONDS": str(WRITE_SECONDS),
    }.items():
        monkeypatch.setenv(f"TORCHYARD_PROGRESS_{name}", value)
    return Endpoint(base, ca.read_text(), ca)


@pytest.fixture
def operator(
    kube: Kube, namespace: str, tmp_path: Path, endpoint: Endpoint
) -> Iterator[OperatorProcess]:
    with running_operator(kube, namespace, tmp_path) as op:
        yield op


def _job(kube: Kube, namespace: str, name: str) -> list[Any]:
    """A held digits-ddp TrainingJob (KWOK pods stay Running); its pods, rank 0 first."""
    m = held(example("digits-ddp.yaml"))
    m["metadata"]["name"] = name
    create(kube, namespace, m)
    pods = wait_running_pods(kube, namespace, name, 2)
    return sorted(pods, key=lambda p: int(p.metadata.annotations[Annotation.COMPLETION_INDEX]))


def _token(kube: Kube, namespace: str, pod: Any, audience: str | None) -> str:
    """A service-account token bound to ``pod`` (the TokenRequest API, what the kubelet asks
    for a projected volume)."""
    spec: dict[str, Any] = {
        "expirationSeconds": 600,
        "boundObjectRef": {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": pod.metadata.name,
            "uid": pod.metadata.uid,
        },
    }
    if audience is not None:
        spec["audiences"] = [audience]
    sa = pod.spec.service_account_name or "default"
    out = kube.core.create_namespaced_service_account_token(sa, namespace, {"spec": spec})
    return str(out.status.token)


def _post(ep: Endpoint, url: str, token: str | None, body: dict[str, Any]) -> int:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    tls = ssl.create_default_context(cafile=str(ep.ca_file))
    try:
        with urllib.request.urlopen(req, timeout=30, context=tls) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def _wait_endpoint(ep: Endpoint) -> None:
    def up() -> bool:
        try:
            return _post(ep, ep.url("x", "y"), None, {"step": 0}) == 401
        except OSError:
            return False

    poll(up, timeout=60, what="progress endpoint")


def _progress(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    obj = get(kube, namespace, "TrainingJob", name) or {}
    return dict((obj.get("status") or {}).get("progress") or {})


class ProgressWatch:
    """A real watch of one TrainingJob: every distinct ``status.progress`` it goes through."""

    def __init__(self, kube: Kube, namespace: str, name: str) -> None:
        self.values: list[dict[str, Any]] = []
        self._stopped = False
        self._w = watch.Watch()
        self._args = (kube, namespace, name)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        kube, namespace, name = self._args
        stream = self._w.stream(
            kube.custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            "trainingjobs",
            field_selector=f"metadata.name={name}",
            timeout_seconds=600,
        )
        try:
            for ev in stream:
                progress = (ev["object"].get("status") or {}).get("progress")
                if progress and (not self.values or self.values[-1] != progress):
                    self.values.append(progress)
        except urllib3.exceptions.ProtocolError:
            if not self._stopped:  # stop() cuts the stream: expected then
                raise

    def stop(self) -> list[dict[str, Any]]:
        self._stopped = True
        self._w.stop()
        return list(self.values)


def test_a_pod_updates_only_its_own_job(
    kube: Kube, namespace: str, operator: OperatorProcess, endpoint: Endpoint
) -> None:
    a0, a1 = _job(kube, namespace, "job-a")
    _job(kube, namespace, "job-b")
    # The builder gave the pods what they need to post (KWOK does not run them).
    env = {e.name: e.value for e in a0.spec.containers[0].env}
    assert env[Env.PROGRESS_URL] == endpoint.url(namespace, "job-a")
    assert env[Env.PROGRESS_CA] == endpoint.ca_pem
    _wait_endpoint(endpoint)

    token = _token(kube, namespace, a0, PROGRESS_TOKEN_AUDIENCE)
    report = {"step": 7, "totalSteps": 70, "epoch": 0, "loss": 1.25}
    assert _post(endpoint, endpoint.url(namespace, "job-a"), token, report) == 202
    progress = poll(
        lambda: (p := _progress(kube, namespace, "job-a")).get("step") == 7 and p,
        timeout=60,
        what="job-a's progress in status",
    )
    assert progress["percent"] == 10.0
    assert progress["loss"] == 1.25
    assert "lastUpdateTime" in progress

    # The same real token claiming another job: authenticated, but forbidden.
    assert _post(endpoint, endpoint.url(namespace, "job-b"), token, {"step": 99}) == 403
    # Rank 1 of job A may not report either (only rank 0 does).
    rank1 = _token(kube, namespace, a1, PROGRESS_TOKEN_AUDIENCE)
    assert _post(endpoint, endpoint.url(namespace, "job-a"), rank1, {"step": 98}) == 403
    # A token for the API server's audience, a garbage token, no token: unauthenticated.
    api_token = _token(kube, namespace, a0, None)
    assert _post(endpoint, endpoint.url(namespace, "job-a"), api_token, {"step": 97}) == 401
    assert _post(endpoint, endpoint.url(namespace, "job-a"), "not-a-token", {"step": 96}) == 401
    assert _post(endpoint, endpoint.url(namespace, "job-a"), None, {"step": 95}) == 401

    time.sleep(WRITE_SECONDS + 1)  # any accepted write would have landed by now
    assert "step" not in _progress(kube, namespace, "job-b")
    assert _progress(kube, namespace, "job-a")["step"] == 7


def _write_count(op: OperatorProcess) -> float:
    m = re.search(
        r'^torchyard_progress_status_writes_total\{kind="TrainingJob"\} (\S+)$', op.metrics(), re.M
    )
    return float(m.group(1)) if m else 0.0


def test_status_writes_stay_under_the_configured_rate(
    kube: Kube, namespace: str, operator: OperatorProcess, endpoint: Endpoint
) -> None:
    a0, _ = _job(kube, namespace, "rated")
    _wait_endpoint(endpoint)
    token = _token(kube, namespace, a0, PROGRESS_TOKEN_AUDIENCE)
    url = endpoint.url(namespace, "rated")
    seen = ProgressWatch(kube, namespace, "rated")
    writes_before = _write_count(operator)
    hz, seconds = 20, 20
    accepted = 0
    t0 = time.monotonic()
    for i in range(hz * seconds):
        time.sleep(max(0.0, t0 + i / hz - time.monotonic()))
        accepted += _post(endpoint, url, token, {"step": i + 1, "totalSteps": 1000}) == 202
    span = time.monotonic() - t0
    time.sleep(WRITE_SECONDS + 1)  # the last, throttled write
    values = seen.stop()
    writes = _write_count(operator) - writes_before
    print(
        f"posted {hz * seconds} in {span:.1f} s, accepted {accepted}, status writes {writes}, "
        f"distinct progress values watched {len(values)}"
    )
    assert accepted == hz * seconds
    # One write per WRITE_SECONDS at most: the writes fall between the first post and one
    # interval after the last, so there are at most span/N + 1 gaps of N between them.
    limit = int(span / WRITE_SECONDS) + 2
    assert 2 <= writes <= limit
    assert 2 <= len(values) <= limit
    times = [parse_time(v["lastUpdateTime"]) or datetime.datetime.min for v in values]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert min(gaps) >= WRITE_SECONDS - 1  # RFC 3339 seconds: a 2 s gap may read as 1 s
    assert values[-1]["step"] == hz * seconds  # the newest report is the one that stays


def test_digits_ddp_progress_advances_in_status(
    kube: Kube, namespace: str, operator: OperatorProcess, endpoint: Endpoint, tmp_path: Path
) -> None:
    a0, _ = _job(kube, namespace, "digits-ddp")
    _wait_endpoint(endpoint)
    token_file = tmp_path / "token"
    token_file.write_text(_token(kube, namespace, a0, PROGRESS_TOKEN_AUDIENCE))
    seen = ProgressWatch(kube, namespace, "digits-ddp")
    env = {
        **os.environ,
        Env.PROGRESS_URL: endpoint.url(namespace, "digits-ddp"),
        Env.PROGRESS_TOKEN_FILE: str(token_file),
        Env.PROGRESS_CA: endpoint.ca_pem,
    }
    run = subprocess.run(
        [sys.executable, "-m", "torchyard.cli", "run", str(EXAMPLE), "-o", "json"],
        cwd=tmp_path,  # torchyard-runs/ goes there
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    time.sleep(WRITE_SECONDS + 1)
    values = seen.stop()
    steps = [v["step"] for v in values if "step" in v]
    print(f"distinct status.progress values during the run: {len(values)}; steps {steps}")
    assert len(set(steps)) >= 3
    assert steps == sorted(steps)
    last = values[-1]
    assert last["totalSteps"] >= last["step"] > 0
    assert "samplesPerSecond" in last
    assert any("etaSeconds" in v for v in values)


def test_a_user_script_reports_progress(
    kube: Kube,
    namespace: str,
    operator: OperatorProcess,
    endpoint: Endpoint,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from torchyard_trainer.report import Reporter

    a0, _ = _job(kube, namespace, "script")
    _wait_endpoint(endpoint)
    token_file = tmp_path / "token"
    token_file.write_text(_token(kube, namespace, a0, PROGRESS_TOKEN_AUDIENCE))
    monkeypatch.setenv(Env.PROGRESS_URL, endpoint.url(namespace, "script"))
    monkeypatch.setenv(Env.PROGRESS_TOKEN_FILE, str(token_file))
    monkeypatch.setenv(Env.PROGRESS_CA, endpoint.ca_pem)
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps(example("user-script.yaml")))
    reporter = Reporter(
        total_steps=40,
        environ={
            "TORCHYARD_SPEC": str(spec),
            "TORCHYARD_OUTPUT_DIR": str(tmp_path / "out"),
            "TORCHYARD_JOB_NAME": "script",
        },
    )
    for step in range(1, 41):
        reporter.step(step=step, epoch=0, loss=1.0 / step)
        time.sleep(0.1)  # a training step's worth of time: the poster sends about 1/s
    progress = poll(
        lambda: (p := _progress(kube, namespace, "script")).get("step", 0) >= 30 and p,
        timeout=60,
        what="the script's progress in status",
    )
    reporter.close()
    assert progress["totalSteps"] == 40
    assert progress["loss"] == pytest.approx(1.0 / progress["step"])
