"""Data sources: builtin scikit-learn sets (real data, no download), synthetic tokens/images and
user data by URI (npz, csv, parquet, imagefolder), split deterministically and served to the
data-parallel ranks with a DistributedSampler.

Everything is held in memory as tensors: a batch is one index operation, so the data path adds
next to nothing to a step (the overhead benchmark measures exactly that).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch.utils.data.distributed import DistributedSampler

from torchyard_trainer.env import ConfigError
from torchyard_trainer.storage import fetch

if TYPE_CHECKING:
    from torchyard.api.common import DataSpec

Task = Literal["classification", "lm"]


def snake_args(args: dict[str, Any]) -> dict[str, Any]:
    """Manifest args may be camelCase (Kubernetes style) or snake_case: normalise to snake."""
    return {re.sub(r"(?<!^)(?=[A-Z])", "_", k).lower(): v for k, v in args.items()}


@dataclass
class DataInfo:
    """What a model needs to know about the data."""

    task: Task
    """classification (one label per sample) or lm (next-token prediction)."""
    input_shape: tuple[int, ...]
    """Shape of one input sample."""
    num_classes: int
    """Classes (classification) or vocabulary size (lm)."""
    image_shape: tuple[int, int, int] | None = None
    """(C, H, W) when the samples are images (possibly stored flat, like digits)."""
    seq_len: int | None = None
    """Tokens per sample (lm)."""
    name: str = ""
    """Human description of the source (recorded in the model card)."""


@dataclass
class Dataset:
    """A split data set in memory."""

    train_x: torch.Tensor
    """Training inputs that have labels."""
    train_y: torch.Tensor
    """Their labels."""
    val_x: torch.Tensor
    """Held-out evaluation inputs."""
    val_y: torch.Tensor
    """Their labels."""
    info: DataInfo
    """Shapes and task."""
    unlabeled_x: torch.Tensor | None = None
    """Training inputs whose labels were withheld (``labeledSamples``): the transfer set."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Provenance recorded in the model card."""


# ---------------------------------------------------------------------------------------------
# sources


def _sklearn(name: str) -> tuple[np.ndarray, np.ndarray, DataInfo]:
    from sklearn import datasets

    if name == "digits":
        d = datasets.load_digits()
        x = d.data.astype(np.float32) / 16.0
        info = DataInfo("classification", (64,), 10, image_shape=(1, 8, 8), name="sklearn digits")
        return x, d.target.astype(np.int64), info
    d = datasets.load_breast_cancer()
    return (
        d.data.astype(np.float32),
        d.target.astype(np.int64),
        DataInfo("classification", (30,), 2, name="sklearn breast_cancer"),
    )


def _synthetic_size(args: dict[str, Any]) -> tuple[int, np.random.Generator]:
    """Sample count (``numSamples``, alias ``samples``) and the random generator (seeded by
    ``dataSeed``, independent of the job's seed) of a synthetic source."""
    n = int(args.get("num_samples", args.get("samples", 2048)))
    return n, np.random.default_rng(int(args.get("data_seed", 1234)))


def _synthetic_tokens(args: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, DataInfo]:
    """Sequences from a fixed sparse Markov chain: learnable (loss falls), any size."""
    n, rng = _synthetic_size(args)
    seq = int(args.get("seq_len", 64))
    vocab = int(args.get("vocab_size", 256))
    branching = int(args.get("branching", 4))
    successors = rng.integers(0, vocab, size=(vocab, branching))
    tokens = np.empty((n, seq + 1), dtype=np.int64)
    tokens[:, 0] = rng.integers(0, vocab, size=n)
    choice = rng.integers(0, branching, size=(n, seq))
    for t in range(seq):
        tokens[:, t + 1] = successors[tokens[:, t], choice[:, t]]
    info = DataInfo("lm", (seq,), vocab, seq_len=seq, name=f"synthetic tokens V={vocab} T={seq}")
    return tokens[:, :-1], tokens[:, 1:], info


def _synthetic_images(args: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, DataInfo]:
    """Noisy class templates: an image classification task of any size."""
    n, rng = _synthetic_size(args)
    size = int(args.get("image_size", 32))
    channels = int(args.get("channels", 3))
    classes = int(args.get("num_classes", 10))
    templates = rng.normal(size=(classes, channels, size, size)).astype(np.float32)
    y = rng.integers(0, classes, size=n)
    noise = float(args.get("noise", 1.5))
    x = templates[y] + noise * rng.normal(size=(n, channels, size, size)).astype(np.float32)
    shape = (channels, size, size)
    return (
        x,
        y.astype(np.int64),
        DataInfo("classification", shape, classes, shape, name="synthetic images"),
    )


