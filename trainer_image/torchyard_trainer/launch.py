"""``python -m torchyard_trainer.launch [torchrun args] [-m torchyard_trainer]``: torchrun that
keeps the workers' exit codes.

Plain torchrun exits 1 whenever any worker fails, which erases the DESIGN §3 classification
(1–127 permanent, ≥ 128 retryable): an OOM-killed or SIGKILLed rank would look like a bug. This
wrapper runs the very same launcher (same flags, same PET_* environment) and exits with the
first failed worker's code, 128 + N when it died of signal N. Without a script it runs
``-m torchyard_trainer``.

SIGTERM (preemption, eviction, node drain): torchrun's agent forwards it to the ranks and waits
its shutdown timeout before SIGKILL. That timeout comes from the job
(``$TORCHYARD_SHUTDOWN_TIMEOUT_SECONDS``, derived from ``runPolicy.gracePeriodSeconds``) and
the ranks read the same value to bound their checkpoint (``torchyard_trainer.preempt``); the
launcher then exits 128 + the signal (143: retryable).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping

from torchyard.api.contract import Env, ExitCode, exit_code_of_returncode

SHUTDOWN_FLAGS = ("--shutdown-timeout", "--shutdown_timeout")
# torchrun's agent waits this long between forwarding SIGTERM and SIGKILL unless told otherwise
AGENT_DEFAULT_SHUTDOWN_TIMEOUT = "30"


def single_node_command(nproc: int, master_port: int) -> list[str]:
    """This launcher for ``nproc`` ranks on this machine (tests, benchmarks, local runs)."""
    return [
        sys.executable,
        "-m",
        "torchyard_trainer.launch",
        "--nnodes",
        "1",
        "--nproc-per-node",
        str(nproc),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(master_port),
    ]


def exit_code_of(failure_exitcode: int) -> int:
    """Exit code of the pod for a worker's exit code (negative = killed by that signal); a
    failure torchrun reports as 0 still fails."""
    return exit_code_of_returncode(failure_exitcode) or ExitCode.ERROR


def with_shutdown_timeout(
    argv: list[str], environ: Mapping[str, str], *, supported: bool = True
) -> tuple[list[str], str]:
    """``argv`` with torchrun's ``--shutdown-timeout`` from the job's env contract (a flag the
    user gave wins), and the timeout the agent will use (its own default is 30 s).

    ``supported``: whether this torch's torchrun has the flag (torch 2.11, the GPU image's,
    refuses it). Without it the agent SIGKILLs its ranks a fixed 30 s after forwarding SIGTERM,
    so the ranks bound their checkpoint by the smaller of that and the job's timeout (within the
    job's, they exit on their own before the pod's grace runs out, as with the flag)."""
    for i, arg in enumerate(argv):
        for flag in SHUTDOWN_FLAGS:
            if arg == flag and i + 1 < len(argv):
                return argv, argv[i + 1]
            if arg.startswith(flag + "="):
                return argv, arg.split("=", 1)[1]
    value = environ.get(Env.SHUTDOWN_TIMEOUT_SECONDS) or AGENT_DEFAULT_SHUTDOWN_TIMEOUT
    if not supported:
        return argv, min(value, AGENT_DEFAULT_SHUTDOWN_TIMEOUT, key=float)
    return [SHUTDOWN_FLAGS[0], value, *argv], value


def torchrun_has_shutdown_timeout() -> bool:
    """Whether this torch's torchrun accepts ``--shutdown-timeout``."""
    from torch.distributed.run import get_args_parser

    parser = get_args_parser()  # type: ignore[no-untyped-call,unused-ignore]
    return any(flag in parser._option_string_actions for flag in SHUTDOWN_FLAGS)


def main(argv: list[str] | None = None) -> int:
    from torchyard_trainer.logtee import archived_output

    # Every rank's output also goes to <output store>/.logs/…/attempt-<n>/rank-<r>.log
    with archived_output(os.environ) as archive:
        code = _launch(argv)
        if archive is not None:
            archive.ended(code, None if code == 0 else "failed")
    return code


def _launch(argv: list[str] | None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    argv = list(sys.argv[1:] if argv is None else argv)
    if "-m" not in argv and "--module" not in argv and not any(a.endswith(".py") for a in argv):
        argv += ["-m", "torchyard_trainer"]
    supported = torchrun_has_shutdown_timeout()
    argv, timeout = with_shutdown_timeout(argv, os.environ, supported=supported)
    asked = os.environ.get(Env.SHUTDOWN_TIMEOUT_SECONDS)
    if not supported and asked and asked != timeout:
        print(
            f"torchyard launch: this torch's torchrun has no --shutdown-timeout and kills its "
            f"ranks {timeout} s after SIGTERM, not the job's {asked} s",
            file=sys.stderr,
        )
    environ: MutableMapping[str, str] = os.environ
    environ[Env.SHUTDOWN_TIMEOUT_SECONDS] = timeout  # the ranks bound their checkpoint by it
    args = parse_args(argv)  # type: ignore[no-untyped-call,unused-ignore]
    try:
        run(args)  # type: ignore[no-untyped-call,unused-ignore]
    except SignalException as exc:
        # The agent has forwarded the signal and waited for the ranks (or its timeout).
        code = ExitCode.SIGNALS_FROM + int(exc.sigval)
        print(f"torchyard launch: stopped by {exc.sigval.name}; exiting {code}", file=sys.stderr)
        return code
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = exit_code_of(failure.exitcode)
        print(
            f"torchyard launch: rank {rank} failed with exit code {failure.exitcode}; "
            f"exiting {code}",
            file=sys.stderr,
        )
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
