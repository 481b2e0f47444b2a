"""``torchyard dev-cluster …``: the real control plane (etcd, apiserver, controller-manager,
scheduler, KWOK) as local processes. Mounted by the main CLI with
``app.add_typer(devcluster.cli.app, name="dev-cluster")``; also runnable as
``python -m torchyard_devcluster``."""

from __future__ import annotations

import json
import shlex
import time
from typing import Any

import typer

from torchyard_devcluster import build, cluster, nodes, paths, procs, realnode

app = typer.Typer(
    name="dev-cluster",
    help="Run a real Kubernetes control plane with KWOK fake GPU nodes (no Docker).",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def up(
    nodes_: int = typer.Option(4, "--nodes", "-n", min=0, help="Fake GPU nodes to create."),
    gpus_per_node: int = typer.Option(8, "--gpus-per-node", min=0, help="nvidia.com/gpu per node."),
    pod_run_ms: int = typer.Option(
        1000, "--pod-run-ms", min=0, help="How long Job pods stay Running before they complete."
    ),
    build_: bool = typer.Option(True, "--build/--no-build", help="Build missing binaries first."),
    timeout: float = typer.Option(180.0, "--timeout", help="Seconds to wait for each component."),
    real_nodes: int = typer.Option(
        0, "--real-nodes", min=0, help="Real nodes (kubelet + containerd) to add; needs root."
    ),
    real_node_gpus: int = typer.Option(
        4, "--real-node-gpus", min=0, help="nvidia.com/gpu each real node advertises (runs on CPU)."
    ),
    real_node_taint: bool = typer.Option(
        False, "--real-node-taint", help="Taint real nodes so only pods tolerating it land there."
    ),
) -> None:
    """Start the cluster (or reuse the running one); builds the binaries on first use."""
    t0 = time.monotonic()
    try:
        c = cluster.up(
            nodes=nodes_,
            gpus_per_node=gpus_per_node,
            pod_run_ms=pod_run_ms,
            build_binaries=build_,
            timeout=timeout,
            pod_network=real_nodes > 0,
        )
        if real_nodes and not c.pod_network:
            typer.echo(
                "warning: the running cluster was started without --real-nodes; its pods cannot "
                "reach the API server (`torchyard dev-cluster down` and `up` again for that)",
                err=True,
            )
        realnode.up(c, n=real_nodes, gpus=real_node_gpus, taint=real_node_taint)
    except (cluster.DevClusterError, realnode.RealNodeError, FileNotFoundError) as e:
        typer.echo(f"dev-cluster up failed: {e}", err=True)
        raise typer.Exit(1) from e
    verb = "started" if c.started else "already running, reused"
    typer.echo(f"dev cluster {verb} in {time.monotonic() - t0:.1f}s: {c.server}", err=True)
    typer.echo(f"export KUBECONFIG={shlex.quote(str(c.kubeconfig))}")


@app.command()
def down() -> None:
    """Stop exactly the processes `up` started and remove the cluster state."""
    try:
        stopped = cluster.down()
    except cluster.DevClusterError as e:
        typer.echo(f"dev-cluster down failed: {e}", err=True)
        raise typer.Exit(1) from e
    if stopped:
        typer.echo("dev cluster stopped", err=True)
    else:
        typer.echo("dev cluster was not running", err=True)


@app.command()
def env() -> None:
    """Print `export KUBECONFIG=…` for the running cluster (use: eval "$(… env)")."""
    c = cluster.current()
    if c is None:
        typer.echo("dev cluster is not running (run `torchyard dev-cluster up`)", err=True)
        raise typer.Exit(1)
    typer.echo(f"export KUBECONFIG={shlex.quote(str(c.kubeconfig))}")


@app.command("nodes")
def nodes_cmd(
    add: int = typer.Option(0, "--add", min=0, help="Create this many more fake GPU nodes."),
    gpus_per_node: int = typer.Option(8, "--gpus-per-node", min=0),
) -> None:
    """List the fake nodes (name, Ready, GPUs); `--add N` creates N more first."""
    c = cluster.current()
    if c is None:
        typer.echo("dev cluster is not running", err=True)
        raise typer.Exit(1)
    from kubernetes import client

    api = c.api_client()
    try:
        core: Any = client.CoreV1Api(api)
        if add:
            existing = core.list_node(label_selector=nodes.MANAGED_LABEL).items
            taken = {n.metadata.name for n in existing}
            start = 0
            while f"{nodes.NODE_PREFIX}{start}" in taken:
                start += 1
            # Fill from the first free index; create_nodes is idempotent for taken names.
            nodes.create_nodes(api, n=add, gpus_per_node=gpus_per_node, start=start)
        for n in core.list_node().items:
            ready = next(
                (c_.status for c_ in (n.status.conditions or []) if c_.type == "Ready"), "Unknown"
            )
            gpus = (n.status.allocatable or {}).get(nodes.GPU_RESOURCE, "0")
            product = (n.metadata.labels or {}).get("nvidia.com/gpu.product", "-")
            typer.echo(f"{n.metadata.name}\tReady={ready}\tgpus={gpus}\t{product}")
    finally:
        api.close()


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Show processes, ports, versions and whether the apiserver is ready."""
    info = cluster.status()
    info["binaries"] = {"dir": str(paths.bin_dir()), "built": build.binaries_ready()}
    real = realnode.RealState.load(realnode.real_dir(paths.state_dir()))
    if real is not None and "processes" in info:
        info["processes"].update(
            {p.name: {"pid": p.pid, "alive": procs.alive(p), "log": p.log} for p in real.processes}
        )
    if as_json:
        typer.echo(json.dumps(info, indent=2))
    else:
        typer.echo(f"running: {info['running']}  state: {info['state_dir']}")
        if "server" in info:
            typer.echo(f"server: {info['server']}  kubeconfig: {info['kubeconfig']}")
            for name, p in info["processes"].items():
                typer.echo(f"  {name:<24} pid={p['pid']:<8} alive={p['alive']}  {p['log']}")
        typer.echo(f"binaries: {info['binaries']['dir']} (built: {info['binaries']['built']})")
    if not info["running"]:
        raise typer.Exit(1)
