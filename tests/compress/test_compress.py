"""CompressionJob runtime on digits models: every method, the accuracy gate, the report's
figures recomputed from the saved model version, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.compress.conftest import REPO, manifest, recompute, run_job

pytestmark = pytest.mark.worker


def _check_report_matches_saved_model(result: dict[str, Any], digits: Any) -> dict[str, Any]:
    """The report's compressed figures equal what the saved model version measures."""
    again = recompute(result, digits)
    comp = result["report"]["compressed"]
    assert comp["accuracy"] == pytest.approx(again["accuracy"], abs=1e-6)
    assert comp["params"] == again["params"]
    assert comp["nonZeroParams"] == again["nonZeroParams"]
    assert comp["bytes"] == again["bytes"]
    assert again["card"]["lineage"]["kind"] == "CompressionJob"
    assert again["card"]["sha256"] == result["model"]["sha256"]
    assert (again["dir"] / "report.json").is_file()
    return again


def _gate(baseline: float, value: float, tol: float) -> bool:
    return baseline - value <= tol + 1e-12


def test_dynamic_int8_search_picks_best_passing(teacher: dict, digits: Any, tmp_path: Path) -> None:
    doc = manifest(teacher, tmp_path / "store",
                   [{"quantize": {"method": "dynamicInt8", "granularity": "auto"}}],
                   objective="size")
    result = run_job(doc, tmp_path / "out")
    rep = result["report"]
    again = _check_report_matches_saved_model(result, digits)
    assert rep["baseline"]["accuracy"] == pytest.approx(teacher["accuracy"], abs=1e-6)
    assert rep["passed"] == _gate(teacher["accuracy"], again["accuracy"], 0.02)
    assert result["status"] == ("Succeeded" if rep["passed"] else "Failed")
    # both granularities were tried; the winner is the smallest passing one
    names = {t["name"] for t in result["trials"]}
    assert names == {"quantize.granularity=perTensor", "quantize.granularity=perChannel"}
    passing = [t for t in result["trials"] if t["passed"]]
    assert rep["compressed"]["bytes"] == min(t["stats"]["bytes"] for t in passing)
    # int8: at least 3.5x fewer bytes than the float file, recomputed from the files
    assert teacher["bytes"] / again["bytes"] >= 3.5
    assert "torch" in rep["backend"]
    assert rep["threads"] >= 1
    # deprecation warnings of torch.ao: explained once, never per call
    assert sum("deprecated" in w for w in rep["warnings"]) <= 1


def test_gate_fails_as_the_numbers_say_and_no_version_is_written(
    teacher: dict, tmp_path: Path
) -> None:
    doc = manifest(teacher, tmp_path / "store",
                   [{"prune": {"method": "magnitude", "sparsity": 0.98, "fineTuneEpochs": 0,
                               "candidates": [0.97]}}],
                   accuracyCriterion={"mode": "relative", "tolerableLoss": 0.0})
    result = run_job(doc, tmp_path / "out")
    rep = result["report"]
    accuracies = [t["stats"]["accuracy"] for t in result["trials"]]
    assert len(accuracies) == 2
    base = rep["baseline"]["accuracy"]
    assert all(not _gate(base, a, 0.0) for a in accuracies)  # 98 % of the weights gone, no tune
    assert rep["passed"] is False
    assert result["status"] == "Failed"
    assert result["reason"] == "AccuracyGateNotMet"
    assert result["exitCode"] == 3
    # a model that misses the gate is never written: no version, no status.model
    assert "model" not in result
    assert not list((tmp_path / "store").glob("compressed/v*"))
    # the report shows the closest candidate, and the message says by how much it missed
    best = max(accuracies)
    assert rep["compressed"]["accuracy"] == best
    assert f"accuracy {best:.4f} is {base - best:.4f} below the gate {base:.4f}" in \
        result["message"]
    assert (tmp_path / "out" / "report.json").is_file()


