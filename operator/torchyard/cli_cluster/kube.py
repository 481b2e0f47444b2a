"""The cluster commands' connection (kubeconfig, context, namespace) and their one-line errors.

Like kubectl: the kubeconfig is ``--kubeconfig``, else ``$KUBECONFIG``, else
``~/.kube/config``, else the pod's service account when running in a cluster; the namespace is
``--namespace``, else the context's, else ``default``. Every failure to reach or to ask the API
server (no kubeconfig, unknown context, unreachable server, 403, 404, ...) is one
``error: ...`` line on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn, ParamSpec

import typer

P = ParamSpec("P")

KubeconfigOpt = Annotated[
    str | None,
    typer.Option(
        "--kubeconfig",
        help="Kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).",
        show_default=False,
    ),
]
ContextOpt = Annotated[
    str | None,
    typer.Option("--context", help="Kubeconfig context (default: the current context)."),
]
NamespaceOpt = Annotated[
    str | None,
    typer.Option("--namespace", "-n", help="Namespace (default: the context's namespace)."),
]

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class KubeError(Exception):
    """A failure the user can act on; its message is printed as the one error line."""


def fail(message: str) -> NoReturn:
    """Print ``error: message`` (exactly as written: no console markup) and exit 1."""
    sys.stderr.write(f"error: {message}\n")
    raise typer.Exit(code=1)


def err_usage(message: str) -> NoReturn:
    """A command used wrongly: ``error: message`` and exit 2 (click's status for usage)."""
    sys.stderr.write(f"error: {message}\n")
    raise typer.Exit(code=2)


@dataclass(frozen=True)
class Kube:
    """An API client for one context and the namespace the command works in."""

    api: Any
    """kubernetes.client.ApiClient"""
    namespace: str
    host: str

    @property
    def custom(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self.api)

    @property
    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api)


def _default_kubeconfig() -> str:
    return os.environ.get("KUBECONFIG") or str(Path("~/.kube/config").expanduser())


def connect(kubeconfig: str | None, context: str | None, namespace: str | None) -> Kube:
    """The client for `context` of `kubeconfig` (both as kubectl resolves them)."""
    from kubernetes import client, config

    # urllib3 logs each retry of a refused connection as a WARNING on stderr; the one
    # error line below says it all.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    files = kubeconfig or _default_kubeconfig()
    if kubeconfig is None and not any(Path(f).is_file() for f in files.split(os.pathsep) if f):
        if os.environ.get("KUBERNETES_SERVICE_HOST") and context is None:
            return _in_cluster(namespace)
        fail(
            f"no kubeconfig: {files} does not exist and this is not a pod in a cluster; "
            "pass --kubeconfig or set KUBECONFIG"
        )
    if kubeconfig is not None and not Path(kubeconfig).is_file():
        fail(f"kubeconfig {kubeconfig}: no such file")
    try:
        contexts, current = config.list_kube_config_contexts(config_file=files)  # type: ignore[no-untyped-call]
    except config.ConfigException as exc:
        fail(f"kubeconfig {files}: {exc}")
    chosen = (
        current if context is None else next((c for c in contexts if c["name"] == context), None)
    )
    if chosen is None:
        fail(
            f'context "{context}" does not exist in {files}'
            if context is not None
            else f"kubeconfig {files} has no current context: pass --context"
        )
    cfg = client.Configuration()
    config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=files, context=chosen["name"], client_configuration=cfg
    )
    ns = namespace or chosen.get("context", {}).get("namespace") or "default"
    return Kube(client.ApiClient(cfg), str(ns), str(cfg.host))


def _in_cluster(namespace: str | None) -> Kube:
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    if namespace is None and SERVICE_ACCOUNT_NAMESPACE.is_file():
        namespace = SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    return Kube(client.ApiClient(cfg), namespace or "default", str(cfg.host))


def _server_message(exc: Any) -> tuple[str, str]:
    """(reason, message) of an API error, from its Status body when it has one."""
    try:
        body = json.loads(exc.body)
        return str(body.get("reason") or exc.reason), str(body["message"])
    except (TypeError, ValueError, KeyError, AttributeError):
        return str(exc.reason or "Error").split("\n")[0], str(exc.reason or exc)


def api_error_message(exc: Any) -> str:
    """An ApiException as kubectl says it: ``Forbidden (403): <the server's message>``."""
    if not exc.status:  # status 0: the client's own failure (e.g. TLS), not an answer
        return f"cannot reach the API server: {_first_line(str(exc.reason or exc))}"
    reason, message = _server_message(exc)
    text = f"{reason} ({exc.status}): {message}"
    if exc.status == 404 and "could not find the requested resource" in message:
        text += " (are the torchyard CRDs installed? `torchyard crds | kubectl apply -f -`)"
    return text


def _first_line(text: str) -> str:
    return text.strip().split("\n")[0]


def connection_message(exc: Exception) -> str:
    """A urllib3 failure to reach the server, its cause in a few words ("connection refused")."""
    text = str(getattr(exc, "reason", None) or exc)
    # NewConnectionError: "<urllib3.connection... object at 0x..>: Failed to establish a new
    # connection: [Errno 111] Connection refused": keep what the OS said.
    text = text.split("Failed to establish a new connection: ")[-1]
    text = re.sub(r"^\[Errno -?\d+\] ", "", _first_line(text))
    pool = getattr(exc, "pool", None)
    where = f" at {pool.scheme}://{pool.host}:{pool.port}" if pool is not None else ""
    return f"cannot reach the API server{where}: {text[:1].lower()}{text[1:]}"


def error_message(exc: BaseException) -> str | None:
    """The one line for an API/kubeconfig failure; None for anything else (a bug: raise)."""
    import urllib3
    import yaml
    from kubernetes import config
    from kubernetes.client import ApiException

    if isinstance(exc, KubeError):
        return str(exc)
    if isinstance(exc, ApiException):
        return api_error_message(exc)
    if isinstance(exc, urllib3.exceptions.HTTPError):
        return connection_message(exc)
    if isinstance(exc, config.ConfigException):
        return f"kubeconfig: {_first_line(str(exc))}"
    if isinstance(exc, yaml.YAMLError):
        return f"kubeconfig is not valid YAML: {_first_line(str(exc))}"
    if isinstance(exc, OSError):  # e.g. a certificate file the kubeconfig names is missing
        return _first_line(str(exc))
    return None


def one_line_errors(command: Callable[P, None]) -> Callable[P, None]:
    """`command`, with every API/kubeconfig failure turned into one error line and exit 1."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            command(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:  # Ctrl-C ends -w/-f as it ends kubectl's: quietly
            raise typer.Exit(code=130) from None
        except BrokenPipeError:
            # The reader is gone (`torchyard get -w | head`): stop quietly; stdout goes to
            # /dev/null so that the interpreter's last flush does not complain either.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(code=1) from None
        except Exception as exc:
            message = error_message(exc)
            if message is None:
                raise
            fail(message)

    return run


__all__ = [
    "ContextOpt",
    "Kube",
    "KubeError",
    "KubeconfigOpt",
    "NamespaceOpt",
    "api_error_message",
    "connect",
    "err_usage",
    "error_message",
    "fail",
    "one_line_errors",
]
