"""The fidelity metrics and the direction-aware gate (compress/fidelity.py) on hand-made
tensors whose answers are known, and perplexity against transformers' own loss. Here (not in
tests/unit) because they need torch."""

from __future__ import annotations

import math

import pytest
import torch

from torchyard.api.compression import AccuracyCriterion
from torchyard_trainer.compress import fidelity as fd


def _crit(metric: str, mode: str, loss: float) -> AccuracyCriterion:
    return AccuracyCriterion(metric=metric, mode=mode, tolerable_loss=loss)


def test_cosine_per_sample_and_worst_percentile() -> None:
    ref = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [3.0, 4.0]])
    out = torch.tensor([[2.0, 0.0], [1.0, 0.0], [-1.0, -1.0], [4.0, 3.0]])
    cos = fd.cosine(out, ref)
    assert cos.tolist() == pytest.approx([1.0, 0.0, -1.0, 24.0 / 25.0])
    values = torch.linspace(0.0, 1.0, 101)
    assert fd.worst(values, 5) == pytest.approx(0.05)
    assert fd.worst(values, 50) == pytest.approx(0.5)


def test_token_outputs_count_only_real_tokens() -> None:
    """(N, L, V) outputs: padded positions (mask 0) are left out of every figure."""
    ref = torch.randn(2, 3, 5)
    out = ref.clone()
    x = torch.stack([torch.zeros(2, 3, dtype=torch.long),
                     torch.tensor([[1, 1, 0], [1, 0, 0]])], dim=1)
    out[0, 2] = -ref[0, 2]  # garbage only where there is padding
    out[1, 1:] = torch.randn(2, 5)
    mask = fd.token_mask(x, out)
    assert mask is not None
    assert fd.cosine(out, ref, mask).tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert fd.top1_agreement(out, ref, mask) == 1.0
    assert fd.kl(out, ref, mask) == pytest.approx(0.0, abs=1e-12)


def test_top1_agreement_and_kl_direction() -> None:
    ref = torch.log(torch.tensor([[0.9, 0.1], [0.5, 0.5]]))
    out = torch.log(torch.tensor([[0.6, 0.4], [0.5, 0.5]]))
    assert fd.top1_agreement(out, ref) == 1.0
    # KL(reference ‖ candidate), averaged over samples
    want = (0.9 * math.log(0.9 / 0.6) + 0.1 * math.log(0.1 / 0.4)) / 2
    assert fd.kl(out, ref) == pytest.approx(want, rel=1e-6)  # float32 inputs
    backwards = (0.6 * math.log(0.6 / 0.9) + 0.4 * math.log(0.4 / 0.1)) / 2
    assert fd.kl(out, ref) != pytest.approx(backwards, rel=1e-3)
    flipped = torch.log(torch.tensor([[0.1, 0.9], [0.6, 0.4]]))
    assert fd.top1_agreement(flipped, ref) == 0.5


def test_perplexity_is_transformers_own_loss_with_padding_ignored() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=1,
                                       n_head=2)).eval()
    ids = torch.randint(0, 50, (3, 8))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    x = torch.stack([ids, mask], dim=1)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
    assert fd.perplexity(out.logits, x) == pytest.approx(math.exp(float(out.loss)), rel=1e-5)


@pytest.mark.parametrize(
    ("metric", "mode", "loss", "baseline", "limit"),
    [
        ("accuracy", "absolute", 0.02, 0.9, 0.88),
        ("cosine", "relative", 0.05, 1.0, 0.95),
        ("top1Agreement", "relative", 0.1, 1.0, 0.9),
        ("perplexity", "relative", 0.1, 20.0, 22.0),
        ("perplexity", "absolute", 1.5, 20.0, 21.5),
        ("kl", "absolute", 0.01, 0.0, 0.01),
    ],
)
def test_gate_bounds_the_worsening_in_the_metrics_direction(
    metric: str, mode: str, loss: float, baseline: float, limit: float
) -> None:
    crit = _crit(metric, mode, loss)
    assert fd.threshold(baseline, crit) == pytest.approx(limit)
    worse = 1.0 if metric in ("perplexity", "kl") else -1.0
    assert fd.gate_passes(baseline, limit, crit)  # exactly at the gate passes
    assert fd.gate_passes(baseline, baseline, crit)
    assert not fd.gate_passes(baseline, limit + worse * 1e-3, crit)
    assert fd.gate_passes(baseline, limit - worse * 1e-3, crit)
    assert fd.shortfall(baseline, limit + worse * 0.5, crit) == pytest.approx(0.5)


def test_miss_message_says_by_how_much() -> None:
    msg = fd.miss_message(1.0, 0.91, _crit("cosine", "absolute", 0.02))
    assert msg.startswith("cosine 0.9100 is 0.0700 below the gate 0.9800")
    msg = fd.miss_message(10.0, 12.5, _crit("perplexity", "relative", 0.1))
    assert msg.startswith("perplexity 12.5000 is 1.5000 above the gate 11.0000")


def test_scores_gate_value_is_the_metric() -> None:
    ref = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    x = torch.zeros(2, 2, 4, dtype=torch.long)
    emb = fd.scores(out, ref, x, "cosine", "embedding", 50)
    assert emb["accuracy"] == emb["fidelityMean"] == pytest.approx((1 + math.sqrt(0.5)) / 2,
                                                                   abs=1e-6)
    assert "kl" not in emb
    cls = fd.scores(out, ref, x, "top1Agreement", "classification", 5)
    assert cls["accuracy"] == cls["top1Agreement"] == 0.5
    assert "fidelityMean" not in cls
    assert cls["kl"] > 0


def test_scoring_batch_by_batch_equals_the_whole_set() -> None:
    """gate_scores scores one batch at a time (an LM's logits never held for the whole set):
    the combined figures equal the whole-set ones."""
    torch.manual_seed(0)
    ref = torch.randn(10, 6, 7)
    out = ref + 0.3 * torch.randn(10, 6, 7)
    ids = torch.randint(0, 7, (10, 6))
    mask = torch.ones_like(ids)
    mask[3, 4:] = 0
    x = torch.stack([ids, mask], dim=1)
    whole = fd.scores(out, ref, x, "cosine", "lm", 5)
    parts = [fd.item_values(out[i : i + 3], ref[i : i + 3], x[i : i + 3], "cosine", "lm")
             for i in range(0, 10, 3)]
    assert fd.combine(parts, "cosine", 5) == pytest.approx(whole, rel=1e-9)
    assert whole["perplexity"] == pytest.approx(fd.perplexity(out, x), rel=1e-6)
    mask_t = fd.token_mask(x, out)
    assert whole["kl"] == pytest.approx(fd.kl(out, ref, mask_t), rel=1e-6)
    assert whole["top1Agreement"] == pytest.approx(fd.top1_agreement(out, ref, mask_t))
    assert whole["accuracy"] == whole["fidelityMean"]
