"""The cluster commands fail as kubectl does: one `error: ...` line on stderr and exit status 1
for every failure to reach or to ask the API server (no kubeconfig, unknown context, dead
server, 403, 404), never a traceback; and every cluster command takes kubectl's connection
options."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from tests.conftest import REPO
from tests.unit.kubestub import Stub, serving, status
from torchyard.cli import app

TJ = "/apis/torchyard.io/v1alpha1/namespaces/team-a/trainingjobs"
CJ = "/apis/torchyard.io/v1alpha1/namespaces/team-a/compressionjobs"


def _torchyard(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`torchyard ...` as a real process (what a user's shell sees: stderr, exit status)."""
    return subprocess.run(
        [sys.executable, "-m", "torchyard.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _clean_env(home: Path) -> dict[str, str]:
    """This environment without any kubeconfig or in-cluster service account to fall back on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "KUBERNETES_"))}
    env["HOME"] = str(home)
    return env


def _closed_port() -> int:
    """A localhost port nothing listens on (bound, then closed: connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _one_error_line(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_a_dead_server_is_one_line_and_exit_1(tmp_path: Path) -> None:
    port = _closed_port()
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: dead\n"
        f"clusters: [{{name: dead, cluster: {{server: 'https://127.0.0.1:{port}'}}}}]\n"
        "users: [{name: me, user: {token: t}}]\n"
        "contexts: [{name: dead, context: {cluster: dead, user: me}}]\n"
    )
    res = _torchyard("get", "--kubeconfig", str(kubeconfig), env=_clean_env(tmp_path))
    line = _one_error_line(res)
    assert (
        line
        == f"error: cannot reach the API server at https://127.0.0.1:{port}: connection refused"
    )
    assert res.stdout == ""


def test_no_kubeconfig_at_all_is_one_line_and_exit_1(tmp_path: Path) -> None:
    res = _torchyard("get", env=_clean_env(tmp_path))
    line = _one_error_line(res)
    assert f"{tmp_path}/.kube/config does not exist" in line
    assert "--kubeconfig" in line


def test_a_missing_kubeconfig_file_is_one_line(tmp_path: Path) -> None:
    res = _torchyard(
        "describe", "x", "--kubeconfig", str(tmp_path / "nope"), env=_clean_env(tmp_path)
    )
    assert _one_error_line(res) == f"error: kubeconfig {tmp_path / 'nope'}: no such file"


@pytest.fixture
def stub() -> Iterator[Stub]:
    with serving() as s:
        yield s


def _cli(stub: Stub, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [*args, "--kubeconfig", str(stub.kubeconfig(tmp_path))])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def test_forbidden_is_the_servers_message_on_one_line(stub: Stub, tmp_path: Path) -> None:
    message = (
        'trainingjobs.torchyard.io is forbidden: User "me" cannot list resource "trainingjobs" '
        'in API group "torchyard.io" in the namespace "team-a"'
    )
    stub.answers[TJ] = status(403, "Forbidden", message)
    code, out, err = _cli(stub, tmp_path, "get", "tj")
    assert code == 1
    assert out == ""
    assert err == f"error: Forbidden (403): {message}\n"


def test_crds_not_installed_is_one_line_that_says_so(stub: Stub, tmp_path: Path) -> None:
    code, _, err = _cli(stub, tmp_path, "get")  # the stub knows no path: 404 for all
    assert code == 1
    (line,) = err.splitlines()
    assert line.startswith("error: NotFound (404): the server could not find the requested")
    assert "are the torchyard CRDs installed?" in line


def test_a_missing_job_is_one_line(stub: Stub, tmp_path: Path) -> None:
    for path in (f"{TJ}/nosuch", f"{CJ}/nosuch"):
        stub.answers[path] = status(404, "NotFound", 'trainingjobs "nosuch" not found')
    for command in (["describe", "nosuch"], ["logs", "nosuch"]):
        code, _, err = _cli(stub, tmp_path, *command)
        assert code == 1
        assert err == "error: no TrainingJob or CompressionJob 'nosuch' in namespace team-a\n"
    code, _, err = _cli(stub, tmp_path, "get", "tj", "nosuch")
    assert code == 1
    assert err == 'error: trainingjobs.torchyard.io "nosuch" not found in namespace team-a\n'


def test_forbidden_pods_in_logs_is_one_line(stub: Stub, tmp_path: Path) -> None:
    stub.answers[f"{TJ}/a"] = (200, {"kind": "TrainingJob", "metadata": {"name": "a"}})
    stub.answers["/api/v1/namespaces/team-a/pods"] = status(
        403, "Forbidden", 'pods is forbidden: User "me" cannot list resource "pods"'
    )
    code, _, err = _cli(stub, tmp_path, "logs", "a")
    assert code == 1
    assert err == (
        'error: Forbidden (403): pods is forbidden: User "me" cannot list resource "pods"\n'
    )


def test_context_and_namespace_choose_where_to_ask(stub: Stub, tmp_path: Path) -> None:
    empty = (200, {"kind": "List", "items": [], "metadata": {"resourceVersion": "1"}})
    for ns in ("team-a", "default", "other-ns"):
        stub.answers[f"/apis/torchyard.io/v1alpha1/namespaces/{ns}/trainingjobs"] = empty
    for args, ns in (
        ([], "team-a"),  # the current context's namespace
        (["--context", "other"], "default"),  # a context without one: default
        (["--context", "other", "-n", "other-ns"], "other-ns"),
    ):
        code, out, err = _cli(stub, tmp_path, "get", "tj", *args)
        assert code == 0, err
        assert out == ""
        assert err == f"No resources found in {ns} namespace.\n"
    code, _, err = _cli(stub, tmp_path, "get", "--context", "nope")
    assert code == 1
    assert err.startswith('error: context "nope" does not exist in ')


@pytest.mark.parametrize("command", ["get", "describe", "logs"])
def test_every_cluster_command_takes_kubectls_connection_options(command: str) -> None:
    params = get_command(app).commands[command].params  # type: ignore[attr-defined]
    flags = {opt for p in params for opt in p.opts}
    assert {"--kubeconfig", "--context", "--namespace", "-n"} <= flags
