"""The CompressionJob worker: resolve the source model, run the accuracy-aware search over the
steps, save the winner as a new model version with lineage, write the report and the result.

Result JSON (``$TORCHYARD_RESULT_FILE``; compact, it doubles as the pod's termination message):

    {"status": "Succeeded" | "Failed", "kind": "CompressionJob", "job": name,
     "reason": "AccuracyGateNotMet" (Failed only), "message": "...", "exitCode": 0 | 3,
     "model": {name, version, uri, sha256, metrics},       # status.model (Succeeded only)
     "report": {baseline, compressed, ratios, metric, accuracyDelta, summary, passed,
                backend, threads, warnings},                 # status.report (CompressionReport)
     "trials": [{name, params, stats, passed}, ...],         # status.trials (Trial)
     "metrics": {accuracy: ...}, "compressSeconds": s, "reportFile": path}

Exit codes: 0 succeeded; 2 invalid spec (nothing written); 3 no candidate passed the gate (no
model version is written — a model that misses the gate must not be deployable by accident; the
report with every trial is, and the message says by how much the closest candidate missed; the
job fails permanently).
With several workers the other ranks exit with rank 0's code once it has finished.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from torchyard.api.contract import ExitCode
from torchyard_trainer.artifacts import (
    find_by_job,
    load_weights,
    resolve_version_dir,
    spec_hash,
    write_model_version,
    write_result,
)
from torchyard_trainer.compress import distill, hfsource, layers, quantize, timing
from torchyard_trainer.compress.context import Context
from torchyard_trainer.compress.distributed import CompressionWorld, check_world, start
from torchyard_trainer.compress.fidelity import (
    is_fidelity,
    miss_message,
    reference_outputs,
    shortfall,
    summary,
)
from torchyard_trainer.compress.report import latency_batch, measure, ratios, table
from torchyard_trainer.compress.report import versions as lib_versions
from torchyard_trainer.compress.search import TrialResult, candidates, run_search, settle_latency
from torchyard_trainer.compress.stored import export_state, hf_files, load_version, rebuild
from torchyard_trainer.data import Dataset, load_dataset
from torchyard_trainer.env import ConfigError, WorkerEnv
from torchyard_trainer.hf import HFModel
from torchyard_trainer.metrics import ProgressLog
from torchyard_trainer.models import build_model
from torchyard_trainer.runtime import exit_code_for, use_cpu_threads
from torchyard_trainer.storage import atomic_write_text, fetch, is_remote, local_path

if TYPE_CHECKING:
    from torchyard.api.compression import CompressionJob, CompressionJobSpec

log = logging.getLogger("torchyard_trainer.compress")

RESULT_LIMIT = 3800  # bytes: the termination message Kubernetes keeps is 4 KiB

TORCH_AO_WARNING = (
    "torch.ao.quantization is deprecated upstream (torchao is its successor); torchyard still "
    "runs int8 on CPU with torch.ao's fbgemm/x86 kernels because they are the fastest there "
    "(see docs/benchmarks-compression.md). Captured {n} deprecation warning(s): {first}"
)


# ---------------------------------------------------------------------------------------------
# validation and source


def preflight(spec: CompressionJobSpec) -> None:
    """Everything that can be checked before any work: bad input fails here, nothing is written."""
    if not spec.steps:
        raise ConfigError("spec.steps is empty: give at least one prune, distill or quantize step")
    seen_quantize = False
    for i, step in enumerate(spec.steps):
        chosen = [k for k in ("prune", "distill", "quantize") if getattr(step, k) is not None]
        if len(chosen) != 1:
            raise ConfigError(f"spec.steps[{i}]: set exactly one of prune, distill or quantize")
        if step.prune is not None:
            for s in [step.prune.sparsity, *step.prune.candidates]:
                if not 0.0 <= float(s) < 1.0:
                    raise ConfigError(f"spec.steps[{i}].prune: sparsity {s} must be in [0, 1)")
            if seen_quantize:
                raise ConfigError(f"spec.steps[{i}]: prune after quantize is not supported")
        if step.distill is not None and seen_quantize:
            raise ConfigError(f"spec.steps[{i}]: distill after quantize is not supported")
        if step.quantize is not None:
            if seen_quantize:
                raise ConfigError(f"spec.steps[{i}]: only one quantize step per job")
            seen_quantize = True
            quantize.resolve_backend(step.quantize.method, step.quantize.backend)


def store_uri(spec: CompressionJobSpec, env: WorkerEnv) -> str:
    return str(spec.output.storage or f"file://{env.output_dir / 'models'}")


def _local_store(uri: str, env: WorkerEnv) -> Path:
    if is_remote(uri):
        raise ConfigError(f"{uri}: looking up model versions needs a file:// or pvc:// store")
    return local_path(uri, env.pvc_root)


def resolve_source(spec: CompressionJobSpec, env: WorkerEnv, ds: Dataset
                   ) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """(model, its model spec as JSON, lineage of the source)."""
    src = spec.source
    if src.model is not None:
        if not src.model.checkpoint:
            raise ConfigError("source.model needs checkpoint (the weights to compress)")
        path = fetch(src.model.checkpoint, env.pvc_root, env.output_dir / "cache")
        model_spec = src.model.model_dump(by_alias=True, exclude_none=True, mode="json")
        if path.is_dir() and (path / "model-card.json").is_file():
            model, card = load_version(path, ds.info)
            return model, card["model"], {"checkpoint": src.model.checkpoint,
                                          "sha256": card.get("sha256")}
        model = build_model(src.model, ds.info)
        load_weights(path, model)
        model_spec.pop("checkpoint", None)
        return model, model_spec, {"checkpoint": src.model.checkpoint}
    if src.model_ref is not None:
        store = _local_store(src.model_ref.storage or store_uri(spec, env), env)
        vdir = resolve_version_dir(store, src.model_ref.name, src.model_ref.version)
    else:
        store = _local_store(store_uri(spec, env), env)
        found = find_by_job(store, str(src.training_job_ref))
        if found is None:
            raise ConfigError(
                f"source.trainingJobRef {src.training_job_ref!r}: that TrainingJob has produced "
                f"no model version in {store} yet"
            )
        vdir = found
    model, card = load_version(vdir, ds.info)
    lineage = {k: card.get(k) for k in ("name", "version", "uri", "sha256")}
    if src.training_job_ref:
        lineage["trainingJob"] = src.training_job_ref
    return model, dict(card["model"]), lineage


# ---------------------------------------------------------------------------------------------
# the job


def load_source(spec: CompressionJobSpec, env: WorkerEnv) -> hfsource.Source:
    """The data and the model to compress (a Hugging Face model brings its tokenizer, which
    the text data needs, so it is loaded first)."""
    ref = spec.source.model_ref
    if hfsource.is_hf(spec):
        src = hfsource.load(spec, env)
    elif spec.data.format in ("jsonl", "text") or spec.data.text_column is not None:
        if ref is None:
            raise ConfigError("text data is tokenized by a model's tokenizer: it needs "
                              "source.model.huggingface or a modelRef to a Hugging Face version")
        store = _local_store(ref.storage or store_uri(spec, env), env)
        src = hfsource.load_version(spec, env, resolve_version_dir(store, ref.name, ref.version))
    else:
        ds = load_dataset(spec.data, spec.seed, env.pvc_root, env.output_dir / "cache")
        model, model_spec, lineage = resolve_source(spec, env, ds)
        kind = "lm" if ds.info.task == "lm" else "classification"
        src = hfsource.Source(ds, model, model_spec, lineage, output_kind=kind)
    if len(src.ds.val_x) == 0:
        raise ConfigError("the accuracy gate needs held-out data: data.validationFraction > 0")
    return src


def _threads() -> int:
    return int(torch.get_num_threads())


def _compact(result: dict[str, Any]) -> dict[str, Any]:
    """Fit the result into the termination message: trim trial details, then warnings."""
    def size(r: dict[str, Any]) -> int:
        return len(json.dumps(r, separators=(",", ":")))

    if size(result) <= RESULT_LIMIT:
        return result
    out = dict(result)
    out["trials"] = [{"name": t["name"], "passed": t["passed"],
                      "stats": {k: t["stats"].get(k) for k in ("accuracy", "bytes")}}
                     for t in result.get("trials", [])]
    if size(out) > RESULT_LIMIT:
        rep = dict(out["report"])
        rep["warnings"] = [w[:200] for w in rep.get("warnings", [])][:3]
        out["report"] = rep
    while size(out) > RESULT_LIMIT and out["trials"]:
        out["trials"] = out["trials"][:-1]
    return out


@dataclass
class Outcome:
    """What the search decided."""

    winner: TrialResult
    """The best passing candidate (or, when none passed, the one closest to the gate)."""
    trials: list[TrialResult]
    """Every candidate, in the order tried."""
    warnings: list[str]
    """The search's own warnings (e.g. maxTrials cut it short)."""
    seconds: float
    """Wall time of the search."""


