"""Cluster commands of the `torchyard` CLI: operator, get, describe, logs.

``get``/``describe``/``logs`` are a readable overview for people without kubectl plugins,
with kubectl's habits: ``--kubeconfig``, ``--context``, ``-n``, ``get -o wide|yaml|json``,
``get -w``, ``logs -f``/``--previous``, and one ``error: ...`` line (exit 1) for any failure to
reach or to ask the API server (see :mod:`torchyard.cli_cluster.kube`).
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer

from torchyard.cli_cluster.describe import describe
from torchyard.cli_cluster.get import get
from torchyard.cli_cluster.kube import err_usage, one_line_errors
from torchyard.cli_cluster.logs import logs

# Leader election (controller/leader.py): one replica acts, the others stand by.
LeaderElect = Annotated[
    bool,
    typer.Option(
        "--leader-elect",
        help="Active/standby replicas: act only while holding a coordination.k8s.io Lease "
        "(docs/operator.md, 'High availability').",
    ),
]
LeaseName = Annotated[str, typer.Option("--lease-name", help="Name of the Lease.")]
LeaseNamespace = Annotated[
    str | None,
    typer.Option(
        "--lease-namespace",
        help="Namespace of the Lease (default: $POD_NAMESPACE, else the first --namespace, "
        "else default).",
    ),
]
LeaseDuration = Annotated[
    float, typer.Option("--lease-duration", help="Seconds a standby waits on a silent Lease.")
]
RenewDeadline = Annotated[
    float,
    typer.Option(
        "--renew-deadline",
        help="Seconds the leader may fail to renew before it steps down (exits); "
        "< --lease-duration.",
    ),
]
RetryPeriod = Annotated[
    float, typer.Option("--retry-period", help="Seconds between Lease renewals/attempts.")
]


def _lease(namespace: str, name: str, timings: tuple[float, float, float]) -> Any:
    from torchyard.controller.leader import LeaseSettings

    duration, deadline, retry = timings
    try:
        return LeaseSettings(
            namespace=namespace,
            name=name,
            lease_duration=duration,
            renew_deadline=deadline,
            retry_period=retry,
        )
    except ValueError as exc:
        err_usage(str(exc))


def operator(
    namespace: Annotated[
        list[str] | None,
        typer.Option("--namespace", "-n", help="Serve only this namespace (repeatable)."),
    ] = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="Serve every namespace (default).")
    ] = False,
    metrics_port: Annotated[
        int, typer.Option("--metrics-port", help="Port of /metrics (0: off).")
    ] = 8080,
    health_port: Annotated[
        int, typer.Option("--health-port", help="Port of the /healthz liveness probe (0: off).")
    ] = 8081,
    default_image: Annotated[
        str | None, typer.Option("--default-image", help="Worker image when a job sets none.")
    ] = None,
    default_storage: Annotated[
        str | None,
        typer.Option("--default-storage", help="Model store URI when a job sets no output."),
    ] = None,
    peering: Annotated[
        str | None,
        typer.Option(
            "--peering",
            help="Kopf peering object for active/standby replicas (needs Kopf's peering "
            "CRDs); without it the operator runs standalone: deploy one replica.",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    leader_elect: LeaderElect = False,
    lease_name: LeaseName = "torchyard-operator",
    lease_namespace: LeaseNamespace = None,
    lease_duration: LeaseDuration = 15.0,
    renew_deadline: RenewDeadline = 10.0,
    retry_period: RetryPeriod = 2.0,
) -> None:
    """Run the operator (Kopf) against the current cluster."""
    if namespace and all_namespaces:
        err_usage("--namespace and --all-namespaces exclude each other")
    if leader_elect and peering:
        err_usage("--leader-elect and --peering exclude each other")
    from torchyard.controller import OperatorOptions, run_operator

    lease = None
    if leader_elect:
        lease = _lease(
            lease_namespace or os.environ.get("POD_NAMESPACE") or (namespace or ["default"])[0],
            lease_name,
            (lease_duration, renew_deadline, retry_period),
        )
    run_operator(
        OperatorOptions(
            namespaces=list(namespace or []),
            all_namespaces=not namespace,
            metrics_port=metrics_port or None,
            health_port=health_port or None,
            default_image=default_image,
            default_storage=default_storage,
            peering=peering,
            verbose=verbose,
            leader_election=lease,
        )
    )


def register(app: typer.Typer) -> None:
    """Add the cluster commands to the `torchyard` CLI."""
    app.command()(operator)
    for command in (get, describe, logs):
        app.command(command.__name__)(one_line_errors(command))


__all__ = ["describe", "get", "logs", "operator", "register"]
