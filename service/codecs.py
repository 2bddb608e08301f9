"""Wire payloads <-> numpy arrays: /predict rows, OIP v2 tensors (JSON and binary extension)."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from service.errors import BadRequestError, InvalidInputError

# Open Inference Protocol datatypes that carry numbers, and their little-endian numpy types.
NUMERIC_DATATYPES: dict[str, np.dtype[Any]] = {
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
NUMPY_TO_DATATYPE: dict[str, str] = {dt.name: name for name, dt in NUMERIC_DATATYPES.items()}
# The same keyed by the type number of a native dtype (`dtype.name` is built by Python
# code on every call).
NUM_TO_DATATYPE: dict[int, str] = {
    dt.newbyteorder("=").num: name for name, dt in NUMERIC_DATATYPES.items()
}
LITTLE_ENDIAN = sys.byteorder == "little"
# ONNX tensor type strings (as onnxruntime reports them) -> manifest dtype names.
ORT_TO_DTYPE: dict[str, str] = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
}
DTYPE_TO_DATATYPE: dict[str, str] = {"float32": "FP32", "float64": "FP64", "float16": "FP16"}
HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_NUMBER_KINDS = "iuf"


@dataclass(frozen=True, slots=True)
class InputSpec:
    """What one row of a model's input looks like."""

    name: str
    dims: tuple[int, ...]  # shape without the batch axis
    feature_names: tuple[str, ...] | None

    @property
    def row_size(self) -> int:
        return math.prod(self.dims)


@dataclass(slots=True)
class InferInput:
    """One decoded OIP input tensor."""

    name: str
    array: np.ndarray


@dataclass(slots=True)
class RequestedOutput:
    """One output named in an OIP request, and whether it goes back as binary."""

    name: str
    binary: bool


@dataclass(slots=True)
class InferRequest:
    """A decoded OIP inference request."""

    id: str | None
    parameters: dict[str, Any]
    inputs: list[InferInput]
    outputs: list[RequestedOutput] | None
    binary_output_default: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def decode_json(body: bytes) -> Any:
    """Parse a JSON body, answering 400 when it is not JSON."""
    if not body:
        raise BadRequestError("the request body is empty; expected a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"the request body is not valid JSON: {exc}") from None


def encode_json(payload: Any) -> bytes:
    """Serialise an answer (numpy arrays allowed)."""
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


def _as_number_array(values: Any, what: str) -> np.ndarray:
    """A numeric array from nested lists, refusing strings, nulls and ragged rows."""
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError):
        raise InvalidInputError(
            f"{what} must be a rectangular array of numbers (rows of equal length)"
        ) from None
    if arr.dtype.kind not in JSON_NUMBER_KINDS and not (arr.dtype.kind == "b" and arr.size == 0):
        if arr.dtype.kind == "O":
            raise InvalidInputError(
                f"{what} must be a rectangular array of numbers "
                "(rows of equal length, no nulls or nested objects)"
            )
        raise InvalidInputError(f"{what} must hold numbers only (got {arr.dtype.kind!r} values)")
    return arr


def _check_finite(arr: np.ndarray, what: str) -> None:
    # One reduction instead of isfinite + all: a NaN or an infinity anywhere makes the sum
    # non-finite, and finite float32 values summed in float64 cannot overflow.
    if not math.isfinite(np.add.reduce(arr, axis=None, dtype=np.float64)):
        raise InvalidInputError(
            f"{what} holds non-finite values (NaN, Infinity or out of float32 range)"
        )


def _rows_from_objects(rows: list[Any], spec: InputSpec) -> list[Any]:
    names = spec.feature_names
    if names is None:
        raise InvalidInputError(
            "this model takes rows as lists of numbers, not objects keyed by feature name"
        )
    wanted = set(names)
    out: list[Any] = []
    for i, row in enumerate(rows):
        if isinstance(row, dict):
            if row.keys() != wanted:
                missing = [n for n in names if n not in row]
                unknown = sorted(k for k in row if k not in wanted)
                parts = []
                if missing:
                    parts.append(f"missing features {missing}")
                if unknown:
                    parts.append(f"unknown features {unknown}")
                raise InvalidInputError(f"instance {i}: " + "; ".join(parts))
            out.append([row[n] for n in names])
        else:
            out.append(row)
    return out


