"""`torchyard run`: the operator's own pods, started as local processes.

The job is built with the same builders the operator uses (``torchyard.builders``); each worker
pod's container command is started as a process with the pod's environment, resolved the way the
kubelet would (completion index, namespace) and rewritten where a laptop differs from a cluster:

* ``PET_MASTER_ADDR``/``MASTER_ADDR`` → 127.0.0.1, the rendezvous port → a free local port;
* ``TORCHYARD_SPEC`` → the resolved manifest written to ``<run dir>/spec.yaml``;
* ``TORCHYARD_RESULT_FILE`` (``/dev/termination-log`` in a pod) → ``<run dir>/pod-<i>/result.json``;
* ``TORCHYARD_OUTPUT_DIR`` → ``<run dir>/pod-<i>``; ``TORCHYARD_PVC_ROOT`` → a local folder;
* ``TORCHYARD_METRICS_PORT`` → the first of ``procsPerWorker`` consecutive free local ports per
  pod (local rank r serves base + r), picked afresh for every attempt like the rendezvous port,
  so that runs side by side (or anything else on 9400) never collide. Where each rank serves is
  printed and written to ``<run dir>/metrics-targets.json``, a Prometheus ``file_sd`` file;
* ``python``/``python3``/``torchrun`` → this interpreter (shims first on ``PATH``), the working
  directory → ``<run dir>/pod-<i>/work``, relative paths → absolute (``local_env``).

Like the operator, one failed worker restarts the *whole group* (all pods), counted against
``runPolicy.backoffLimit``; exit codes are classified by ``runPolicy.retryPolicy`` (ExitCode:
1–127 permanent, ≥ 128 or a signal retryable). Ctrl-C ends every child process group and keeps
the last checkpoint, so the next ``torchyard run`` of the same manifest resumes from it.

Before any worker starts, ``local_prepare`` checks what can be checked and readies the run
folder (a fresh log.txt per run, earlier runs' logs kept); ``local_output`` prints progress on
stderr and the result on stdout (a table, or one JSON document with ``--output json``).

No torch here: this module is part of the torch-free ``torchyard`` package.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchyard.api import (
    AnyJob,
    CompressionJob,
    ManifestError,
    TrainingJob,
    contract,
    dump,
    load_manifest,
    parse_job,
)
from torchyard.api.contract import (
    LOOPBACK_HOST,
    Env,
    ExitCode,
    exit_code_of_returncode,
    is_retryable,
)
from torchyard.builders import SPEC_FILE, build_children
from torchyard.local_env import (
    SHIM_DIR,
    WORK_DIR,
    launcher_command,
    pod_process_env,
    with_start_dir_paths,
    write_interpreter_shims,
)
from torchyard.local_output import (
    OUTPUT_FORMATS,
    OutputFormat,
    ProgressState,
    ProgressView,
    RunOutcome,
    log_tail,
    output_format,
    plot,
    print_summary,
    progress_view,
    read_events,
    stderr,
    summary,
)
from torchyard.local_prepare import (
    LOG_FILE,
    precheck,
    prepare_run_dir,
    with_manifest_relative_inputs,
)

RUNS_DIR = "torchyard-runs"
LOCAL_NAMESPACE = "default"
KILL_GRACE_SECONDS = 10.0
POLL_SECONDS = 0.2


# ---------------------------------------------------------------------------------------------
# preparing the pods


METRICS_TARGETS_FILE = "metrics-targets.json"
MAX_PORT = 65535
PORT_TRIES = 100


def free_port_blocks(sizes: list[int]) -> list[int]:
    """For each size n, the first of n consecutive ports free on 127.0.0.1; no two blocks
    overlap. Every port is held (bound) until all are picked, then released for the workers."""
    with contextlib.ExitStack() as held:
        starts = []
        for size in sizes:
            for _ in range(PORT_TRIES):
                first = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                first.bind((LOOPBACK_HOST, 0))
                start = int(first.getsockname()[1])
                block = [first]
                try:
                    if start + size - 1 > MAX_PORT:
                        raise OSError("block past the last port")
                    for port in range(start + 1, start + size):
                        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                        block.append(sock)
                        sock.bind((LOOPBACK_HOST, port))
                except OSError:
                    for sock in block:
                        sock.close()
                    continue
                for sock in block:
                    held.enter_context(sock)
                starts.append(start)
                break
            else:
                raise OSError(f"no {size} consecutive free local ports in {PORT_TRIES} tries")
        return starts


def with_overrides(job: AnyJob, workers: int | None, procs_per_worker: int | None) -> AnyJob:
    """The job with --workers / --procs-per-worker applied (re-validated)."""
    doc = dump(job)
    if workers is not None:
        doc["spec"]["workers"] = workers
    if procs_per_worker is not None:
        if not isinstance(job, TrainingJob):
            raise ManifestError("--procs-per-worker", ["only TrainingJobs have procsPerWorker"])
        doc["spec"]["procsPerWorker"] = procs_per_worker
    return parse_job(doc, "overrides")


def with_local_storage(job: AnyJob, store_root: Path) -> AnyJob:
    """Fill ``output.storage`` with the local model store when the manifest leaves it out, so
    that jobs run on this machine find each other's models (e.g. a distillation teacher)."""
    doc = dump(job)
    output = doc["spec"].setdefault("output", {})
    output.setdefault("storage", f"file://{store_root}")
    return parse_job(doc, "resolved")