def _search(source: nn.Module, spec: CompressionJobSpec, ctx: Context, baseline: dict[str, Any],
            n_threads: int, progress: ProgressLog) -> Outcome:
    """The accuracy-aware search; progress events: one trial = one step."""
    n_cands = len(candidates(list(spec.steps), spec.accuracy_criterion.max_trials)[0])
    progress.event("start", totalSteps=n_cands, epochs=1, stepsPerEpoch=n_cands, startStep=0,
                   kind="CompressionJob", baseline=baseline)
    progress.event("eval", epoch=0, step=0, accuracy=baseline["accuracy"])

    def on_trial(i: int, n: int, res: TrialResult) -> None:
        progress.event("step", epoch=0, step=i, totalSteps=n, trial=res.candidate.name,
                       passed=res.passed)
        progress.event("eval", epoch=0, step=i, accuracy=res.stats["accuracy"])

    t_search = time.perf_counter()
    winner, trials, warnings = run_search(
        source, list(spec.steps), ctx, spec.accuracy_criterion, spec.objective,
        baseline["accuracy"], n_threads, on_trial,
    )
    # --- objective latency (issue 19): the one-shot pick re-timed interleaved beside the
    # source; the baseline's latency becomes that like-for-like figure (see search.py) ---
    if spec.objective == "latency":
        settled = settle_latency(source, trials, winner, ctx, n_threads)
        winner, baseline["latencyMs"] = settled.winner, settled.baseline_ms
        warnings = [*warnings, *settled.notes]
    # --- end objective latency ---
    elif winner.passed:
        _speed_like_for_like(source, winner, baseline, ctx, n_threads)
    if not winner.passed:  # the report shows the candidate closest to the gate, either direction
        winner = min(trials, key=lambda t: shortfall(baseline["accuracy"], t.stats["accuracy"],
                                                     spec.accuracy_criterion))
    return Outcome(winner, trials, warnings, time.perf_counter() - t_search)