def test_magnitude_reaches_sparsity_and_shrinks_the_file(
    teacher: dict, digits: Any, tmp_path: Path
) -> None:
    doc = manifest(teacher, tmp_path / "store",
                   [{"prune": {"method": "magnitude", "sparsity": 0.8, "scope": "layer",
                               "iterations": 2, "fineTuneEpochs": 2}}])
    result = run_job(doc, tmp_path / "out")
    again = _check_report_matches_saved_model(result, digits)
    linears = [m for m in again["model"].modules() if m.__class__.__name__ == "Linear"]
    for lin in linears:  # layer scope: each layer at the target
        zero = float((lin.weight == 0).float().mean())
        assert zero == pytest.approx(0.8, abs=0.01)
    assert again["bytes"] < teacher["bytes"] / 2  # bit mask + values storage
    assert result["report"]["passed"] == _gate(teacher["accuracy"], again["accuracy"], 0.02)


def test_l1_threshold_zeroes_weights_under_the_threshold(
    teacher: dict, digits: Any, tmp_path: Path
) -> None:
    doc = manifest(teacher, tmp_path / "store",
                   [{"prune": {"method": "l1Threshold", "sparsity": 0.5, "threshold": 0.02,
                               "l1Lambda": 1e-4, "fineTuneEpochs": 2}}])
    result = run_job(doc, tmp_path / "out")
    again = _check_report_matches_saved_model(result, digits)
    info = again["card"]["lineage"]["steps"][0]["prune"]
    assert info["threshold"] == 0.02
    zeros = sum(int((m.weight == 0).sum()) for m in again["model"].modules()
                if m.__class__.__name__ == "Linear")
    total = sum(m.weight.numel() for m in again["model"].modules()
                if m.__class__.__name__ == "Linear")
    assert zeros / total == pytest.approx(info["sparsity"], abs=1e-6)
    assert info["sparsity"] > 0.3
    assert result["report"]["passed"] == _gate(teacher["accuracy"], again["accuracy"], 0.02)


def test_structured_removes_neurons_physically(teacher: dict, digits: Any, tmp_path: Path) -> None:
    from torchyard_trainer.compress.report import linear_macs

    doc = manifest(teacher, tmp_path / "store",
                   [{"prune": {"method": "structured", "sparsity": 0.75, "fineTuneEpochs": 3}}])
    result = run_job(doc, tmp_path / "out")
    again = _check_report_matches_saved_model(result, digits)
    model = again["model"]
    widths = [m.out_features for m in model.modules() if m.__class__.__name__ == "Linear"]
    assert widths == [32, 16, 10]  # 128 and 64 hidden units, 75 % removed; outputs kept
    base_params = sum(p.numel() for p in teacher["model"].parameters())
    assert again["params"] == sum(p.numel() for p in model.parameters())  # real, not masked
    assert base_params / again["params"] >= 3.5
    x = digits.val_x[:64]
    assert linear_macs(teacher["model"], x) / linear_macs(model, x) >= 3.5
    assert result["report"]["ratios"]["params"] >= 3.5
    assert result["report"]["passed"] == _gate(teacher["accuracy"], again["accuracy"], 0.02)