def checkpoint_dir(job: AnyJob, pvc_root: Path) -> Path | None:
    """Where the workers keep this job's checkpoints (the contract's rule, as they apply it)."""
    if not isinstance(job, TrainingJob):
        return None
    return contract.checkpoint_dir(
        checkpoint_storage=job.spec.checkpoint.storage,
        output_storage=job.spec.output.storage,
        namespace=LOCAL_NAMESPACE,
        job_name=job.metadata.name,
        pvc_root=pvc_root,
    )


def _resolve_env(entry: dict[str, Any], index: int) -> str | None:
    if "value" in entry:
        return str(entry["value"])
    ref = entry.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath", "")
    if "job-completion-index" in ref:
        return str(index)
    if ref == "metadata.namespace":
        return LOCAL_NAMESPACE
    if ref == "metadata.name":
        return f"pod-{index}"
    return None


@dataclass
class PodPlan:
    """One worker pod as a local process."""

    index: int
    command: list[str]
    env: dict[str, str]
    out_dir: Path
    metrics_ports: list[int] = field(default_factory=list)
    """The port each local rank serves its metrics on (index = local rank)."""
    process_env: dict[str, str] = field(default_factory=dict)
    """The process's whole environment (``env`` over this machine's, see local_env)."""

    @property
    def work_dir(self) -> Path:
        """The pod's own working directory (the image's WORKDIR in a cluster)."""
        return self.out_dir / WORK_DIR


