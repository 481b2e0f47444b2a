"""The Open Inference Protocol v2 (KServe/Triton) JSON tensor format: validating a request
against a model's metadata and encoding the response — pure functions, no HTTP.

A request names its input tensors with ``name``, ``shape``, ``datatype`` and ``data`` (flat in
row-major order, or nested: both are allowed by the protocol). Every check that fails raises
:class:`ProtocolError` whose message names the field (``inputs[0].shape: …``); the server
answers it with HTTP 400 and ``{"error": message}``, as the protocol asks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

#: v2 datatypes this server reads and writes, and their numpy types (BYTES is not a tensor
#: type any of our models takes).
DATATYPES: dict[str, type[np.generic]] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


class ProtocolError(ValueError):
    """A request the protocol (or the model's metadata) does not allow: HTTP ``status``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model's metadata; -1 in ``shape`` is any size (the batch)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class InferRequest:
    """A validated request: its id, the input array, the outputs asked for (None: all)."""

    id: str | None
    array: np.ndarray
    outputs: list[str] | None


def _shape_of(raw: Any, where: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw
    ):
        raise ProtocolError(f"{where}.shape: must be a list of non-negative integers, got {raw!r}")
    return tuple(raw)


def _check_shape(shape: tuple[int, ...], spec: TensorSpec, max_batch: int, where: str) -> None:
    fits = len(shape) == len(spec.shape) and all(
        want in (-1, got) for got, want in zip(shape, spec.shape, strict=True)
    )
    if not fits:
        raise ProtocolError(
            f"{where}.shape: {list(shape)} does not match the model's input "
            f"{spec.name!r} of shape {list(spec.shape)} (-1: any size)"
        )
    if shape and shape[0] == 0:
        raise ProtocolError(f"{where}.shape: the batch is empty")
    if shape and shape[0] > max_batch:
        raise ProtocolError(f"{where}.shape: batch {shape[0]} is over this server's {max_batch}")


def _array_of(item: dict[str, Any], spec: TensorSpec, shape: tuple[int, ...], where: str
              ) -> np.ndarray:
    datatype = item.get("datatype")
    if datatype != spec.datatype:
        raise ProtocolError(
            f"{where}.datatype: {datatype!r} given, the model's input {spec.name!r} takes "
            f"{spec.datatype}"
        )
    if "data" not in item:
        params = item.get("parameters") or {}
        if isinstance(params, dict) and "binary_data_size" in params:
            raise ProtocolError(f"{where}: the binary tensor extension is not supported; "
                                "send the data as JSON")
        raise ProtocolError(f"{where}.data: missing")
    try:
        array = np.asarray(item["data"], dtype=DATATYPES[spec.datatype])
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"{where}.data: not {spec.datatype} values in a regular "
                            f"(non-ragged) list: {exc}") from None
    if array.size != math.prod(shape):
        raise ProtocolError(
            f"{where}.data: {array.size} values, the shape {list(shape)} needs {math.prod(shape)}"
        )
    return array.reshape(shape)


def parse_infer(body: Any, spec: TensorSpec, outputs: list[TensorSpec], max_batch: int
                ) -> InferRequest:
    """Check an infer request body (decoded JSON) against a one-input model; the array."""
    if not isinstance(body, dict):
        raise ProtocolError("request: must be a JSON object with an 'inputs' list")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError("inputs: must be a non-empty list of tensors")
    if len(inputs) != 1:
        raise ProtocolError(f"inputs: {len(inputs)} tensors given, the model takes one "
                            f"({spec.name!r})")
    item = inputs[0]
    if not isinstance(item, dict):
        raise ProtocolError("inputs[0]: must be an object with name/shape/datatype/data")
    if item.get("name") != spec.name:
        raise ProtocolError(f"inputs[0].name: {item.get('name')!r} is not the model's input "
                            f"{spec.name!r}")
    shape = _shape_of(item.get("shape"), "inputs[0]")
    _check_shape(shape, spec, max_batch, "inputs[0]")
    array = _array_of(item, spec, shape, "inputs[0]")
    return InferRequest(_request_id(body), array, _asked_outputs(body, outputs))


def _request_id(body: dict[str, Any]) -> str | None:
    rid = body.get("id")
    if rid is not None and not isinstance(rid, str):
        raise ProtocolError(f"id: must be a string, got {rid!r}")
    return rid


def _asked_outputs(body: dict[str, Any], outputs: list[TensorSpec]) -> list[str] | None:
    asked = body.get("outputs")
    if asked is None:
        return None
    if not isinstance(asked, list):
        raise ProtocolError("outputs: must be a list of {\"name\": …} objects")
    known = {o.name for o in outputs}
    names: list[str] = []
    for i, out in enumerate(asked):
        name = out.get("name") if isinstance(out, dict) else None
        if name not in known:
            raise ProtocolError(f"outputs[{i}].name: {name!r} is not an output of the model "
                                f"(it has {sorted(known)})")
        names.append(str(name))
    return names


def infer_response(model_name: str, model_version: str, request_id: str | None,
                   results: dict[str, np.ndarray], asked: list[str] | None) -> dict[str, Any]:
    """The v2 response: every output asked for (all by default), data flat in row-major order."""
    reverse = {v: k for k, v in DATATYPES.items()}
    outs = []
    for name, array in results.items():
        if asked is not None and name not in asked:
            continue
        datatype = reverse.get(array.dtype.type, "FP32")
        data = array.astype(DATATYPES[datatype], copy=False).reshape(-1)
        outs.append({"name": name, "datatype": datatype, "shape": list(array.shape),
                     "data": data.tolist()})
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version,
                                "outputs": outs}
    if request_id is not None:
        response["id"] = request_id
    return response


def model_metadata(name: str, version: str, platform: str, inputs: list[TensorSpec],
                   outputs: list[TensorSpec]) -> dict[str, Any]:
    return {
        "name": name,
        "versions": [version],
        "platform": platform,
        "inputs": [i.metadata() for i in inputs],
        "outputs": [o.metadata() for o in outputs],
    }
