"""Text data for Hugging Face models: jsonl / csv / parquet rows with a text column (optional
pair and label columns) or plain text (one sample per line), tokenized by the model's own
tokenizer into the input form of :class:`torchyard_trainer.hf.HFModel` — one int64 tensor
``(N, C, L)``: input_ids, attention_mask[, token_type_ids]; padded to the longest sample,
truncated at ``data.maxLength``. Split like every other source (:func:`data.load_dataset`'s
seeded, stratified hold-out).

Targets ``y`` by task: class ids (sequence-classification with a label column); next-token
ids (causal-lm: ``y[:, t] = input_ids[:, t + 1]``, -100 on padding and the last position, the
index ``cross_entropy`` ignores); zeros when there are no labels (fidelity gates and
distillation compare against the original model's outputs, not labels).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from torchyard_trainer.data import (
    DataInfo,
    Dataset,
    _labels_to_int,
    _split_validation,
    _withhold_labels,
)
from torchyard_trainer.env import ConfigError
from torchyard_trainer.storage import fetch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from torchyard.api.common import DataSpec

IGNORE_INDEX = -100
"""Target of positions that have no next token (padding, the last one): F.cross_entropy's
default ignore_index."""


def _rows(path: Path, fmt: str, src: str) -> list[dict[str, Any]]:
    """The records of a jsonl / csv / parquet file."""
    if fmt == "jsonl":
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{src}:{i}: not a JSON object: {exc}") from exc
            if not isinstance(rec, dict):
                raise ConfigError(f"{src}:{i}: each line must be one JSON object")
            rows.append(rec)
        return rows
    if fmt == "csv":
        with path.open(newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    if fmt == "parquet":
        try:
            import pyarrow.parquet as pq  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            raise ConfigError("format parquet needs pyarrow in the worker image") from exc
        return list(pq.read_table(path).to_pylist())
    raise ConfigError(f"data.format {fmt!r} is not text data (jsonl, csv, parquet or text)")


def read_texts(spec: DataSpec, path: Path
               ) -> tuple[list[str], list[str] | None, np.ndarray | None]:
    """(texts, second texts of pairs or None, raw labels or None) of the file at ``path``."""
    src = spec.uri or str(path)
    if spec.format == "text":
        texts = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
        return [t for t in texts if t], None, None
    column = spec.text_column or "text"
    rows = _rows(path, str(spec.format), src)
    if not rows:
        raise ConfigError(f"{src}: no rows")

    def col(name: str) -> list[Any]:
        missing = sum(name not in r for r in rows)
        if missing:
            raise ConfigError(f"{src}: {missing} of {len(rows)} rows lack the column {name!r} "
                              f"(columns: {sorted(rows[0])})")
        return [r[name] for r in rows]

    texts = [str(t) for t in col(column)]
    pairs = [str(t) for t in col(spec.text_pair_column)] if spec.text_pair_column else None
    # labels are optional for text: used only when every row has one
    labels = None
    if all(spec.label_column in r and r[spec.label_column] is not None for r in rows):
        labels = np.asarray(col(spec.label_column))
    return texts, pairs, labels


def tokenize(tokenizer: PreTrainedTokenizerBase, texts: list[str], pairs: list[str] | None,
             max_length: int, with_types: bool = True) -> torch.Tensor:
    """``(N, C, L)`` int64: input_ids, attention_mask[, token_type_ids] (C = 3 only when the
    tokenizer produces token types and ``with_types``)."""
    enc = tokenizer(texts, pairs, padding="longest", truncation=True, max_length=max_length,
                    return_tensors="pt")
    rows = [enc["input_ids"], enc["attention_mask"]]
    if with_types and "token_type_ids" in enc:
        rows.append(enc["token_type_ids"])
    return torch.stack([r.to(torch.int64) for r in rows], dim=1)


def next_token_targets(x: torch.Tensor) -> torch.Tensor:
    """Causal-LM targets of ``x`` (N, C, L): the next token, IGNORE_INDEX where there is none."""
    ids, mask = x[:, 0], x[:, 1]
    y = torch.full_like(ids, IGNORE_INDEX)
    y[:, :-1] = torch.where(mask[:, 1:] > 0, ids[:, 1:], IGNORE_INDEX)
    return y


def load_text_dataset(spec: DataSpec, seed: int, pvc_root: Path, cache_dir: Path,
                      tokenizer: PreTrainedTokenizerBase, task: str) -> Dataset:
    """Read, tokenize and split the text data of ``spec`` for a model of ``task``."""
    if spec.builtin is not None or not spec.uri:
        raise ConfigError("a huggingface model needs text data: data.uri with format jsonl, "
                          "csv, parquet or text")
    path = fetch(spec.uri, pvc_root, cache_dir / "data")
    texts, pairs, raw = read_texts(spec, path)
    if len(texts) < 2:
        raise ConfigError(f"{spec.uri}: {len(texts)} text(s): too few to hold any out")
    x = tokenize(tokenizer, texts, pairs, spec.max_length, with_types=task != "causal-lm")
    extra: dict[str, Any] = {"uri": spec.uri, "texts": len(texts), "tokens": int(x.shape[-1]),
                             "labelled": False}
    n_classes = 1
    if task == "causal-lm":
        y = next_token_targets(x)
        n_classes = len(tokenizer)
        stratify = None
    elif raw is not None:
        labels, names = _labels_to_int(raw)
        if names:
            extra["classes"] = names
        y = torch.from_numpy(labels)
        n_classes = int(labels.max()) + 1
        extra["labelled"] = True
        stratify = labels
    else:
        y = torch.zeros(len(texts), dtype=torch.int64)
        stratify = None
    try:
        idx_train, idx_val = _split_validation(len(x), spec.validation_fraction, seed, stratify)
    except ValueError:  # a class too small to stratify: a plain seeded split
        idx_train, idx_val = _split_validation(len(x), spec.validation_fraction, seed, None)
    unlabeled = None
    if spec.labeled_samples is not None and spec.labeled_samples < len(idx_train):
        strat = stratify[idx_train] if stratify is not None else None
        idx_train, idx_unl = _withhold_labels(idx_train, spec.labeled_samples, seed, strat)
        unlabeled = x[torch.from_numpy(idx_unl)]
    info = DataInfo("lm" if task == "causal-lm" else "classification", tuple(x.shape[1:]),
                    n_classes, seq_len=int(x.shape[-1]) if task == "causal-lm" else None,
                    name=f"{spec.uri} ({spec.format}, {len(texts)} texts)")
    extra.update({"source": info.name, "train": len(idx_train), "validation": len(idx_val),
                  "unlabeled": 0 if unlabeled is None else len(unlabeled)})
    tr, va = torch.from_numpy(idx_train), torch.from_numpy(idx_val)
    return Dataset(train_x=x[tr], train_y=y[tr], val_x=x[va], val_y=y[va], info=info,
                   unlabeled_x=unlabeled, extra=extra)


__all__ = ["IGNORE_INDEX", "load_text_dataset", "next_token_targets", "read_texts", "tokenize"]