def _speed_like_for_like(source: nn.Module, winner: TrialResult, baseline: dict[str, Any],
                         ctx: Context, n_threads: int) -> None:
    """The speed figure of ``objective: size``: the winner timed beside the source in a few
    interleaved rounds (compress/timing.py), not minutes apart under whatever load each saw
    (on a shared machine a one-shot pair once read 0.45× for a model 1.7× faster)."""
    if baseline.get("latencyMs") is None or winner.stats.get("latencyMs") is None:
        return
    rounds = timing.interleaved([source, winner.model], latency_batch(ctx), n_threads,
                                rounds=5, per_slot=3)
    baseline["latencyMs"] = round(statistics.median(rounds[0]), 4)
    winner.stats["latencyMs"] = round(statistics.median(rounds[1]), 4)


def _report(outcome: Outcome, ctx: Context, baseline: dict[str, Any], n_threads: int
            ) -> dict[str, Any]:
    """status.report: baseline vs the winner, ratios, backends and warnings."""
    winner, compressed = outcome.winner, outcome.winner.stats
    warnings_ = list(outcome.warnings) + list(dict.fromkeys(ctx.notes))
    captured = layers.drain_warnings()
    if captured:
        first = next(iter(captured))
        warnings_.append(TORCH_AO_WARNING.format(n=sum(captured.values()), first=first))
    if not winner.passed:
        warnings_.append("no candidate passed the gate: no model version was written")
    backend = "; ".join(f"{k}: {v}" for k, v in winner.backends.items())
    rat = ratios(baseline, compressed)
    return {
        "baseline": baseline, "compressed": compressed, "ratios": rat, "metric": ctx.metric,
        "accuracyDelta": round(compressed["accuracy"] - baseline["accuracy"], 6),
        "summary": summary(baseline, compressed, rat, ctx.metric, ctx.percentile, n_threads),
        "passed": winner.passed, "backend": f"{backend} ({lib_versions()})", "threads": n_threads,
        "warnings": warnings_,
    }


