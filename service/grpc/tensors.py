"""Open Inference Protocol messages <-> the data plane's tensors: `ModelInferRequest` in (typed
`contents` or `raw_input_contents`), `ModelInferResponse` out (in the form the request came).

Every problem with a request is a `BadRequestError` with the same words as over REST where
the problem is the same (`service.models.codecs` checks datatypes, shapes and values).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from service.dataplane.inference import Decided
from service.errors import BadRequestError
from service.grpc.generated import inference_pb2 as pb
from service.models.codecs import (
    InferInput,
    check_datatype,
    datatype_of,
    little_endian_bytes,
    tensor_from_bytes,
    tensor_from_values,
)

# The `InferTensorContents` field that carries each datatype's values, and the numpy type
# that holds them without loss before the datatype's own checks (range, integers).
CONTENTS: dict[str, tuple[str, np.dtype[Any]]] = {
    "INT8": ("int_contents", np.dtype(np.int64)),
    "INT16": ("int_contents", np.dtype(np.int64)),
    "INT32": ("int_contents", np.dtype(np.int64)),
    "INT64": ("int64_contents", np.dtype(np.int64)),
    "UINT8": ("uint_contents", np.dtype(np.uint64)),
    "UINT16": ("uint_contents", np.dtype(np.uint64)),
    "UINT32": ("uint_contents", np.dtype(np.uint64)),
    "UINT64": ("uint64_contents", np.dtype(np.uint64)),
    "FP32": ("fp32_contents", np.dtype(np.float32)),
    "FP64": ("fp64_contents", np.dtype(np.float64)),
}
PREDICTION_IDS = "prediction_ids"
FALSE_TEXT = ("", "0", "false", "no")


@dataclass(slots=True)
class InferCall:
    """A decoded ModelInferRequest."""

    model: str
    version: str | None
    id: str
    inputs: list[InferInput]
    outputs: list[str] | None
    with_ids: bool
    raw: bool  # the inputs came as raw bytes, so the outputs go back that way


def decode_infer(data: bytes) -> InferCall:
    """A ModelInferRequest's fields and input tensors; 400 for anything malformed."""
    try:
        request = pb.ModelInferRequest.FromString(data)
    except DecodeError:
        raise BadRequestError("the request is not a valid ModelInferRequest message") from None
    if not request.model_name:
        raise BadRequestError("`model_name` is required")
    tensors = request.inputs
    if not tensors:
        raise BadRequestError("`inputs` must be a non-empty list of tensors")
    raw = request.raw_input_contents
    if raw and len(raw) != len(tensors):
        raise BadRequestError(
            f"raw_input_contents has {len(raw)} entries for {len(tensors)} inputs; "
            "send one per input, in order, or use contents"
        )
    inputs = []
    for i, tensor in enumerate(tensors):
        name = tensor.name
        shape = list(tensor.shape)
        if any(d < 0 for d in shape):
            raise BadRequestError(f"input {name!r}: shape must be a list of non-negative integers")
        if raw:
            if tensor.HasField("contents"):
                raise BadRequestError(
                    f"input {name!r}: contents and raw_input_contents are both set; use one"
                )
            array = _from_raw(name, tensor.datatype, shape, raw[i], i)
        else:
            array = _from_contents(name, tensor, shape)
        inputs.append(InferInput(name, array))
    outputs = [o.name for o in request.outputs] or None
    return InferCall(
        request.model_name,
        request.model_version or None,
        request.id,
        inputs,
        outputs,
        _truthy(request.parameters.get(PREDICTION_IDS)),
        bool(raw),
    )


def _from_raw(name: str, datatype: str, shape: list[int], raw: bytes, i: int) -> np.ndarray:
    dtype = check_datatype(name, datatype)
    needed = math.prod(shape) * dtype.itemsize
    if len(raw) != needed:
        raise BadRequestError(
            f"input {name!r}: raw_input_contents[{i}] is {len(raw)} bytes but shape {shape} "
            f"of {datatype} needs {needed}"
        )
    return tensor_from_bytes(name, dtype, shape, raw)


def _from_contents(name: str, tensor: Any, shape: list[int]) -> np.ndarray:
    datatype = tensor.datatype
    check_datatype(name, datatype)
    if datatype not in CONTENTS:
        raise BadRequestError(
            f"input {name!r}: {datatype} values have no contents field; send them in "
            "raw_input_contents"
        )
    field, dtype = CONTENTS[datatype]
    given = [f.name for f, _ in tensor.contents.ListFields()]
    if any(f != field for f in given):
        raise BadRequestError(
            f"input {name!r}: {datatype} values go in contents.{field}; got contents."
            + ", contents.".join(given)
        )
    values = getattr(tensor.contents, field)
    return tensor_from_values(name, datatype, shape, np.fromiter(values, dtype, len(values)))


def _truthy(parameter: Any) -> bool:
    if parameter is None:
        return False
    kind = parameter.WhichOneof("parameter_choice")
    if kind is None:
        return False
    value = getattr(parameter, kind)
    if isinstance(value, str):
        return value.strip().lower() not in FALSE_TEXT
    return bool(value)


def encode_infer(call: InferCall, decided: Decided) -> bytes:
    """The ModelInferResponse: every output asked for (every output when none is named), as
    raw bytes when the inputs came raw, else in the datatype's contents field."""
    mv = decided.version
    array = decided.probabilities
    datatype = datatype_of(array)
    response = pb.ModelInferResponse(model_name=mv.name, model_version=str(mv.version), id=call.id)
    for name in call.outputs or [mv.output_name]:
        out = response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        if call.raw:
            response.raw_output_contents.append(little_endian_bytes(array))
        else:
            getattr(out.contents, CONTENTS[datatype][0]).extend(array.ravel().tolist())
    if decided.prediction_ids is not None:
        response.parameters[PREDICTION_IDS].string_param = ",".join(decided.prediction_ids)
    return response.SerializeToString()
