"""What a local pod gets that a real pod has: its image's interpreter, its own working directory,
and paths that mean the same wherever `torchyard run` starts.

* **The interpreter.** In the trainer image ``python``, ``python3`` and ``torchrun`` are the
  image's own, with torch. Locally they are this process's interpreter: every pod's ``PATH``
  starts with ``<run dir>/bin``, which holds small ``python``/``python3``/``torchrun`` scripts
  that exec it (a symlink would not do: a virtual environment is found from the path the
  interpreter is started by). ``torchrun`` (and ``python -m torch.distributed.run``) run
  through ``torchyard_trainer.launch`` — the same launcher, but keeping the failed worker's exit
  code, which plain torchrun turns into 1 (a kill would look permanent).
* **The working directory.** Each pod runs in ``<run dir>/pod-<i>/work`` (the image's
  ``WORKDIR`` in a cluster): two ranks writing ``model.pt`` never write the same file.
* **Relative paths.** A relative ``file://`` URI that was not found beside the manifest
  (``local_prepare.with_manifest_relative_inputs``) is made absolute against the directory the
  run starts in, and so is a command argument that names an existing file or folder beside the
  manifest or in that directory (``--flag=path`` included): they name the same files as before
  the pod moved into its own directory. That directory and the manifest's are on
  ``PYTHONPATH``, so ``python -m mypkg.train`` finds ``mypkg`` as it would in the image's
  ``WORKDIR``.

No torch here: this module is part of the torch-free ``torchyard`` package.
"""

from __future__ import annotations

import os
import shlex
import stat
import sys
from pathlib import Path
from typing import Any

from torchyard.api import AnyJob, TrainingJob, dump, parse_job

SHIM_DIR = "bin"
WORK_DIR = "work"
LAUNCH_MODULE = "torchyard_trainer.launch"
TORCHRUN_MODULE = "torch.distributed.run"
PYTHON_NAMES = frozenset({"python", "python3"})


def launcher_command(command: list[str], python: str = sys.executable) -> list[str]:
    """A pod's command as this machine runs it: the image's interpreter is ``python``, and
    torchrun keeps the workers' exit codes (``torchyard_trainer.launch``)."""
    if not command:
        return command
    head, rest = command[0], command[1:]
    if head in PYTHON_NAMES and rest[:2] in (["-m", LAUNCH_MODULE], ["-m", TORCHRUN_MODULE]):
        return [python, "-m", LAUNCH_MODULE, *rest[2:]]
    if head == "torchrun":
        return [python, "-m", LAUNCH_MODULE, *rest]
    return command


def _script(body: str) -> str:
    return f"#!/bin/sh\n{body}\n"


def write_interpreter_shims(bin_dir: Path, python: str = sys.executable) -> Path:
    """``python``, ``python3`` and ``torchrun`` in ``bin_dir``, each exec'ing ``python``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    quoted = shlex.quote(python)
    scripts = {
        "python": _script(f'exec {quoted} "$@"'),
        "python3": _script(f'exec {quoted} "$@"'),
        "torchrun": _script(f'exec {quoted} -m {LAUNCH_MODULE} "$@"'),
    }
    for name, text in scripts.items():
        path = bin_dir / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return bin_dir


def _prepend(entries: list[str], current: str | None) -> str:
    return os.pathsep.join([*entries, *([current] if current else [])])


def pod_process_env(
    pod_env: dict[str, str], shim_dir: Path, import_dirs: list[Path]
) -> dict[str, str]:
    """The environment of a pod's process: this machine's, then the pod's, with the shims first
    on ``PATH`` and ``import_dirs`` first on ``PYTHONPATH``."""
    env = {**os.environ, **pod_env}
    env["PATH"] = _prepend([str(shim_dir)], env.get("PATH"))
    unique = list(dict.fromkeys(str(d) for d in import_dirs))
    env["PYTHONPATH"] = _prepend(unique, env.get("PYTHONPATH"))
    return env


def _absolute_arg(arg: str, search: list[Path]) -> str:
    """``arg`` (or the value of ``--flag=value``) made absolute when it is a relative path that
    exists in one of ``search`` (in order); any other argument unchanged."""
    prefix, sep, value = arg.partition("=") if arg.startswith("-") else ("", "", arg)
    if not sep and prefix:
        return arg  # a bare flag
    if not value or value.startswith(("/", "-", "~")) or "://" in value or "\n" in value:
        return arg
    for base in search:
        candidate = base / value
        try:
            found = candidate.exists()
        except (OSError, ValueError):  # too long a name, or a NUL: not a path
            return arg
        if found:
            return f"{prefix}{sep}{candidate.resolve()}"
    return arg


def command_with_absolute_paths(command: list[str], search: list[Path]) -> list[str]:
    """Every argument naming an existing relative path (see :func:`_absolute_arg`); the
    program itself, a ``-m`` module name and a ``-c`` script (``python -c``, ``bash -c``) are
    left alone."""
    out: list[str] = []
    for i, arg in enumerate(command):
        after_flag = i > 0 and command[i - 1] in ("-m", "-c")
        out.append(arg if i == 0 or after_flag else _absolute_arg(arg, search))
    return out


def _absolute_uris(node: Any, start: Path) -> Any:
    if isinstance(node, dict):
        return {k: _absolute_uris(v, start) for k, v in node.items()}
    if isinstance(node, list):
        return [_absolute_uris(v, start) for v in node]
    if isinstance(node, str) and node.startswith("file://") and not node[7:].startswith("/"):
        return f"file://{(start / node[7:]).absolute()}"
    return node


def with_start_dir_paths(job: AnyJob, start: Path, manifest_dir: Path | None) -> AnyJob:
    """The job with every relative ``file://`` URI absolute against ``start`` (where the run
    starts), and its command's relative path arguments absolute (beside the manifest first,
    then in ``start``): the pods run in their own directories."""
    doc = dump(job)
    spec = _absolute_uris(doc["spec"], start.absolute())
    if isinstance(job, TrainingJob) and job.spec.command:
        search = [d.absolute() for d in (manifest_dir, start) if d is not None]
        spec["command"] = command_with_absolute_paths(list(job.spec.command), search)
    if spec == doc["spec"]:
        return job
    return parse_job({**doc, "spec": spec}, "resolved")


__all__ = [
    "SHIM_DIR",
    "WORK_DIR",
    "command_with_absolute_paths",
    "launcher_command",
    "pod_process_env",
    "with_start_dir_paths",
    "write_interpreter_shims",
]