def _save_version(
    job: CompressionJob,
    env: WorkerEnv,
    ds: Dataset,
    ctx: Context,
    winner: TrialResult,
    report: dict[str, Any],
    source_lineage: dict[str, Any],
) -> dict[str, Any]:
    """The winner as a new model version (a Hugging Face model with its tokenizer)."""
    spec = job.spec
    tensors, section = export_state(winner.model)
    extra = (hf_files(winner.model, section, ctx.tokenizer)
             if isinstance(winner.model, HFModel) else None)
    spec_dict = spec.model_dump(by_alias=True, exclude_none=True, mode="json")
    card = {
        "specHash": spec_hash(spec_dict),
        "model": winner.model_spec,
        "data": {**spec_dict["data"], **ds.extra},
        "metrics": {ctx.metric: winner.stats["accuracy"]},
        "compression": section,
        "report": report,
        "lineage": {
            "job": job.metadata.name, "namespace": env.namespace or job.metadata.namespace,
            "kind": "CompressionJob", "source": source_lineage, "steps": winner.steps,
            "trial": winner.candidate.name, "accuracyCriterion":
            spec_dict.get("accuracyCriterion"), "objective": spec.objective,
        },
    }
    name = spec.output.model_name or job.metadata.name
    return write_model_version(store_uri(spec, env), env.pvc_root, name, tensors, card,
                               env.output_dir, extra)


def _write_reports(env: WorkerEnv, report: dict[str, Any], outcome: Outcome, ctx: Context,
                   written: dict[str, Any] | None) -> None:
    """report.json / report.md in the output directory and beside a local model version."""
    full = {**report, "metric": ctx.metric, "percentile": ctx.percentile,
            "trials": [t.to_trial() for t in outcome.trials],
            "compressSeconds": round(outcome.seconds, 3),
            "model": None if written is None else
            {k: written[k] for k in ("name", "version", "uri", "sha256")},
            "steps": outcome.winner.steps}
    text = json.dumps(full, indent=2, sort_keys=True) + "\n"
    human = table(full)
    env.output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(env.output_dir / "report.json", text)
    atomic_write_text(env.output_dir / "report.md", human)
    if written is not None and not is_remote(written["uri"]):
        vdir = local_path(written["uri"], env.pvc_root)
        atomic_write_text(vdir / "report.json", text)
        atomic_write_text(vdir / "report.md", human)
    log.info("compression report:\n%s", human)


def _result(
    job: CompressionJob,
    env: WorkerEnv,
    outcome: Outcome,
    report: dict[str, Any],
    metric: str,
    written: dict[str, Any] | None,
    started: float,
) -> dict[str, Any]:
    """The result file's content (before :func:`_compact`)."""
    winner, compressed = outcome.winner, outcome.winner.stats
    metrics = {metric: compressed["accuracy"]}
    result: dict[str, Any] = {
        "status": "Succeeded" if winner.passed else "Failed", "kind": "CompressionJob",
        "job": job.metadata.name,
        "exitCode": 0 if winner.passed else ExitCode.GATE,
        "metrics": metrics, "report": report, "trials": [t.to_trial() for t in outcome.trials],
        "compressSeconds": round(outcome.seconds, 3),
        "durationSeconds": round(time.perf_counter() - started, 3),
        "reportFile": str(env.output_dir / "report.json"),
    }
    if written is not None:
        model_status = {k: written[k] for k in ("name", "version", "uri", "sha256")}
        result["model"] = {**model_status, "metrics": metrics}
    if not winner.passed:
        result["reason"] = "AccuracyGateNotMet"
        result["retryable"] = False
        crit = job.spec.accuracy_criterion
        result["message"] = (
            f"no candidate passed the gate: the closest, {winner.candidate.name}, has "
            f"{miss_message(report['baseline']['accuracy'], compressed['accuracy'], crit)}; "
            f"no model version was written (report: {result['reportFile']})"
        )
    return result


def run(
    job: CompressionJob, env: WorkerEnv, group: CompressionWorld | None = None
) -> dict[str, Any]:
    """Run a validated CompressionJob; returns the result (also written to the result file).
    With ``group`` (rank 0 of several workers) the distill steps run data-parallel."""
    started = time.perf_counter()
    spec = job.spec
    preflight(spec)
    layers.drain_warnings()
    torch.manual_seed(spec.seed)
    src = load_source(spec, env)
    ds, source = src.ds, src.model.eval()
    ctx = Context(ds=ds, optimizer=spec.optimizer, batch_size=spec.batch_size, seed=spec.seed,
                  metric=spec.accuracy_criterion.metric, model_spec=src.model_spec, group=group,
                  output_kind=src.output_kind, percentile=spec.accuracy_criterion.percentile,
                  tokenizer=src.tokenizer)
    if is_fidelity(ctx.metric):  # the original's outputs: once, before any step touches it
        ctx.reference = reference_outputs(source, ctx)
    n_threads = _threads()
    baseline = measure(source, ctx, n_threads)
    with ProgressLog(env.output_dir / "progress.jsonl" if env.rank == 0 else None) as progress:
        outcome = _search(source, spec, ctx, baseline, n_threads, progress)
        report = _report(outcome, ctx, baseline, n_threads)
        written = (_save_version(job, env, ds, ctx, outcome.winner, report, src.lineage)
                   if outcome.winner.passed else None)
        _write_reports(env, report, outcome, ctx, written)
        result = _result(job, env, outcome, report, ctx.metric, written, started)
        progress.event("end", status=result["status"], model=result.get("model"), report=report)
    result = _compact(result)
    if env.rank == 0:
        write_result(env.result_file, result)
    return result