def test_binarize_weight_bytes(teacher: dict, digits: Any, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    # about the stored form, not the gate: a wide one, since only a passing model is written
    doc = manifest(teacher, tmp_path / "store",
                   [{"quantize": {"method": "binarize", "qatEpochs": 2}}],
                   accuracyCriterion={"mode": "absolute", "tolerableLoss": 0.5})
    result = run_job(doc, tmp_path / "out")
    again = _check_report_matches_saved_model(result, digits)
    stored = load_file(str(again["dir"] / "model.safetensors"))
    float_weight_bytes = sum(m.weight.numel() * 4 for m in teacher["model"].modules()
                             if m.__class__.__name__ == "Linear")
    bin_bytes = sum(t.numel() * t.element_size() for k, t in stored.items()
                    if k.endswith((".weight_bits", ".weight_scale")))
    assert float_weight_bytes / bin_bytes >= 20
    assert result["report"]["passed"] is _gate(teacher["accuracy"], again["accuracy"], 0.5)


@pytest.mark.parametrize("method", ["staticInt8", "qat"])
def test_static_and_qat_int8(method: str, teacher: dict, digits: Any, tmp_path: Path) -> None:
    doc = manifest(teacher, tmp_path / "store",
                   [{"quantize": {"method": method, "granularity": "perChannel",
                                  "calibrationSamples": 256, "qatEpochs": 1}}])
    result = run_job(doc, tmp_path / "out")
    again = _check_report_matches_saved_model(result, digits)
    assert teacher["bytes"] / again["bytes"] >= 3.5
    assert method in result["report"]["backend"]
    assert result["report"]["passed"] == _gate(teacher["accuracy"], again["accuracy"], 0.02)


def test_distill_then_quantize_chain(teacher: dict, digits: Any, tmp_path: Path) -> None:
    doc = manifest(teacher, tmp_path / "store",
                   [{"distill": {"student": {"builtin": "mlp", "args": {"hidden": [32]}},
                                 "epochs": 15}},
                    {"quantize": {"method": "dynamicInt8"}}],
                   # the chain's stored form is tested, not the gate (only a pass is written)
                   accuracyCriterion={"mode": "absolute", "tolerableLoss": 0.5})
    result = run_job(doc, tmp_path / "out")
    again = _check_report_matches_saved_model(result, digits)
    assert again["card"]["model"]["args"] == {"hidden": [32]}
    assert again["params"] == 64 * 32 + 32 + 32 * 10 + 10
    assert result["report"]["passed"] is _gate(teacher["accuracy"], again["accuracy"], 0.5)


# ---------------------------------------------------------------------------------------------
# bad input: clear errors, no model version left behind


def _no_versions(store: Path) -> bool:
    return not store.exists() or not any(p.name.startswith("v") for p in store.rglob("v*"))


@pytest.mark.parametrize(
    ("steps", "source", "message"),
    [
        ([], None, "steps"),
        ([{"prune": {"method": "magnitude", "sparsity": 1.0}}], None, "sparsity"),
        ([{"quantize": {"method": "binarize", "backend": "torch.ao"}}], None,
         "does not implement"),
        ([{"quantize": {"method": "dynamicInt8"}}], {"modelRef": {"name": "nope"}},
         "no model versions"),
        ([{"quantize": {"method": "dynamicInt8"}}], {"trainingJobRef": "never-ran"},
         "no model version"),
        ([{"quantize": {"method": "dynamicInt8"}}],
         {"model": {"builtin": "mlp", "checkpoint": "file:///nonexistent/w.safetensors"}},
         "does not exist"),
    ],
    ids=["empty-steps", "sparsity-1", "method-backend-lacking", "missing-modelref",
         "missing-trainingjob", "missing-checkpoint"],
)
def test_bad_input_fails_clearly_without_a_version(
    steps: list, source: dict | None, message: str, teacher: dict, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    doc = manifest(teacher, store, steps)
    if source is not None:
        doc["spec"]["source"] = source
    proc = _worker(doc, tmp_path / "out")
    assert proc.returncode == 2, proc.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["status"] == "Failed"
    assert message in result["message"], result["message"]
    assert _no_versions(store)


def test_weight_only_int4_where_the_platform_lacks_kernels(teacher: dict, tmp_path: Path) -> None:
    from torchyard_trainer.compress.quantize import torchao_probe

    why = torchao_probe("weightOnlyInt4")
    if why is None:
        pytest.skip("this platform has torchao int4 kernels")
    store = tmp_path / "store"
    doc = manifest(teacher, store, [{"quantize": {"method": "weightOnlyInt4",
                                                  "backend": "torchao"}}])
    proc = _worker(doc, tmp_path / "out")
    assert proc.returncode == 2
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert "not available on this platform" in result["message"]
    assert _no_versions(store)


def _worker(doc: dict[str, Any], out: Path, omp_threads: str | None = "1"
            ) -> subprocess.CompletedProcess[str]:
    out.mkdir(parents=True, exist_ok=True)
    spec = out / "spec.yaml"
    spec.write_text(yaml.safe_dump(doc))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TORCHYARD_", "PET_")) and k != "OMP_NUM_THREADS"}
    env.update(TORCHYARD_SPEC=str(spec), TORCHYARD_OUTPUT_DIR=str(out),
               PYTHONPATH=os.pathsep.join([str(REPO / "operator"), str(REPO / "trainer_image")]))
    if omp_threads is not None:
        env["OMP_NUM_THREADS"] = omp_threads
    return subprocess.run([sys.executable, "-m", "torchyard_trainer"], env=env,
                          capture_output=True, text=True, timeout=600, check=False)


def test_worker_entry_gate_failure_exits_3_keeps_the_report_writes_no_version(
    teacher: dict, tmp_path: Path
) -> None:
    doc = manifest(teacher, tmp_path / "store",
                   [{"prune": {"method": "magnitude", "sparsity": 0.99, "fineTuneEpochs": 0}}],
                   accuracyCriterion={"mode": "absolute", "tolerableLoss": 0.0})
    proc = _worker(doc, tmp_path / "out")
    assert proc.returncode == 3, proc.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["reason"] == "AccuracyGateNotMet"
    assert result["report"]["passed"] is False
    assert "below the gate" in result["message"]
    assert not list((tmp_path / "store").glob("*/v*"))  # nothing deployable was written
    assert len(json.dumps(result, separators=(",", ":"))) <= 4096  # fits a termination message
    assert (tmp_path / "out" / "report.md").read_text().count("| trial |") == 1


@pytest.mark.parametrize(
    ("builtin", "args", "expected"),
    [
        ("cnn", {"channels": [8, 16], "hidden": 32},
         {"1.0": "8->4", "2.0": "16->8", "3.1": "32->16"}),
        ("resnet", {"widths": [8, 16]}, {"2.conv1": "8->4", "3.conv1": "16->8"}),
    ],
)
def test_structured_groups_on_conv_models_round_trip(
    builtin: str, args: dict, expected: dict, digits: Any
) -> None:
    """Conv channels (through pooling, batch norm, flatten) are removed and the saved form
    rebuilds the same smaller network; residual outputs are left alone."""
    import torch

    from torchyard.api.common import ModelSpec, OptimizerSpec
    from torchyard.api.compression import PruneStep
    from torchyard_trainer.compress import prune
    from torchyard_trainer.compress.context import Context
    from torchyard_trainer.compress.stored import export_state, rebuild
    from torchyard_trainer.models import build_model

    torch.manual_seed(0)
    model = build_model(ModelSpec(builtin=builtin, args=args), digits.info)
    before = sum(p.numel() for p in model.parameters())
    ctx = Context(ds=digits, optimizer=OptimizerSpec(), batch_size=64, seed=0)
    info = prune.apply(model, PruneStep(method="structured", sparsity=0.5, fine_tune_epochs=0),
                       0.5, ctx)
    assert info["layers"] == expected
    assert sum(p.numel() for p in model.parameters()) < before
    tensors, section = export_state(model)
    again = rebuild({"builtin": builtin, "args": args}, digits.info, section, tensors)
    x = digits.val_x[:8]
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), again(x), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# search, scope, transfer set, int4, threads


@pytest.mark.parametrize("objective", ["size", "latency"])
def test_search_winner_is_the_best_passing_not_the_first(
    objective: str, teacher: dict, digits: Any, tmp_path: Path
) -> None:
    """Every candidate passes a wide gate; the winner is the best one by the objective, and for
    size that is the sparser candidate, which the search tries second."""
    doc = manifest(teacher, tmp_path / "store",
                   [{"prune": {"method": "magnitude", "sparsity": 0.3, "candidates": [0.6],
                               "fineTuneEpochs": 0}}],
                   accuracyCriterion={"mode": "absolute", "tolerableLoss": 1.0},
                   objective=objective)
    result = run_job(doc, tmp_path / "out")
    again = _check_report_matches_saved_model(result, digits)
    trials = result["trials"]
    assert [t["name"] for t in trials] == ["prune.sparsity=0.3", "prune.sparsity=0.6"]
    assert all(t["passed"] for t in trials)
    key = "bytes" if objective == "size" else "latencyMs"
    best = min(trials, key=lambda t: t["stats"][key])
    if objective == "latency":
        # The latency pick is the fastest only when clearly so in interleaved rounds, else the
        # smallest (issue 19; tests/compress/test_search_noise.py): the note says which.
        note = next(w for w in result["report"]["warnings"] if w.startswith("objective latency"))
        if "within noise: chose by size" in note:
            best = min(trials, key=lambda t: t["stats"]["bytes"])
    assert result["report"]["compressed"][key] == best["stats"][key]
    assert again["card"]["lineage"]["trial"] == best["name"]
    if objective == "size":
        assert best["name"] == "prune.sparsity=0.6"  # not the first candidate
        assert trials[1]["stats"]["bytes"] < trials[0]["stats"]["bytes"]
        assert again["nonZeroParams"] < trials[0]["stats"]["nonZeroParams"]


def test_magnitude_global_scope_one_threshold_and_permanent_masks(
    teacher: dict, digits: Any, tmp_path: Path
) -> None:
    """Global scope: one threshold over all layers (overall sparsity on target, the layers'
    sparsities differ, every pruned weight was smaller than every kept one); the saved model is
    plain (masks made permanent: no weight_orig / weight_mask)."""
    import torch
    from safetensors.torch import load_file

    doc = manifest(teacher, tmp_path / "store",
                   [{"prune": {"method": "magnitude", "sparsity": 0.8, "scope": "global",
                               "fineTuneEpochs": 0}}],
                   accuracyCriterion={"mode": "absolute", "tolerableLoss": 1.0})
    result = run_job(doc, tmp_path / "out")
    again = _check_report_matches_saved_model(result, digits)
    pruned = [m.weight for m in again["model"].modules() if m.__class__.__name__ == "Linear"]
    before = [m.weight.detach() for m in teacher["model"].modules()
              if m.__class__.__name__ == "Linear"]
    zeros = [int((w == 0).sum()) for w in pruned]
    sizes = [w.numel() for w in pruned]
    assert sum(zeros) / sum(sizes) == pytest.approx(0.8, abs=0.005)
    per_layer = [z / n for z, n in zip(zeros, sizes, strict=True)]
    assert max(per_layer) - min(per_layer) > 0.05  # a per-layer scope would give 0.8 each
    gone = torch.cat([b[w == 0].abs() for b, w in zip(before, pruned, strict=True)])
    kept = torch.cat([b[w != 0].abs() for b, w in zip(before, pruned, strict=True)])
    assert float(gone.max()) <= float(kept.min())
    stored = load_file(str(again["dir"] / "model.safetensors"))
    reparam = (".weight_orig", ".weight_mask")  # torch.nn.utils.prune's, before prune.remove
    assert not [k for k in stored if k.endswith(reparam)]
    assert not [k for k in again["model"].state_dict() if k.endswith(reparam)]


def test_distill_with_an_unlabeled_transfer_set(
    teacher: dict, digits: Any, tmp_path: Path
) -> None:
    labeled = 100
    doc = manifest(teacher, tmp_path / "store",
                   [{"distill": {"student": {"builtin": "mlp", "args": {"hidden": [32]}},
                                 "epochs": 5, "transferSet": "unlabeled"}}],
                   data={"builtin": "digits", "labeledSamples": labeled},
                   accuracyCriterion={"mode": "absolute", "tolerableLoss": 1.0})
    result = run_job(doc, tmp_path / "out")
    again = _check_report_matches_saved_model(result, digits)
    info = again["card"]["lineage"]["steps"][0]["distill"]
    assert info["transferSet"] == "unlabeled"
    assert info["labeled"] == labeled
    assert info["samples"] == len(digits.train_x)  # labeled + unlabeled = the training split
    assert again["card"]["model"]["args"] == {"hidden": [32]}
    assert result["report"]["passed"] == _gate(teacher["accuracy"], again["accuracy"], 1.0)


def test_distill_unlabeled_transfer_set_needs_unlabeled_data(
    teacher: dict, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    doc = manifest(teacher, store,
                   [{"distill": {"student": {"builtin": "mlp", "args": {"hidden": [16]}},
                                 "epochs": 1, "transferSet": "unlabeled"}}])
    proc = _worker(doc, tmp_path / "out")
    assert proc.returncode == 2, proc.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert "labeledSamples" in result["message"]
    assert _no_versions(store)


def test_weight_only_int4_runs_and_packs_two_weights_per_byte(
    teacher: dict, digits: Any, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    from torchyard_trainer.compress.quantize import resolve_backend

    backend, note = resolve_backend("weightOnlyInt4", "auto")
    doc = manifest(teacher, tmp_path / "store",
                   [{"quantize": {"method": "weightOnlyInt4"}}],
                   accuracyCriterion={"mode": "absolute", "tolerableLoss": 1.0})
    result = run_job(doc, tmp_path / "out")
    again = _check_report_matches_saved_model(result, digits)
    rep = result["report"]
    assert f"weightOnlyInt4: {backend}" in rep["backend"]
    if note is not None:  # the fallback is explained, not silent
        assert note in rep["warnings"]
    stored = load_file(str(again["dir"] / "model.safetensors"))
    linears = [m for m in teacher["model"].modules() if m.__class__.__name__ == "Linear"]
    packed = sum(t.numel() * t.element_size() for k, t in stored.items()
                 if k.endswith(".weight_int4"))
    assert packed == sum(m.out_features * ((m.in_features + 1) // 2) for m in linears)
    assert rep["passed"] == _gate(teacher["accuracy"], again["accuracy"], 1.0)


@pytest.mark.parametrize("omp", [None, "1"])
def test_worker_sets_threads_from_the_env_contract_and_reports_them(
    omp: str | None, teacher: dict, tmp_path: Path
) -> None:
    """The worker sets torch's intra-op threads (OMP_NUM_THREADS, else resources.cpu), the
    report records them, and torch.ao's deprecation warnings never reach the log unexplained."""
    cpu = (os.cpu_count() or 1) + 1  # not torch's default (the machine's cores)
    expected = cpu if omp is None else int(omp)
    doc = manifest(teacher, tmp_path / "store", [{"quantize": {"method": "dynamicInt8"}}],
                   resources={"cpu": str(cpu)})
    proc = _worker(doc, tmp_path / "out", omp_threads=omp)
    assert proc.returncode in (0, 3), proc.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["report"]["threads"] == expected
    assert f"| CPU latency p50 (ms, {expected} threads) |" in (
        tmp_path / "out" / "report.md").read_text()
    leaked = [line for line in proc.stderr.splitlines() if "Warning" in line]
    assert not leaked, leaked
    deprecations = [w for w in result["report"]["warnings"] if "deprecat" in w]
    assert len(deprecations) <= 1
    assert all("torchao is its successor" in w for w in deprecations)


def test_binarize_with_zero_qat_epochs_skips_the_fine_tune(teacher: dict, digits: Any) -> None:
    """qatEpochs: 0 is allowed for binarize (the weights binarized as they are) and rejected
    for qat (without its fine-tune qat is dynamicInt8)."""
    import copy

    import torch
    from pydantic import ValidationError

    from torchyard.api.common import OptimizerSpec
    from torchyard.api.compression import QuantizeStep
    from torchyard.api.manifest import format_validation_error
    from torchyard_trainer.compress import layers, quantize
    from torchyard_trainer.compress.context import Context

    with pytest.raises(ValidationError) as excinfo:
        QuantizeStep.model_validate({"method": "qat", "qatEpochs": 0})
    assert any(line.startswith("qatEpochs: ") for line in format_validation_error(excinfo.value))
    ctx = Context(ds=digits, optimizer=OptimizerSpec(lr=3e-3), batch_size=64, seed=0)
    source = dict(teacher["model"].named_modules())
    changed = {}
    for epochs in (0, 1):
        step = QuantizeStep.model_validate({"method": "binarize", "qatEpochs": epochs})
        model = copy.deepcopy(teacher["model"])
        info = quantize.apply(model, step, "perChannel", ctx)
        assert info.get("steEpochs") == (epochs or None)
        binary = {n: m for n, m in model.named_modules() if isinstance(m, layers.BinaryLinear)}
        assert binary
        # the binarization of the source's own weights, bit for bit, only without fine-tune
        changed[epochs] = any(
            not torch.equal(m.dequantized_weight(),
                            layers.BinaryLinear.from_float(source[n], m.backend)
                            .dequantized_weight())
            for n, m in binary.items())
    assert changed == {0: False, 1: True}