def decode_instances(instances: Any, spec: InputSpec, max_rows: int) -> np.ndarray:
    """/predict rows (lists, or objects keyed by feature name) -> float32 [n, *dims]."""
    if not isinstance(instances, list) or not instances:
        raise InvalidInputError("`instances` must be a non-empty list of rows")
    n = len(instances)
    if n > max_rows:
        raise InvalidInputError(f"too many rows: {n} > max_rows_per_request {max_rows}")
    if dict in map(type, instances):  # JSON objects decode to exact dicts; C-speed scan
        instances = _rows_from_objects(instances, spec)
    arr = _as_number_array(instances, "instances")
    size = spec.row_size
    if arr.ndim < 2 or arr.shape[0] != n:
        raise InvalidInputError(_row_shape_message(spec))
    if arr.shape[1:] != spec.dims:
        tail = arr.shape[1:]
        # Image rows may come flat (H*W) or without the channel axis ([H][W] for [1][H][W]).
        if tail == (size,) or _squeezed(tail) == _squeezed(spec.dims):
            arr = arr.reshape((n, *spec.dims))
        else:
            got = tail[0] if len(tail) == 1 else list(tail)
            raise InvalidInputError(f"{_row_shape_message(spec)}; got {got}")
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.ascontiguousarray(arr, dtype=np.float32)
    _check_finite(out, "instances")
    return out


def _squeezed(dims: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in dims if d != 1)


def _row_shape_message(spec: InputSpec) -> str:
    if spec.feature_names is not None or len(spec.dims) == 1:
        return f"each instance must have {spec.row_size} feature values"
    hw = [d for d in spec.dims if d != 1]
    return (
        f"each instance must be {spec.row_size} values, flat or nested as {list(spec.dims)} or {hw}"
    )


def decode_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    """An OIP request body, JSON only or JSON header + binary tensor data."""
    binary = b""
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError:
            raise BadRequestError(f"{HEADER_LENGTH} must be an integer") from None
        if length < 0 or length > len(body):
            raise BadRequestError(f"{HEADER_LENGTH} is {length} but the body has {len(body)} bytes")
        binary = body[length:]
        body = body[:length]
    doc = decode_json(body)
    if not isinstance(doc, dict):
        raise BadRequestError("the inference request must be a JSON object")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequestError("`inputs` must be a non-empty list of tensors")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequestError("`id` must be a string")
    parameters = doc.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequestError("`parameters` must be an object")
    inputs: list[InferInput] = []
    offset = 0
    for i, tensor in enumerate(raw_inputs):
        array, used = _decode_tensor(tensor, i, binary, offset)
        offset += used
        inputs.append(InferInput(tensor["name"], array))
    if offset != len(binary):
        raise BadRequestError(
            f"binary data is {len(binary)} bytes but the inputs' binary_data_size add up "
            f"to {offset}"
        )
    outputs = _decode_requested_outputs(doc.get("outputs"))
    binary_default = bool(parameters.get("binary_data_output", False))
    return InferRequest(request_id, parameters, inputs, outputs, binary_default)