def run_job(env: WorkerEnv, job: CompressionJob) -> dict[str, Any]:
    """Entry of ``python -m torchyard_trainer`` for a CompressionJob manifest.

    A failed accuracy gate is not an error of the worker: the result (report, trials, saved
    best candidate) is already written, so the process ends with exit code 3 (permanent) by
    ``SystemExit`` — which the generic error handler of ``__main__`` does not catch and
    therefore does not overwrite the result with a bare failure record.

    With WORLD_SIZE > 1 (``spec.workers``, distill steps only) the ranks join a process group:
    rank 0 runs the job, the others take part in each distillation fine-tune and then exit
    with rank 0's exit code (see distributed.py).
    """
    check_world(job.spec, env.world_size)
    # The worker owns its process: intra-op threads as a TrainingJob's worker sets them
    # (OMP_NUM_THREADS if set, else the pod's CPU request, else the machine's cores) — torch's
    # default is every core of the node, oversubscribing a pod with a CPU request. In-process
    # callers of ``run`` (tests, bench/) keep their own setting. The report records the count.
    n_threads = use_cpu_threads(job.spec.resources.cpu, 1)
    log.info("compression worker: %d CPU thread(s)", n_threads)
    if env.world_size > 1:
        return _run_distributed(env, job)
    result = run(job, env)
    if result["status"] != "Succeeded":
        log.error("%s", result.get("message"))
        raise SystemExit(ExitCode.GATE)
    return result


def _run_distributed(env: WorkerEnv, job: CompressionJob) -> dict[str, Any]:
    """Rank 0 runs the job and then tells the others its exit code; the others follow its
    distillation commands until then. Only rank 0 ever writes a model version or a result."""
    preflight(job.spec)  # fails every rank alike, before any rendezvous
    group = start(env, job.spec)
    if env.rank != 0:
        code = _follow(job, env, group)
        if code != 0:
            log.error("rank %d: rank 0 failed (exit code %d)", env.rank, code)
            raise SystemExit(code)
        log.info("rank %d: rank 0 saved the model version; done", env.rank)
        return {}
    code = ExitCode.ERROR
    try:
        result = run(job, env, group)
        code = 0 if result["status"] == "Succeeded" else ExitCode.GATE
    except BaseException as exc:
        code = exit_code_for(exc)
        raise
    finally:
        try:
            group.send(("done", code))
            if code == 0:
                group.ack()  # every rank heard it before rank 0 (and its store) goes away
        except Exception as exc:  # a peer gone or hung: rank 0's own outcome stands
            log.warning("could not tell the other ranks the outcome (%s)", exc)
    if code != 0:
        log.error("%s", result.get("message"))
        raise SystemExit(code)
    return result


def _follow(job: CompressionJob, env: WorkerEnv, group: CompressionWorld) -> int:
    """Ranks > 0: load the data, then run every distillation rank 0 asks for; returns rank 0's
    exit code. Nothing is evaluated or written here."""
    from torchyard.api.compression import DistillStep

    spec = job.spec
    ds = load_dataset(spec.data, spec.seed, env.pvc_root, env.output_dir / "cache")
    ctx = Context(ds=ds, optimizer=spec.optimizer, batch_size=spec.batch_size, seed=spec.seed,
                  metric=spec.accuracy_criterion.metric, group=group)
    while True:
        message = group.receive()
        if message[0] == "done":
            if message[1] == 0:
                group.ack()
            return int(message[1])
        _, step, model_spec, tensors, section = message
        teacher = rebuild(model_spec, ds.info, section, tensors)
        ctx.model_spec = dict(model_spec)
        distill.apply(teacher, DistillStep.model_validate(step), ctx)