def plan_pods(
    job: AnyJob, run_dir: Path, pvc_root: Path, attempt: int, import_dirs: list[Path] | None = None
) -> list[PodPlan]:
    """The worker pods of one attempt, from the operator's builders; ``import_dirs`` go first on
    the pods' PYTHONPATH (the run's start and manifest directories, see local_env)."""
    shims = write_interpreter_shims(run_dir / SHIM_DIR)
    import_dirs = import_dirs or []
    children = build_children(job, namespace=LOCAL_NAMESPACE, restart_count=attempt)
    spec_path = run_dir / SPEC_FILE
    spec_path.write_text(children.configmap["data"][SPEC_FILE])
    template = children.job["spec"]["template"]["spec"]
    container = template["containers"][0]
    command = launcher_command([*container.get("command", []), *container.get("args", [])])
    workers = int(children.job["spec"]["parallelism"])
    procs = job.spec.procs_per_worker if isinstance(job, TrainingJob) else 1
    # the rendezvous port, then one block of procsPerWorker metrics ports per pod
    port, *metrics_bases = free_port_blocks([1] + [procs] * workers)
    pods = []
    for index in range(workers):
        env: dict[str, str] = {}
        for entry in container.get("env", []):
            value = _resolve_env(entry, index)
            if value is not None:
                env[entry["name"]] = value
        out_dir = run_dir / f"pod-{index}"
        out_dir.mkdir(parents=True, exist_ok=True)
        base_metrics = metrics_bases[index]
        env.update(
            {
                Env.MASTER_ADDR: LOOPBACK_HOST,
                Env.TORCHRUN_MASTER_ADDR: LOOPBACK_HOST,
                Env.MASTER_PORT: str(port),
                Env.TORCHRUN_MASTER_PORT: str(port),
                Env.SPEC: str(spec_path),
                Env.OUTPUT_DIR: str(out_dir),
                Env.RESULT_FILE: str(out_dir / "result.json"),
                Env.PVC_ROOT: str(pvc_root),
                Env.METRICS_PORT: str(base_metrics),
                Env.RESTART_COUNT: str(attempt),
            }
        )
        ports = [base_metrics + r for r in range(procs)]
        process_env = pod_process_env(env, shims, import_dirs)
        pods.append(PodPlan(index, command, env, out_dir, ports, process_env))
    write_metrics_targets(run_dir / METRICS_TARGETS_FILE, pods)
    return pods


def metrics_targets(pods: list[PodPlan]) -> list[dict[str, Any]]:
    """Where every process serves its metrics, as Prometheus ``file_sd`` target groups, in rank
    order (torchrun numbers ranks pod by pod: pod index × procsPerWorker + local rank). The
    workers export their own torchyard_job/namespace/rank labels; these say which process it is."""
    return [
        {
            "targets": [f"{LOOPBACK_HOST}:{port}"],
            "labels": {"pod": f"pod-{pod.index}", "local_rank": str(local_rank)},
        }
        for pod in pods
        for local_rank, port in enumerate(pod.metrics_ports)
    ]


def write_metrics_targets(path: Path, pods: list[PodPlan]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(metrics_targets(pods), indent=1) + "\n")
    tmp.replace(path)  # atomic: Prometheus never reads half a file


def metrics_summary(pods: list[PodPlan]) -> str:
    ranks = [port for pod in pods for port in pod.metrics_ports]
    return ", ".join(f"rank {rank} {LOOPBACK_HOST}:{port}" for rank, port in enumerate(ranks))


# ---------------------------------------------------------------------------------------------
# running them


@dataclass
class AttemptProcesses:
    """The running processes of one attempt."""

    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Any] = field(default_factory=list)
    grace: float = KILL_GRACE_SECONDS
    """SIGTERM to SIGKILL, as the pods' terminationGracePeriodSeconds: the launcher's
    shutdown timeout (the env contract) plus the margin the operator leaves, so a rank's
    checkpoint on SIGTERM is not cut short here either."""

    def start(self, pods: list[PodPlan], attempt: int) -> None:
        for pod in pods:
            timeout = pod.env.get(Env.SHUTDOWN_TIMEOUT_SECONDS)
            if timeout:
                self.grace = max(self.grace, float(timeout) + 2.0)
            # appends: the attempts of one run follow each other (rotate_logs keeps runs apart)
            log = (pod.out_dir / LOG_FILE).open("ab")
            started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            gap = "\n" if log.tell() else ""
            log.write(f"{gap}===== attempt {attempt} · started {started} =====\n".encode())
            log.flush()
            self.logs.append(log)
            pod.work_dir.mkdir(parents=True, exist_ok=True)
            self.procs.append(
                subprocess.Popen(
                    pod.command,
                    cwd=pod.work_dir,
                    env=pod.process_env or {**os.environ, **pod.env},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: we can end the whole tree
                )
            )

    def first_failure(self) -> tuple[int, int] | None:
        for i, p in enumerate(self.procs):
            rc = p.poll()
            if rc is not None and rc != 0:
                return i, exit_code_of_returncode(rc)
        return None

    def exit_codes(self) -> list[int | None]:
        """Every pod's exit code as the kubelet would report it (None: still running)."""
        return [
            None if p.poll() is None else exit_code_of_returncode(p.returncode) for p in self.procs
        ]

    def all_succeeded(self) -> bool:
        return all(p.poll() == 0 for p in self.procs)

    def stop(self) -> None:
        """SIGTERM every process group, SIGKILL what is left after the grace period."""
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
        for p in self.procs:
            # the group may still hold grandchildren even when the leader is gone
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=KILL_GRACE_SECONDS)
        for log in self.logs:
            log.close()


