"""The `torchyard` command line."""

from __future__ import annotations

import shlex
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

from torchyard.api import check_manifests
from torchyard.cli_cluster import register as register_cluster_commands
from torchyard.cli_cluster.deploy import register as register_deploy_command
from torchyard.cli_cluster.models import register as register_model_commands
from torchyard.crd import all_crds, render, write_crds

# `torchyard dev-cluster …` lives in the separate package `torchyard_devcluster` (the `dev`
# extra; not in the operator image). The operator package never imports it at import time:
# the group below loads it only when the subcommand is resolved.
DEV_CLUSTER = "dev-cluster"
DEV_CLUSTER_HELP = (
    "A real control plane (etcd, apiserver, controller-manager, scheduler, KWOK GPU "
    "nodes) without Docker."
)
DEV_CLUSTER_HINT = (
    "torchyard dev-cluster: the dev cluster is not installed ({error}); install it with "
    "`pip install 'torchyard[dev]'` (or `make venv` in a clone)."
)


# Click objects are typed Any below: typer >= 0.2x vendors click (typer._click), older typer
# uses click itself; this code touches only the API both share and imports neither.
def _dev_cluster_command() -> Any:
    """The `dev-cluster` group from `torchyard_devcluster`, or a stub that says how to get it."""
    try:
        from torchyard_devcluster.cli import app as dev_cluster_app
    except ModuleNotFoundError as exc:  # the package, or one of its `dev` dependencies
        error = str(exc)
        stub = typer.Typer(add_completion=False)

        @stub.command(
            DEV_CLUSTER,
            help=f"{DEV_CLUSTER_HELP} Not installed: needs torchyard's dev extra.",
            add_help_option=False,
            context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        )
        def missing() -> None:
            err.print(DEV_CLUSTER_HINT.format(error=error), markup=False)
            raise typer.Exit(code=1)

        command = typer.main.get_command(stub)
    else:
        command = typer.main.get_command(dev_cluster_app)
        command.help = DEV_CLUSTER_HELP
    command.name = DEV_CLUSTER
    return command


class _Group(TyperGroup):
    """The root group: the commands registered below plus the lazily loaded `dev-cluster`."""

    def list_commands(self, ctx: Any) -> list[str]:
        return [*super().list_commands(ctx), DEV_CLUSTER]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name == DEV_CLUSTER:
            return _dev_cluster_command()
        return super().get_command(ctx, cmd_name)


app = typer.Typer(
    name="torchyard",
    cls=_Group,
    help="Train, compress and version PyTorch models — on Kubernetes or on this machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# soft_wrap: paths and messages stay on one line, so they can be grepped and copied.
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)


def _version() -> str:
    try:
        return version("torchyard")
    except PackageNotFoundError:  # running from a source checkout without install
        return "0.0.0+unknown"


def _version_callback(value: bool) -> None:
    if value:
        out.print(f"torchyard {_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """torchyard: train → compress → version PyTorch models."""


@app.command()
def crds(
    output_dir: Annotated[
        Path | None,
        typer.Option("--output-dir", "-o", help="Write one file per CRD here instead of printing."),
    ] = None,
) -> None:
    """Print (or write) the CustomResourceDefinitions generated from the API models."""
    if output_dir is not None:
        for path in write_crds(output_dir):
            out.print(f"wrote {path}", markup=False)
        return
    docs = [render(crd) for crd in all_crds().values()]
    sys.stdout.write("---\n".join(docs))


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="Manifest files (YAML, multi-document ok).")],
) -> None:
    """Check manifests with the API server's rules; errors name the file and the field path."""
    failures = 0
    for path in files:
        if not path.is_file():
            _say_bad(f"{path}: no such file")
            failures += 1
            continue
        check = check_manifests(path)
        for warning in check.warnings:
            err.print(Text.assemble(("warning: ", "yellow"), warning))
        for exc in check.errors:
            failures += 1
            for line in exc.errors:
                _say_bad(f"{exc.source}: {line}")
        for job in check.jobs:
            out.print(
                Text.assemble(("✓ ", "green"), f"{path}: {job.kind} {job.metadata.name} is valid")
            )
    if failures:
        raise typer.Exit(code=1)


def _say_bad(message: str) -> None:
    # A Text, not markup: messages hold brackets (the name pattern's `[-a-z0-9]`) that
    # console markup would take for styles and drop.
    err.print(Text.assemble(("✗ ", "red"), message))


@app.command()
def run(
    manifest: Annotated[Path, typer.Argument(help="A TrainingJob or CompressionJob manifest.")],
    workers: Annotated[int | None, typer.Option("--workers", help="Override spec.workers.")] = None,
    procs_per_worker: Annotated[
        int | None, typer.Option("--procs-per-worker", help="Override spec.procsPerWorker.")
    ] = None,
    output: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            help="The result on stdout: human (a table) or json (one document, for scripts). "
            "Progress goes to stderr either way.",
        ),
    ] = "human",
) -> None:
    """Run a job on this machine: the same pods the operator builds, as local processes."""
    from torchyard.local import OUTPUT_FORMATS, output_format, run_manifest

    fmt = output_format(output)
    if fmt is None:
        err.print(f"--output: {output!r} is not one of {', '.join(OUTPUT_FORMATS)}", markup=False)
        raise typer.Exit(code=2)
    raise typer.Exit(code=run_manifest(manifest, workers, procs_per_worker, fmt))


@app.command()
def convert(
    source: Annotated[
        str,
        typer.Argument(
            metavar="FILE|-", help="A Kubeflow PyTorchJob/TrainJob manifest file, or - for stdin."
        ),
    ],
    entrypoint: Annotated[
        str | None,
        typer.Option(
            "--entrypoint",
            help="The image's ENTRYPOINT, for a container that gives only args "
            "(e.g. 'python /opt/mnist.py'): a manifest does not say it.",
        ),
    ] = None,
) -> None:
    """Turn Kubeflow PyTorchJob (v1) / TrainJob (v2, torch runtimes) manifests into
    TrainingJobs: YAML on stdout, what was dropped or changed (and why) on stderr."""
    from torchyard.convert import ConvertError, convert_text, render

    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        _say_bad(f"{source}: cannot read: {exc}")
        raise typer.Exit(code=1) from None
    try:
        conversions = convert_text(text, shlex.split(entrypoint) if entrypoint else None)
    except ConvertError as exc:
        _say_bad(f"{source}: {exc}")
        raise typer.Exit(code=1) from None
    sys.stdout.write(render(conversions))
    for c in conversions:
        name = c.manifest["metadata"]["name"]
        err.print(f"# {c.source} -> TrainingJob {name}: {len(c.notes)} note(s)", markup=False)
        for note in c.notes:
            err.print(f"#   {note.line()}", markup=False)


register_cluster_commands(app)  # operator, get, describe, logs
register_model_commands(app)  # models, promote
register_deploy_command(app)  # deploy
# dev-cluster: see _Group (loaded on use from torchyard_devcluster)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
