"""Hugging Face transformers models: loaded offline from a directory (``save_pretrained``
layout) and wrapped so the rest of the worker can treat them like any other ``nn.Module``.

The adapter (:class:`HFModel`) is the whole contract with the compression pipeline (pruning,
quantization, search, latency timing, evaluation all call ``model(x)`` with one tensor):

* **input** ``x``: one int64 tensor ``(N, C, L)`` with ``C`` = 2 or 3 rows per sample —
  ``x[:, 0]`` input_ids, ``x[:, 1]`` attention_mask, ``x[:, 2]`` token_type_ids (only for
  tokenizers that produce them). :mod:`torchyard_trainer.textdata` builds exactly this.
* **output** by task: ``feature-extraction`` → the pooled embedding ``(N, D)`` (mean over
  non-padding tokens or the first token, L2-normalised unless ``normalize=False``);
  ``sequence-classification`` → logits ``(N, classes)``; ``causal-lm`` → next-token logits
  ``(N, L, vocab)``.
* ``adapter.model`` is the transformers model itself (a ``PreTrainedModel``): what the user
  gets back from :func:`torchyard_trainer.compress.stored.load_hf_version`. GPT-2-style
  ``Conv1D`` layers are replaced by ``nn.Linear`` at load (``adapter.conv1d`` names them) so
  pruning and quantization see ordinary Linear layers; :meth:`HFModel.hf_state_dict` turns
  them back into the transformers layout when saving.

Never a hub download: ``local_files_only=True`` everywhere, and the path must hold
config.json. Paths: ``file://``/``pvc://``/``s3://``/``gs://`` (storage.py), an absolute path,
or ``pkg://<package>/<dir>`` — a directory inside an installed Python package (found with
``importlib.util.find_spec``, without importing the package).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from torchyard_trainer.env import ConfigError
from torchyard_trainer.storage import fetch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from torchyard.api.common import HuggingFaceModel

# The transformers Auto class that loads each task's head.
AUTO_CLASSES = {
    "feature-extraction": "AutoModel",
    "sequence-classification": "AutoModelForSequenceClassification",
    "causal-lm": "AutoModelForCausalLM",
}


def resolve_path(path: str, pvc_root: Path, cache_dir: Path) -> Path:
    """The local directory of a model path (remote ones are downloaded into ``cache_dir``)."""
    if path.startswith("pkg://"):
        package, _, sub = path[len("pkg://") :].partition("/")
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"{path}: no installed Python package {package!r}")
        root = Path(next(iter(spec.submodule_search_locations))) / sub
    elif path.startswith("/"):
        root = Path(path)
    else:
        root = fetch(path, pvc_root, cache_dir / "models")
    if not (root / "config.json").is_file():
        raise ConfigError(
            f"{path}: {root} holds no config.json (expected a directory that save_pretrained "
            "wrote: config.json, the weights and the tokenizer files)"
        )
    return root


def load_tokenizer(root: Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved beside the model; one without a pad token (GPT-2 style) pads with
    its end-of-text token — padded positions are masked out everywhere, so which id is used
    does not matter."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(root), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{root}: cannot load the tokenizer: {exc}") from exc
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ConfigError(f"{root}: the tokenizer has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    return tok


def auto_class(task: str) -> Any:
    import transformers

    return getattr(transformers, AUTO_CLASSES[task])


def load_pretrained(root: Path, task: str) -> PreTrainedModel:
    """The transformers model of ``root`` with the head ``task`` needs, in eval mode."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # a log, not a terminal
    try:
        model = auto_class(task).from_pretrained(str(root), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{root}: cannot load a {task} model: {exc}") from exc
    return model.eval()  # type: ignore[no-any-return]


def conv1d_to_linear(model: nn.Module) -> list[str]:
    """Replace every transformers ``Conv1D`` (GPT-2: ``y = x @ W + b`` with W stored
    (in, out)) by the equivalent ``nn.Linear`` (W transposed); returns their names."""
    from transformers.pytorch_utils import Conv1D

    names = [n for n, m in model.named_modules() if isinstance(m, Conv1D)]
    for name in names:
        conv = model.get_submodule(name)
        assert isinstance(conv, Conv1D), name
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        w = conv.weight.detach()
        lin = nn.Linear(w.shape[0], w.shape[1], bias=conv.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(w.t())
            if conv.bias is not None:
                lin.bias.copy_(conv.bias.detach())
        setattr(parent, attr, lin)
    return names


class HFModel(nn.Module):
    """One tensor in, one tensor out around a transformers model (see the module docstring)."""

    model: PreTrainedModel
    """The transformers model (a submodule: its parameters are the adapter's)."""

    def __init__(self, model: PreTrainedModel, task: str, pooling: str = "mean",
                 normalize: bool = True, conv1d: list[str] | None = None) -> None:
        super().__init__()
        if task not in AUTO_CLASSES:
            raise ConfigError(f"huggingface task {task!r}: one of {sorted(AUTO_CLASSES)}")
        self.model = model
        self.task = task
        self.pooling = pooling
        self.normalize = normalize
        self.conv1d = list(conv1d or [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, mask = x[:, 0], x[:, 1]
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        if x.shape[1] > 2:
            kwargs["token_type_ids"] = x[:, 2]
        if self.task == "causal-lm":
            kwargs["use_cache"] = False  # one full forward: no key/value cache to build
        out = self.model(**kwargs)
        if self.task != "feature-extraction":
            logits: torch.Tensor = out.logits
            return logits
        hidden: torch.Tensor = out.last_hidden_state
        if self.pooling == "cls":
            emb = hidden[:, 0]
        else:  # mean over the real tokens, as sentence-transformers pools
            m = mask.unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
        return F.normalize(emb, p=2.0, dim=-1) if self.normalize else emb

    def settings(self) -> dict[str, Any]:
        """What rebuilding the adapter needs besides the transformers config."""
        return {"task": self.task, "pooling": self.pooling, "normalize": self.normalize,
                "conv1d": list(self.conv1d)}

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """The inner model's tensors in the transformers layout: ``Conv1D`` weights (in, out)
        again, as views (tied weights still share storage, so a caller can write each storage
        once the way ``save_pretrained`` does; ``from_pretrained`` re-ties them)."""
        conv = {f"{n}.weight" for n in self.conv1d}
        return {name: (t.detach().t() if name in conv else t.detach())
                for name, t in self.model.state_dict().items()}


def from_spec(spec: HuggingFaceModel, pvc_root: Path, cache_dir: Path
              ) -> tuple[HFModel, PreTrainedTokenizerBase, Path]:
    """(adapter, tokenizer, local directory) of a ``ModelSpec.huggingface``."""
    root = resolve_path(spec.path, pvc_root, cache_dir)
    tokenizer = load_tokenizer(root)
    model = load_pretrained(root, spec.task)
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        # GPT-2-style classifiers find each text's last token by the pad id: give them ours
        model.config.pad_token_id = tokenizer.pad_token_id
    conv = conv1d_to_linear(model)
    return HFModel(model, spec.task, spec.pooling, spec.normalize, conv).eval(), tokenizer, root


__all__ = ["AUTO_CLASSES", "HFModel", "conv1d_to_linear", "from_spec", "load_pretrained",
           "load_tokenizer", "resolve_path"]
