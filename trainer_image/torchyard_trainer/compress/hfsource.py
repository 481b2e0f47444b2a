"""The source of a CompressionJob on a Hugging Face model (``source.model.huggingface``): the
model and its tokenizer from the path, and the text data tokenized by that tokenizer — the
tokenizer comes first, so the data can be read only once the model directory is known."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from torchyard_trainer.data import Dataset
from torchyard_trainer.env import ConfigError, WorkerEnv
from torchyard_trainer.hf import HFModel, from_spec
from torchyard_trainer.textdata import load_text_dataset

if TYPE_CHECKING:
    from torchyard.api.compression import CompressionJobSpec

# How fidelity.scores reads each task's outputs.
OUTPUT_KINDS = {"feature-extraction": "embedding", "sequence-classification": "classification",
                "causal-lm": "lm"}


@dataclass
class Source:
    """What the job compresses and what it measures it on."""

    ds: Dataset
    model: nn.Module
    model_spec: dict[str, Any]
    lineage: dict[str, Any]
    tokenizer: Any = None
    output_kind: str = "classification"


def is_hf(spec: CompressionJobSpec) -> bool:
    return spec.source.model is not None and spec.source.model.huggingface is not None


def load(spec: CompressionJobSpec, env: WorkerEnv) -> Source:
    """Model, tokenizer and tokenized data of a ``source.model.huggingface`` job."""
    model_spec_obj = spec.source.model
    assert model_spec_obj is not None, "is_hf(spec) holds"
    hf_spec = model_spec_obj.huggingface
    assert hf_spec is not None, "is_hf(spec) holds"
    model, tokenizer, root = from_spec(hf_spec, env.pvc_root, env.output_dir / "cache")
    ds = load_text_dataset(spec.data, spec.seed, env.pvc_root, env.output_dir / "cache",
                           tokenizer, hf_spec.task)
    _check_labels(spec, ds, model)
    model_spec = model_spec_obj.model_dump(by_alias=True, exclude_none=True, mode="json")
    lineage = {"huggingface": hf_spec.path, "directory": str(root)}
    return Source(ds, model, model_spec, lineage, tokenizer, OUTPUT_KINDS[hf_spec.task])


def load_version(spec: CompressionJobSpec, env: WorkerEnv, vdir: Path) -> Source:
    """A Hugging Face model version (``source.modelRef``: compress a distilled or pruned
    version further) with the tokenizer saved beside it, and the text data it tokenizes."""
    from torchyard_trainer.artifacts import read_card
    from torchyard_trainer.compress.stored import load_hf_version

    card = read_card(vdir)
    if "huggingface" not in (card.get("compression") or {}):
        raise ConfigError(f"source.modelRef: {vdir} is not a Hugging Face model version, so it "
                          "has no tokenizer for the text data")
    model, tokenizer = load_hf_version(vdir)
    ds = load_text_dataset(spec.data, spec.seed, env.pvc_root, env.output_dir / "cache",
                           tokenizer, model.task)
    _check_labels(spec, ds, model)
    lineage = {k: card.get(k) for k in ("name", "version", "uri", "sha256")}
    return Source(ds, model, dict(card["model"]), lineage, tokenizer, OUTPUT_KINDS[model.task])


def _check_labels(spec: CompressionJobSpec, ds: Dataset, model: HFModel) -> None:
    """Labelled gates need labels that fit the model's head."""
    metric = spec.accuracy_criterion.metric
    if metric not in ("accuracy", "f1"):
        return
    if model.task != "sequence-classification":
        raise ConfigError(f"accuracyCriterion.metric {metric} needs a sequence-classification "
                          f"model; a {model.task} model is gated on fidelity (cosine, "
                          "top1Agreement, perplexity, kl)")
    if not ds.extra.get("labelled"):
        raise ConfigError(f"accuracyCriterion.metric {metric} needs labels: data.labelColumn "
                          f"{spec.data.label_column!r} is missing from the rows")
    num_labels = int(getattr(model.model.config, "num_labels", 0))
    if ds.info.num_classes > num_labels:
        raise ConfigError(f"the data has {ds.info.num_classes} classes, the model's head "
                          f"{num_labels}")


__all__ = ["OUTPUT_KINDS", "Source", "is_hf", "load", "load_version"]