def _npz(path: Path, label: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as z:
        keys = list(z.keys())
        if label not in z:
            raise ConfigError(f"{path}: no array {label!r} (labelColumn); arrays: {keys}")
        feats = [k for k in ("x", "X", "features", "data", "inputs") if k in z]
        if not feats:
            rest = [k for k in keys if k != label]
            if len(rest) != 1:
                raise ConfigError(f"{path}: name the input array x (arrays: {keys})")
            feats = rest
        return np.asarray(z[feats[0]]), np.asarray(z[label])


def _table(columns: dict[str, np.ndarray], label: str, src: str) -> tuple[np.ndarray, np.ndarray]:
    if label not in columns:
        raise ConfigError(f"{src}: no column {label!r} (labelColumn); columns: {list(columns)}")
    y = columns.pop(label)
    x = np.stack([np.asarray(c, dtype=np.float32) for c in columns.values()], axis=1)
    return x, y


def _csv(path: Path, label: str) -> tuple[np.ndarray, np.ndarray]:
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    if len(rows) < 2:
        raise ConfigError(f"{path}: a header and at least one row are required")
    header, body = rows[0], rows[1:]
    cols = {h: np.array([r[i] for r in body]) for i, h in enumerate(header)}
    return _table(cols, label, str(path))


def _parquet(path: Path, label: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        import pyarrow.parquet as pq  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise ConfigError("format parquet needs pyarrow in the worker image") from exc
    table = pq.read_table(path)
    cols = {name: table.column(name).to_numpy() for name in table.column_names}
    return _table(cols, label, str(path))


def _imagefolder(path: Path, args: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from PIL import Image

    size = int(args.get("image_size", 32))
    classes = sorted(p.name for p in path.iterdir() if p.is_dir())
    if not classes:
        raise ConfigError(f"{path}: imagefolder needs one sub-directory per class")
    xs, ys = [], []
    for idx, cls in enumerate(classes):
        for f in sorted((path / cls).iterdir()):
            if f.suffix.lower() not in {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}:
                continue
            img = Image.open(f).convert("RGB").resize((size, size))
            xs.append(np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0)
            ys.append(idx)
    if not xs:
        raise ConfigError(f"{path}: no images found")
    return np.stack(xs), np.array(ys, dtype=np.int64), classes


def _labels_to_int(y: np.ndarray) -> tuple[np.ndarray, list[str] | None]:
    if np.issubdtype(y.dtype, np.integer):
        return y.astype(np.int64), None
    try:
        as_float = y.astype(np.float64)
        if np.all(as_float == np.round(as_float)):
            return as_float.astype(np.int64), None
    except ValueError:
        pass
    names, inv = np.unique(y.astype(str), return_inverse=True)
    return inv.astype(np.int64), [str(n) for n in names]


def _load_uri(
    spec: DataSpec, uri: str, args: dict[str, Any], pvc_root: Path, cache_dir: Path,
    extra: dict[str, Any],
) -> tuple[np.ndarray, np.ndarray, DataInfo]:
    """User data by URI in ``spec.format``; labels made integer (class names kept in
    ``extra``)."""
    path = fetch(uri, pvc_root, cache_dir / "data")
    extra["uri"] = uri
    if spec.format == "npz":
        x, y = _npz(path, spec.label_column)
    elif spec.format == "csv":
        x, y = _csv(path, spec.label_column)
    elif spec.format == "parquet":
        x, y = _parquet(path, spec.label_column)
    elif spec.format == "imagefolder":
        x, y, class_names = _imagefolder(path, args)
        extra["classes"] = class_names
    else:
        raise ConfigError(f"data.format {spec.format!r} is not supported")
    y, names = _labels_to_int(np.asarray(y))
    if names:
        extra["classes"] = names
    x = np.asarray(x, dtype=np.float32)
    shape = tuple(int(s) for s in x.shape[1:])
    image = shape if len(shape) == 3 else None
    return x, y, DataInfo("classification", shape, int(y.max()) + 1, image, name=uri)


def _load_source(
    spec: DataSpec, args: dict[str, Any], pvc_root: Path, cache_dir: Path, extra: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, DataInfo]:
    """The whole data set of ``spec`` (builtin or by URI) as arrays, before any split."""
    if spec.builtin in ("digits", "breast_cancer"):
        return _sklearn(spec.builtin)
    if spec.builtin == "synthetic_tokens":
        return _synthetic_tokens(args)
    if spec.builtin == "synthetic_images":
        return _synthetic_images(args)
    if spec.uri:
        return _load_uri(spec, spec.uri, args, pvc_root, cache_dir, extra)
    raise ConfigError("data needs builtin or uri")


def _split_validation(
    n: int, fraction: float, seed: int, stratify: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices): ``fraction`` of the ``n`` samples held out."""
    from sklearn.model_selection import train_test_split

    if fraction > 0:
        idx_train, idx_val = train_test_split(
            np.arange(n), test_size=fraction, random_state=seed, stratify=stratify
        )
        return idx_train, idx_val
    return np.arange(n), np.arange(0)


def _withhold_labels(
    idx_train: np.ndarray, labeled: int, seed: int, strat: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """(labeled indices, unlabeled indices): ``labeledSamples`` of the training split keep
    their labels (stratified when the labels allow it), the rest is the transfer set."""
    from sklearn.model_selection import train_test_split

    try:
        idx_lab, idx_unl = train_test_split(
            idx_train, train_size=labeled, random_state=seed, stratify=strat
        )
    except ValueError:  # too few labels to stratify
        idx_lab, idx_unl = train_test_split(idx_train, train_size=labeled, random_state=seed)
    return idx_lab, idx_unl


def _to_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def load_dataset(spec: DataSpec, seed: int, pvc_root: Path, cache_dir: Path) -> Dataset:
    """Load and split the data of a ``DataSpec`` (torchyard.api) deterministically."""
    args = snake_args(dict(spec.args))
    extra: dict[str, Any] = {}
    x, y, info = _load_source(spec, args, pvc_root, cache_dir, extra)

    stratify = y if info.task == "classification" else None
    idx_train, idx_val = _split_validation(len(x), spec.validation_fraction, seed, stratify)
    if args.get("standardize", spec.builtin == "breast_cancer"):
        # statistics of the training split only: nothing leaks from the held-out data
        mean = x[idx_train].mean(axis=0, keepdims=True)
        std = x[idx_train].std(axis=0, keepdims=True) + 1e-6
        x = ((x - mean) / std).astype(np.float32)
    unlabeled = None
    if spec.labeled_samples is not None and spec.labeled_samples < len(idx_train):
        strat = y[idx_train] if stratify is not None else None
        idx_train, idx_unl = _withhold_labels(idx_train, spec.labeled_samples, seed, strat)
        unlabeled = _to_tensor(x[idx_unl])

    extra.update(
        {
            "source": info.name,
            "train": len(idx_train),
            "validation": len(idx_val),
            "unlabeled": 0 if unlabeled is None else len(unlabeled),
        }
    )
    return Dataset(
        train_x=_to_tensor(x[idx_train]),
        train_y=_to_tensor(y[idx_train]),
        val_x=_to_tensor(x[idx_val]),
        val_y=_to_tensor(y[idx_val]),
        info=info,
        unlabeled_x=unlabeled,
        extra=extra,
    )


# ---------------------------------------------------------------------------------------------
# batching


class ShardedBatches:
    """Micro-batches of one data-parallel rank, resumable at any micro-step of any epoch.

    Uses torch's DistributedSampler for the shard (same permutation on every rank for a given
    seed and epoch; rank r takes every dp-th index), drops the ragged tail so every rank does the
    same number of steps, and hands out ``micro_batch`` samples per call.
    """

    def __init__(
        self,
        tensors: tuple[torch.Tensor, ...],
        micro_batch: int,
        dp: int,
        dp_rank: int,
        seed: int,
        shuffle: bool = True,
    ) -> None:
        self.tensors = tensors
        self.micro_batch = micro_batch
        self.sampler: DistributedSampler[int] = DistributedSampler(
            range(len(tensors[0])),  # type: ignore[arg-type]
            num_replicas=dp,
            rank=dp_rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=True,
        )
        self.micro_steps_per_epoch = len(self.sampler) // micro_batch
        if self.micro_steps_per_epoch == 0:
            raise ConfigError(
                f"{len(tensors[0])} samples over {dp} data-parallel ranks cannot fill one "
                f"micro-batch of {micro_batch}: lower batchSize"
            )

    def epoch(self, epoch: int, skip_micro_steps: int = 0) -> Iterator[tuple[torch.Tensor, ...]]:
        self.sampler.set_epoch(epoch)
        idx = torch.tensor(list(self.sampler), dtype=torch.long)
        for m in range(skip_micro_steps, self.micro_steps_per_epoch):
            sel = idx[m * self.micro_batch : (m + 1) * self.micro_batch]
            yield tuple(t[sel] for t in self.tensors)


def eval_batches(
    tensors: tuple[torch.Tensor, ...], batch: int, dp: int, dp_rank: int
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Evaluation shard of one dp rank: every sample exactly once over all ranks."""
    n = len(tensors[0])
    idx = torch.arange(dp_rank, n, dp)
    for start in range(0, len(idx), batch):
        sel = idx[start : start + batch]
        yield tuple(t[sel] for t in tensors)