class ProgressTail:
    """Follows rank 0's progress.jsonl."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def read(self) -> Iterator[dict[str, Any]]:
        if not self.path.exists():
            return
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        end = data.rfind(b"\n")
        if end < 0:
            return
        self.offset += end + 1
        for line in data[: end + 1].splitlines():
            with contextlib.suppress(ValueError):
                yield json.loads(line)


def _watch(
    procs: AttemptProcesses, tail: ProgressTail, view: ProgressView
) -> tuple[int, int | None]:
    while True:
        # the processes' state first, then their events: once a process has ended, every event
        # it wrote (its "end" above all) is read before we return
        failure = procs.first_failure()
        done = failure is None and procs.all_succeeded()
        force = False
        for ev in tail.read():
            force = view.state.apply(ev) or force
        view.update(force)
        if failure is not None:
            index, code = failure
            return code, index
        if done:
            return 0, None
        time.sleep(POLL_SECONDS)


def run_group(
    pods: list[PodPlan], attempt: int, view: ProgressView
) -> tuple[int, int | None, list[int | None]]:
    """Run one attempt to its end; returns (exit code, index of the failed pod or None, every
    pod's exit code)."""
    tail = ProgressTail(pods[0].out_dir / "progress.jsonl")
    procs = AttemptProcesses()
    procs.start(pods, attempt)
    try:
        code, failed = _watch(procs, tail, view)
    finally:
        procs.stop()
    return code, failed, procs.exit_codes()


def run_attempts(
    job: AnyJob, run_dir: Path, pvc_root: Path, view: ProgressView, import_dirs: list[Path]
) -> RunOutcome:
    """The first attempt and the group restarts ``runPolicy`` allows."""
    backoff = job.spec.run_policy.backoff_limit
    attempt = 0
    while True:
        pods = plan_pods(job, run_dir, pvc_root, attempt, import_dirs)
        view.message(
            f"metrics: {metrics_summary(pods)} "
            f"(Prometheus file_sd: {run_dir / METRICS_TARGETS_FILE})"
        )
        code, failed, codes = run_group(pods, attempt, view)
        if code == 0:
            return RunOutcome(0, attempt, pod_exit_codes=codes)
        assert failed is not None
        log = pods[failed].out_dir / LOG_FILE
        retry = is_retryable(code, job.spec.run_policy)
        view.message(
            f"pod {failed} exited {code} ({'retryable' if retry else 'permanent'}); log: {log}",
            style="yellow",
        )
        if not retry or attempt >= backoff:
            if retry:
                view.message(f"backoffLimit {backoff} exceeded", style="red")
            view.message(log_tail(log).rstrip("\n"))
            return RunOutcome(code, attempt, pod_exit_codes=codes)
        attempt += 1
        view.message(f"restarting the whole group (restart {attempt}/{backoff})")
        view.state.note = f"restart {attempt}/{backoff}"
        view.update(force=True)


def run_job(
    job: AnyJob, base_dir: Path, output: OutputFormat = "human", manifest_dir: Path | None = None
) -> int:
    """Run ``job`` locally under ``base_dir/torchyard-runs``; returns the job's exit code.
    Relative paths resolve against ``base_dir`` (command arguments beside ``manifest_dir``
    first): each pod runs in a directory of its own (local_env)."""
    runs = (base_dir / RUNS_DIR).absolute()
    pvc_root = runs / "pvc"
    job = with_start_dir_paths(with_local_storage(job, runs / "models"), base_dir, manifest_dir)
    import_dirs = [d.absolute() for d in (base_dir, manifest_dir) if d is not None]
    kind, name = job.kind, job.metadata.name
    problem = precheck(job, pvc_root)
    if problem is not None:
        stderr.print(f"{kind} {name}: {problem}", markup=False, style="red")
        if output == "json":
            outcome = RunOutcome(ExitCode.CONFIG, message=problem)
            print_summary(summary(kind, name, None, pvc_root, outcome), output)
        return ExitCode.CONFIG
    run_dir = runs / name
    ckpt = checkpoint_dir(job, pvc_root)
    prepare_run_dir(job, run_dir, ckpt)
    started = time.monotonic()
    state = ProgressState(
        name,
        compression=isinstance(job, CompressionJob),
        command=job.spec.command if isinstance(job, TrainingJob) else None,
        metric=(
            job.spec.accuracy_criterion.metric if isinstance(job, CompressionJob) else "accuracy"
        ),
    )
    try:
        with progress_view(state) as view:
            outcome = run_attempts(job, run_dir, pvc_root, view, import_dirs)
    except KeyboardInterrupt:
        stderr.print(
            "interrupted: all workers stopped; the last checkpoint is kept"
            + (f" in {ckpt}" if ckpt else "")
            + " and the next run resumes from it",
            markup=False,
            style="yellow",
        )
        outcome = RunOutcome(ExitCode.INTERRUPTED, message="interrupted (SIGINT/SIGTERM)")
    outcome.wall_seconds = time.monotonic() - started
    outcome.progress = state.summary()
    plot(read_events(run_dir / "pod-0" / "progress.jsonl"), run_dir / "curves.png")
    print_summary(summary(kind, name, run_dir, pvc_root, outcome), output)
    return outcome.code


def run_manifest(
    path: Path,
    workers: int | None,
    procs_per_worker: int | None,
    output: OutputFormat = "human",
) -> int:
    """`torchyard run MANIFEST`: exit code 0 when the job succeeded, else the failing worker's.
    Progress and messages on stderr; the result on stdout (``output``: human or json)."""
    try:
        job = with_overrides(load_manifest(path), workers, procs_per_worker)
        job = with_manifest_relative_inputs(job, path)
    except (ManifestError, OSError) as exc:
        if isinstance(exc, ManifestError):
            stderr.print(f"{exc.source}: invalid manifest", markup=False, style="red")
            errors = list(exc.errors)
        else:
            errors = [f"{path}: {exc}"]
        for line in errors:
            stderr.print(f"    {line}", markup=False)
        if output == "json":
            doc = {
                "kind": None,
                "name": None,
                "phase": "Failed",
                "exitCode": ExitCode.CONFIG,
                "message": "; ".join(errors),
                "manifest": str(path),
            }
            sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return ExitCode.CONFIG
    # Ctrl-C reaches our process only (children have their own sessions); SIGTERM likewise.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return run_job(job, Path.cwd(), output, path.absolute().parent)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """``python -m torchyard.local MANIFEST [WORKERS [PROCS]] [-o human|json]`` (the CLI is
    ``torchyard run``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    output: OutputFormat = "human"
    for flag in ("-o", "--output"):
        if flag in args:
            i = args.index(flag)
            value = args[i + 1] if i + 1 < len(args) else ""
            fmt = output_format(value)
            if fmt is None:
                stderr.print(f"{flag}: one of {', '.join(OUTPUT_FORMATS)}", markup=False)
                return 2
            output = fmt
            del args[i : i + 2]
    if not args:
        stderr.print(
            "usage: python -m torchyard.local MANIFEST [WORKERS [PROCS_PER_WORKER]] [-o json]",
            markup=False,
        )
        return 2
    workers = int(args[1]) if len(args) > 1 else None
    procs = int(args[2]) if len(args) > 2 else None
    return run_manifest(Path(args[0]), workers, procs, output)


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["OUTPUT_FORMATS", "output_format", "run_job", "run_manifest"]
