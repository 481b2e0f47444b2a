"""The serving copy of a compressed model version: traced and frozen TorchScript computes what
the saved model computes (the CPU serving path the transformer int8 benchmark times)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.compress.conftest import manifest, recompute, run_job

DYNAMIC = "torch.ao.nn.quantized.dynamic.modules.linear.Linear"
STATIC = "torchyard_trainer.compress.layers._QuantizeThen"


@pytest.mark.parametrize(
    ("quantize", "backend_module"),
    [
        ({"method": "dynamicInt8", "granularity": "perChannel"}, DYNAMIC),
        ({"method": "dynamicInt8", "granularity": "perTensor"}, DYNAMIC),
        ({"method": "staticInt8", "granularity": "perChannel"}, STATIC),
    ],
)
def test_serving_copy_traces_freezes_and_matches_the_saved_model(
    quantize: dict[str, Any], backend_module: str, teacher: dict, digits: Any, tmp_path: Path
) -> None:
    import torch

    from torchyard_trainer.compress import layers

    doc = manifest(teacher, tmp_path / "store", [{"quantize": {**quantize, "backend": "torch.ao"}}])
    saved = recompute(run_job(doc, tmp_path / "out"), digits)["model"].eval()
    x = digits.val_x[:32]

    serving = layers.serving_copy(saved)
    kinds = {f"{type(m).__module__}.{type(m).__name__}" for m in serving.modules()}
    assert backend_module in kinds
    assert not any(isinstance(m, layers.QuantLinear) for m in serving.modules())
    # the saved model is left as it was (still our portable layers)
    assert any(isinstance(m, layers.QuantLinear) for m in saved.modules())

    with torch.no_grad():
        frozen = torch.jit.freeze(torch.jit.trace(serving, (x,)))
        want = saved(x)
        got_eager = serving(x)
        got_frozen = frozen(digits.val_x[32:64])
        want_other = saved(digits.val_x[32:64])
    torch.testing.assert_close(got_eager, want)
    torch.testing.assert_close(got_frozen, want_other)  # not only the traced example
