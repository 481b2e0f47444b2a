"""torchrun launch flags in a Kubeflow command, and which of them the operator sets itself.

Kubeflow's examples start torchrun (``torchrun …`` or ``python -m torch.distributed.run …``)
with flags that pin the group's shape and rendezvous. In a TrainingJob the operator gives
every pod that shape through the environment torchrun reads its defaults from
(``PET_NNODES``, ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR``,
``PET_MASTER_PORT``), so a flag that repeats it would override the operator (and go stale the
day ``workers`` changes) and a flag that contradicts it (``--standalone``, a c10d endpoint)
would break multi-pod jobs. Those flags are taken out; their values become ``workers`` and
``procsPerWorker``. Every other flag, the script and its arguments stay as they were.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torchyard.convert.notes import Notes

LAUNCH_MODULES = ("torch.distributed.run", "torch.distributed.launch")
_PYTHON = re.compile(r"^(.*/)?python(3(\.\d+)?)?$")

# torchrun's options that take no value (torch 2.x `torchrun --help`); every other option
# takes one, given as `--flag=value` or `--flag value`.
_SWITCHES = frozenset(
    {
        "--standalone",
        "-m",
        "--module",
        "--no-python",
        "--run-path",
        "--virtual-local-rank",
        "--use-env",
    }
)
_RENDEZVOUS = (
    "the operator sets the rendezvous itself: static, at pod 0 "
    "(PET_MASTER_ADDR=<job>-0.<job>, PET_MASTER_PORT=29500), for every pod"
)
# Options the operator sets through PET_* (canonical spelling) and why they go.
_OWNED = {
    "--nnodes": "moved to spec.workers (PET_NNODES)",
    "--nproc-per-node": "moved to spec.procsPerWorker (PET_NPROC_PER_NODE)",
    "--node-rank": "the operator sets PET_NODE_RANK (the pod's completion index)",
    "--master-addr": _RENDEZVOUS,
    "--master-port": _RENDEZVOUS,
    "--rdzv-backend": _RENDEZVOUS,
    "--rdzv-endpoint": _RENDEZVOUS,
    "--rdzv-id": _RENDEZVOUS,
    "--standalone": "--standalone pins a one-pod rendezvous on localhost; " + _RENDEZVOUS,
}


@dataclass(frozen=True)
class Launch:
    """A command with the operator-owned torchrun flags taken out."""

    command: list[str]
    nnodes: str | None = None
    nproc_per_node: str | None = None


def launcher_args_at(command: list[str]) -> int | None:
    """Where torchrun's own arguments start in `command`, or None when it is not torchrun."""
    if command and command[0].rsplit("/", 1)[-1] == "torchrun":
        return 1
    if len(command) >= 3 and _PYTHON.match(command[0]) and command[1] == "-m":
        return 3 if command[2] in LAUNCH_MODULES else None
    return None


def _canonical(flag: str) -> str:
    """torchrun accepts `--nproc_per_node` and `--nproc-per-node` alike."""
    return "--" + flag[2:].replace("_", "-") if flag.startswith("--") else flag


def strip_launch_flags(command: list[str], path: str, notes: Notes) -> Launch:
    """`command` without the flags the operator sets; a note for each one taken out."""
    start = launcher_args_at(command)
    if start is None:
        _warn_shell_launch(command, path, notes)
        return Launch(list(command))
    kept, values = list(command[:start]), {}
    i = start
    while i < len(command) and command[i].startswith("-") and command[i] != "--":
        name, eq, inline = command[i].partition("=")
        flag = _canonical(name)
        takes_value = flag not in _SWITCHES and not eq
        token = command[i : i + (2 if takes_value else 1)]
        value = inline if eq else (token[1] if len(token) > 1 else "")
        i += len(token)
        if flag in _OWNED:
            values[flag] = value
            notes.changed(f"{path}: {' '.join(token)}", _OWNED[flag])
        else:
            kept += token
    kept += command[i:]
    return Launch(kept, values.get("--nnodes"), values.get("--nproc-per-node"))


def _warn_shell_launch(command: list[str], path: str, notes: Notes) -> None:
    """A launch inside a shell script is passed as written: say so if it pins the shape."""
    script = " ".join(command)
    owned = [f for f in _OWNED if re.search(rf"{f}\b|{f.replace('-', '_')}\b", script)]
    if owned and ("torchrun" in script or "torch.distributed.run" in script):
        notes.changed(
            path,
            "a shell script starts torchrun with " + ", ".join(owned) + ": left as written "
            "(the operator's PET_* environment is what it should read); check it",
        )
