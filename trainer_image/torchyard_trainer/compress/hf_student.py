"""Hugging Face students and structure: a student that is its teacher with fewer transformer
layers (the kept layers' weights and the embeddings copied, as DistilBERT and the MiniLM
recipes start their students), and the feed-forward pairs of transformer blocks that structured
pruning may shrink.

Works on any module that holds a transformers model (``compress/hf.py``'s adapter or a bare
``PreTrainedModel``): the transformer blocks are the ``nn.ModuleList`` whose length is
``config.num_hidden_layers`` (BERT/MiniLM ``encoder.layer``, GPT-2 ``h``, Llama ``layers``;
GPT-2's ``n_layer`` is the same attribute through its config's ``attribute_map``).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from torchyard_trainer.compress.context import Context, predict, train_epochs
from torchyard_trainer.env import ConfigError
from torchyard_trainer.kd import UNLABELED, kd_loss

if TYPE_CHECKING:
    from torchyard.api.compression import DistillStep

STUDENT_ARGS = ("numHiddenLayers", "keepLayers")
"""The student ``args`` a layer-dropped Hugging Face student understands."""

FFN_PAIRS = (("intermediate.dense", "output.dense"), ("ffn.lin1", "ffn.lin2"))
"""Feed-forward (producer, consumer) Linear pairs of a transformer block, by attribute path:
BERT/RoBERTa/MiniLM/ELECTRA, DistilBERT. Between them is only an element-wise activation, so
the hidden units can be removed from both. (GPT-2's MLP is transformers' Conv1D, not a
Linear; Llama's gated MLP has two producers: neither is covered.)"""


def keep_layers(n_layers: int, n_keep: int, keep: list[int] | None = None) -> list[int]:
    """The teacher layers a student of ``n_keep`` layers starts from: ``keep`` when given
    (checked), else spread evenly over the teacher keeping the first and the last layer
    (6 → 3: [0, 2, 5]; 12 → 4: [0, 4, 7, 11]; 1 layer: [0])."""
    if n_keep < 1 or n_keep > n_layers:
        raise ConfigError(f"distill student numHiddenLayers {n_keep}: the teacher has "
                          f"{n_layers} layers, keep between 1 and {n_layers}")
    if keep is None:
        if n_keep == 1:
            return [0]
        return [round(i * (n_layers - 1) / (n_keep - 1)) for i in range(n_keep)]
    picked = [int(i) for i in keep]
    if len(picked) != n_keep:
        raise ConfigError(f"distill student keepLayers {picked} has {len(picked)} entries, "
                          f"numHiddenLayers is {n_keep}")
    if picked != sorted(set(picked)) or picked[0] < 0 or picked[-1] >= n_layers:
        raise ConfigError(f"distill student keepLayers {picked}: give increasing, distinct "
                          f"teacher layer indices in [0, {n_layers - 1}]")
    return picked


def hf_model(module: nn.Module) -> nn.Module:
    """The outermost transformers model inside ``module`` (the one with a layered config)."""
    for m in module.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and isinstance(getattr(cfg, "num_hidden_layers", None), int):
            return m
    raise ConfigError("the model holds no transformers model with a layered config "
                      "(config.num_hidden_layers)")


def config_of(model: nn.Module) -> Any:
    """The transformers config of :func:`hf_model`'s result (typed Any: transformers is not)."""
    return getattr(model, "config", None)


def layer_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(name, list) of the transformer blocks: the ModuleList of config.num_hidden_layers
    entries (the shallowest one if several match)."""
    n = int(config_of(model).num_hidden_layers)
    found = [(name, m) for name, m in model.named_modules()
             if isinstance(m, nn.ModuleList) and len(m) == n]
    if not found:
        raise ConfigError(f"{type(model).__name__}: no list of {n} transformer layers found")
    return min(found, key=lambda f: f[0].count("."))


def _student_args(args: dict[str, Any]) -> tuple[int, list[int] | None]:
    unknown = sorted(set(args) - set(STUDENT_ARGS))
    if unknown:
        raise ConfigError(f"distill student args {unknown}: a huggingface student takes "
                          f"{list(STUDENT_ARGS)} (the teacher with fewer layers)")
    if "numHiddenLayers" not in args:
        raise ConfigError("a huggingface distill student needs args.numHiddenLayers (the "
                          "teacher with fewer transformer layers)")
    keep = args.get("keepLayers")
    return int(args["numHiddenLayers"]), None if keep is None else [int(i) for i in keep]


def drop_layers(module: nn.Module, keep: list[int]) -> None:
    """Keep only the transformer blocks ``keep`` (in place) and make the config say so, so
    that ``save_pretrained`` writes a config the weights match."""
    model = hf_model(module)
    name, blocks = layer_list(model)
    kept = nn.ModuleList([blocks[i] for i in keep])
    for new_index, block in enumerate(kept):
        for sub in block.modules():
            # attention modules index the KV cache by their layer number (GPT-2, Llama)
            if isinstance(getattr(sub, "layer_idx", None), int):
                setattr(sub, "layer_idx", new_index)  # noqa: B010  (a plain int attribute)
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], kept)
    config = config_of(model)
    config.num_hidden_layers = len(keep)
    types = getattr(config, "layer_types", None)
    if isinstance(types, list) and len(types) > max(keep):
        config.layer_types = [types[i] for i in keep]


def student_from(teacher: nn.Module, args: dict[str, Any]) -> tuple[nn.Module, list[int]]:
    """A copy of ``teacher`` with only the layers ``args`` pick: (student, kept indices).
    Everything else (embeddings, pooler, heads, a pruned layer's smaller shapes) is copied."""
    n_keep, keep = _student_args(args)
    n_layers = int(config_of(hf_model(teacher)).num_hidden_layers)
    picked = keep_layers(n_layers, n_keep, keep)
    student = copy.deepcopy(teacher)
    drop_layers(student, picked)
    conv1d = getattr(student, "conv1d", None)  # hf.HFModel: the GPT-2 Conv1D layers it names
    if isinstance(conv1d, list):
        names = {n for n, _ in student.named_modules()}
        conv1d[:] = [n for n in conv1d if f"model.{n}" in names]
    return student, picked


def ffn_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """(producer, consumer) Linear names of ``module``'s own feed-forward block, if it is a
    transformer block (see :data:`FFN_PAIRS`)."""
    out = []
    for prod, cons in FFN_PAIRS:
        try:
            p, c = module.get_submodule(prod), module.get_submodule(cons)
        except AttributeError:
            continue
        if isinstance(p, nn.Linear) and isinstance(c, nn.Linear) \
                and c.in_features == p.out_features:
            out.append((prod, cons))
    return out


# ---------------------------------------------------------------------------------------------
# distillation


def _checked_student_spec(step: DistillStep, ctx: Context) -> dict[str, Any]:
    """The student's ModelSpec (JSON): the teacher's huggingface section (same path, task,
    pooling) with the student's layer args. Refuses what this student cannot be."""
    teacher_hf = ctx.model_spec.get("huggingface")
    student_hf = step.student.huggingface
    if teacher_hf is None or student_hf is None:
        raise ConfigError(
            "distill: a huggingface model distils into a huggingface student and back only: "
            "set student.huggingface.path to the source's path with args.numHiddenLayers "
            "(the teacher with fewer transformer layers)")
    if student_hf.path != teacher_hf.get("path"):
        raise ConfigError(
            f"distill student.huggingface.path {student_hf.path!r}: the student is built from "
            f"the teacher ({teacher_hf.get('path')!r}) with fewer layers, give that path")
    if "task" in student_hf.model_fields_set and student_hf.task != teacher_hf.get("task"):
        raise ConfigError(f"distill student.huggingface.task {student_hf.task!r}: the teacher "
                          f"is {teacher_hf.get('task')!r}; a layer-dropped student keeps it")
    if ctx.group is not None:
        raise ConfigError(
            "distilling a huggingface student with spec.workers > 1 is not supported yet: set "
            "spec.workers: 1 (the student trains in one process)")
    return {"huggingface": dict(teacher_hf), "args": dict(step.student.args)}


def distill(teacher: nn.Module, step: DistillStep, ctx: Context
            ) -> tuple[nn.Module, dict[str, Any]]:
    """Train a layer-dropped copy of ``teacher`` (the current model: pruned layers stay
    pruned) to reproduce the *original* model (``ctx.original``, else ``teacher``).

    Loss by task: feature-extraction 1 − cosine(student, original embedding); logits
    (sequence-classification, causal-lm) the KD loss of ``kd.kd_loss`` (soft term, plus
    cross-entropy on labels where the data has them), causal-lm over the real tokens only.
    """
    spec = _checked_student_spec(step, ctx)
    torch.manual_seed(ctx.seed)
    student, picked = student_from(teacher, spec["args"])
    spec["args"]["keepLayers"] = picked
    original = ctx.original if ctx.original is not None else teacher
    original.eval()
    ds = ctx.ds
    x = ds.train_x
    if step.transfer_set == "unlabeled" and ds.unlabeled_x is not None:
        x = torch.cat([x, ds.unlabeled_x])
    task = str(spec["huggingface"].get("task", "feature-extraction"))
    labelled = bool(ds.extra.get("labelled")) and task == "sequence-classification"
    y = ds.train_y.long() if labelled else torch.full((len(ds.train_x),), UNLABELED)
    if len(x) > len(y):  # the unlabeled transfer samples: soft term only
        y = torch.cat([y, torch.full((len(x) - len(y),), UNLABELED, dtype=y.dtype)])
    temperature, alpha = float(step.temperature), float(step.alpha)
    # the original is frozen: its outputs are computed once (causal-lm logits, N×L×vocab,
    # would not fit: those are computed per batch)
    cached = None if task == "causal-lm" else predict(original, x, batch=64)

    def loss(model: nn.Module, bx: torch.Tensor, by: torch.Tensor) -> torch.Tensor:
        idx, target = by[:, 0], by[:, 1]
        out = model(bx)
        if cached is not None:
            ref = cached[idx]
        else:
            with torch.no_grad():
                ref = original(bx)
        if task == "feature-extraction":
            return (1.0 - F.cosine_similarity(out, ref, dim=-1)).mean()
        if task == "causal-lm":
            real = bx[:, 1] > 0  # padding positions carry no next-token distribution
            return kd_loss(out[real], ref[real], None, temperature, 1.0)
        return kd_loss(out, ref, target if labelled else None, temperature,
                       alpha if labelled else 1.0)

    packed = torch.stack([torch.arange(len(x)), y], dim=1)
    train_epochs(student, ctx, step.epochs, loss_override=loss, tensors=(x, packed))
    ctx.backends["distill"] = "torchyard (single process; huggingface student: teacher layers "
    ctx.backends["distill"] += f"{picked} copied)"
    ctx.model_spec = spec
    n_layers = int(config_of(hf_model(teacher)).num_hidden_layers)
    info: dict[str, Any] = {
        "student": spec, "teacherLayers": n_layers, "keepLayers": picked,
        "loss": "1 - cosine" if task == "feature-extraction" else "kd",
        "transferSet": step.transfer_set, "epochs": step.epochs, "samples": len(x),
        "labeled": int((y >= 0).sum()),
    }
    if task != "feature-extraction":  # temperature and alpha shape the KD loss only
        info.update(temperature=temperature, alpha=alpha if labelled else 1.0)
    return student.eval(), info
