"""The Open Inference Protocol v2 request/response logic of the server (pure, no HTTP)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from torchyard_trainer.serve.protocol import (
    ProtocolError,
    TensorSpec,
    infer_response,
    parse_infer,
)

IN = TensorSpec("input", "FP32", (-1, 4))
OUT = [TensorSpec("output", "FP32", (-1, 3))]


def _body(**change: Any) -> dict[str, Any]:
    item = {"name": "input", "shape": [2, 4], "datatype": "FP32", "data": list(range(8))}
    return {"inputs": [{**item, **change}]}


def test_flat_and_nested_data_give_the_same_array() -> None:
    flat = parse_infer(_body(), IN, OUT, 16).array
    nested = parse_infer(_body(data=[[0, 1, 2, 3], [4, 5, 6, 7]]), IN, OUT, 16).array
    assert flat.dtype == np.float32
    assert flat.shape == (2, 4)
    np.testing.assert_array_equal(flat, nested)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "request"),
        ({"inputs": []}, "inputs"),
        (_body(shape=[2, 5]), "inputs[0].shape"),
        (_body(shape=[0, 4], data=[]), "inputs[0].shape: the batch is empty"),
        (_body(shape=[32, 4], data=[0.0] * 128), "inputs[0].shape: batch 32 is over"),
        (_body(shape="2x4"), "inputs[0].shape"),
        (_body(datatype="INT64"), "inputs[0].datatype"),
        (_body(data=[1.0] * 7), "inputs[0].data: 7 values"),
        (_body(data=[[1, 2], [3]]), "inputs[0].data"),
        ({"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32",
                      "parameters": {"binary_data_size": 32}}]}, "inputs[0]: the binary"),
        ({**_body(), "outputs": [{"name": "logits"}]}, "outputs[0].name"),
        ({**_body(), "id": 7}, "id"),
    ],
)
def test_bad_requests_name_the_field(body: Any, field: str) -> None:
    with pytest.raises(ProtocolError) as err:
        parse_infer(body, IN, OUT, 16)
    assert str(err.value).startswith(field)
    assert err.value.status == 400


def test_response_is_flat_row_major_with_the_id_and_only_what_was_asked() -> None:
    out = np.arange(6, dtype=np.float32).reshape(2, 3)
    resp = infer_response("m", "3", "r1", {"output": out}, None)
    assert resp == {"model_name": "m", "model_version": "3", "id": "r1",
                    "outputs": [{"name": "output", "datatype": "FP32", "shape": [2, 3],
                                 "data": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]}]}
    assert infer_response("m", "3", None, {"output": out}, [])["outputs"] == []