def _decode_tensor(tensor: Any, i: int, binary: bytes, offset: int) -> tuple[np.ndarray, int]:
    if not isinstance(tensor, dict):
        raise BadRequestError(f"inputs[{i}] must be an object")
    name = tensor.get("name")
    shape = tensor.get("shape")
    datatype = tensor.get("datatype")
    if not isinstance(name, str):
        raise BadRequestError(f"inputs[{i}].name must be a string")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise BadRequestError(f"input {name!r}: shape must be a list of non-negative integers")
    if not isinstance(datatype, str) or datatype not in NUMERIC_DATATYPES:
        raise BadRequestError(
            f"input {name!r}: datatype {datatype!r} is not supported; expected one of "
            f"{sorted(NUMERIC_DATATYPES)}"
        )
    dtype = NUMERIC_DATATYPES[datatype]
    count = math.prod(shape)
    params = tensor.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequestError(f"input {name!r}: parameters must be an object")
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0:
            raise BadRequestError(f"input {name!r}: binary_data_size must be an integer")
        if size != count * dtype.itemsize:
            raise BadRequestError(
                f"input {name!r}: binary_data_size is {size} bytes but shape {shape} of "
                f"{datatype} needs {count * dtype.itemsize}"
            )
        if offset + size > len(binary):
            raise BadRequestError(f"input {name!r}: the binary data is shorter than declared")
        flat = np.frombuffer(binary, dtype=dtype, count=count, offset=offset)
        return flat.reshape(shape), size
    if "data" not in tensor:
        raise BadRequestError(f"input {name!r}: `data` is missing (and no binary_data_size)")
    arr = _as_number_array(tensor["data"], f"input {name!r} data")
    if arr.size != count:
        raise BadRequestError(
            f"input {name!r}: shape {shape} needs {count} values but data has {arr.size}"
        )
    if dtype.kind in "iu" and arr.dtype.kind == "f" and not np.array_equal(arr, np.trunc(arr)):
        raise BadRequestError(f"input {name!r}: {datatype} data must be integers")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise BadRequestError(f"input {name!r}: values out of range for {datatype}")
    return arr.reshape(shape).astype(dtype, copy=False), 0


def _decode_requested_outputs(raw: Any) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise BadRequestError("`outputs` must be a list")
    outputs = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadRequestError(f"outputs[{i}] must be an object with a name")
        params = item.get("parameters") or {}
        if not isinstance(params, dict):
            raise BadRequestError(f"outputs[{i}].parameters must be an object")
        outputs.append(RequestedOutput(item["name"], bool(params.get("binary_data", False))))
    return outputs


def to_model_input(array: np.ndarray, spec: InputSpec, name: str) -> np.ndarray:
    """An OIP input tensor -> float32 [n, *dims], checking shape and finiteness."""
    shape = tuple(array.shape)
    if len(shape) != len(spec.dims) + 1 or shape[1:] != spec.dims:
        raise BadRequestError(
            f"input {name!r}: shape {list(shape)} does not match the model's {[-1, *spec.dims]}"
        )
    if shape[0] == 0:
        raise BadRequestError(f"input {name!r}: the batch is empty")
    if array.dtype == np.float32 and array.flags.c_contiguous:  # binary FP32: as it came
        out = array
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            out = np.ascontiguousarray(array, dtype=np.float32)
    _check_finite(out, f"input {name!r}")
    return out


def encode_infer_response(
    model: str,
    version: int,
    request_id: str | None,
    parameters: dict[str, Any] | None,
    outputs: list[tuple[str, np.ndarray, bool]],
) -> tuple[bytes, int | None]:
    """An OIP response; binary outputs follow the JSON header (its length is returned)."""
    tensors: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, array, binary in outputs:
        dtype = array.dtype
        native = dtype.isnative
        datatype = (native and NUM_TO_DATATYPE.get(dtype.num)) or NUMPY_TO_DATATYPE[dtype.name]
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            if native and LITTLE_ENDIAN:  # the wire order already: one copy, in C order
                raw = array.tobytes()
            else:
                raw = np.ascontiguousarray(array, dtype=dtype.newbyteorder("<")).tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = array.reshape(-1)
        tensors.append(tensor)
    doc: dict[str, Any] = {"model_name": model, "model_version": str(version), "outputs": tensors}
    if request_id is not None:
        doc["id"] = request_id
    if parameters:
        doc["parameters"] = parameters
    header = encode_json(doc)
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)
