"""`torchyard dev-cluster`: the dev control plane is its own package (`torchyard_devcluster`,
the `dev` extra), which the operator package loads only when the subcommand runs."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from tests.conftest import REPO
from torchyard.cli import DEV_CLUSTER_HINT, app

OPERATOR_PKG = REPO / "operator" / "torchyard"
HINT = "pip install 'torchyard[dev]'"


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        text=True,
        capture_output=True,
        check=False,
        timeout=120,
    )


def test_operator_package_imports_no_dev_cluster() -> None:
    """Importing `torchyard.cli` and every module of `torchyard` loads no dev-cluster code."""
    res = _python(
        """
        import importlib, pkgutil, sys
        import torchyard, torchyard.cli
        names = [m.name for m in pkgutil.walk_packages(torchyard.__path__, "torchyard.")]
        for name in names:
            importlib.import_module(name)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] == "torchyard_devcluster")
        assert not loaded, loaded
        print(len(names))
        """
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert int(res.stdout.split()[-1]) > 10  # the walk really visited the package


def _import_time_imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: everything but function bodies."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        yield from _import_time_imports(child)


def test_no_dev_cluster_code_in_operator_package() -> None:
    """No `devcluster` folder left behind, and no import-time import of the dev cluster
    anywhere in `torchyard` (the one import, in cli.py, sits inside a function)."""
    assert not (OPERATOR_PKG / "devcluster").exists()
    offenders = []
    for path in sorted(OPERATOR_PKG.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for imp in _import_time_imports(tree):
            mods = [a.name for a in imp.names] if isinstance(imp, ast.Import) else [imp.module]
            if any((m or "").split(".")[0] == "torchyard_devcluster" for m in mods):
                offenders.append(f"{path.relative_to(REPO)}:{imp.lineno}")
    assert not offenders


def test_dev_cluster_mounted_when_installed() -> None:
    pytest.importorskip("torchyard_devcluster")
    res = CliRunner().invoke(app, ["dev-cluster", "--help"])
    assert res.exit_code == 0, res.output
    for command in ("up", "down", "env", "nodes", "status"):
        assert command in res.output
    res = CliRunner().invoke(app, ["--help"])
    assert res.exit_code == 0
    assert "dev-cluster" in res.output


@pytest.mark.parametrize(
    "args", [["dev-cluster", "up"], ["dev-cluster", "up", "--nodes", "2"], ["dev-cluster"]]
)
def test_dev_cluster_missing_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    """Without the package (None in sys.modules = not importable): one hint line, exit 1."""
    for name in [m for m in sys.modules if m.split(".")[0] == "torchyard_devcluster"]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "torchyard_devcluster", None)
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1, res.output
    assert isinstance(res.exception, SystemExit)
    assert HINT in res.output
    assert "make venv" in res.output
    assert "Traceback" not in res.output
    # The root help still lists the command, saying it is not installed.
    res = CliRunner().invoke(app, ["--help"])
    assert res.exit_code == 0
    assert "dev-cluster" in res.output
    assert "Not installed" in res.output


def test_dev_cluster_missing_entry_point_has_no_traceback() -> None:
    """The real entry point (`torchyard.cli:main`) with the package blocked by a meta-path
    finder, as in an environment without the `dev` extra."""
    res = _python(
        """
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "torchyard_devcluster":
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None

        sys.meta_path.insert(0, Block())
        sys.argv = ["torchyard", "dev-cluster", "up", "--nodes", "1"]
        from torchyard.cli import main
        main()
        """
    )
    assert res.returncode == 1, res.stdout + res.stderr
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert HINT in lines[0]
    assert "torchyard_devcluster" in lines[0]
    assert lines[0] == DEV_CLUSTER_HINT.format(error="No module named 'torchyard_devcluster'")
