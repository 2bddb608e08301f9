"""Wire values <-> numpy arrays, and what a model accepts as input.

- Open Inference Protocol datatypes: tensors from values (JSON `data`, gRPC typed contents)
  or from raw little-endian bytes (the binary extension, gRPC raw contents); the datatype of
  an output array.
- Model input: /predict rows, or an OIP tensor, checked and turned into one C-contiguous
  float32 array `[n, *dims]`. Rows that do not fit are 422 (`InvalidInputError`, the simple
  API); a tensor that does not fit is 400 (`BadRequestError`), as the protocol documents.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.errors import BadRequestError, InvalidInputError, VerdictError

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
# The same keyed by the type number of a native dtype (`dtype.name` is built by Python code
# on every call).
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


def datatype_of(array: np.ndarray) -> str:
    """The OIP datatype of an output array."""
    dtype = array.dtype
    return (dtype.isnative and NUM_TO_DATATYPE.get(dtype.num)) or NUMPY_TO_DATATYPE[dtype.name]


def little_endian_bytes(array: np.ndarray) -> bytes:
    """An array's values as the wire carries them: little-endian, C order."""
    if array.dtype.isnative and LITTLE_ENDIAN:  # the wire order already: one copy
        return array.tobytes()
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def check_datatype(name: str, datatype: Any) -> np.dtype[Any]:
    """The numpy type of an OIP datatype, or 400."""
    if not isinstance(datatype, str) or datatype not in NUMERIC_DATATYPES:
        raise BadRequestError(
            f"input {name!r}: datatype {datatype!r} is not supported; expected one of "
            f"{sorted(NUMERIC_DATATYPES)}"
        )
    return NUMERIC_DATATYPES[datatype]


def tensor_from_bytes(
    name: str, dtype: np.dtype[Any], shape: list[int], raw: bytes, offset: int = 0
) -> np.ndarray:
    """A tensor of `dtype` (`check_datatype`) read, not copied, from little-endian bytes at
    `offset`; 400 when the bytes are shorter than the shape needs."""
    count = math.prod(shape)
    if offset + count * dtype.itemsize > len(raw):
        raise BadRequestError(f"input {name!r}: the binary data is shorter than declared")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(shape)


def tensor_from_values(name: str, datatype: Any, shape: list[int], values: Any) -> np.ndarray:
    """A tensor from values, flat or nested (JSON `data`); 400 on values that are not numbers
    of the datatype or whose count does not match the shape."""
    dtype = check_datatype(name, datatype)
    count = math.prod(shape)
    arr = _number_array(values, f"input {name!r} data", BadRequestError)
    if arr.size != count:
        raise BadRequestError(
            f"input {name!r}: shape {shape} needs {count} values but data has {arr.size}"
        )
    if dtype.kind in "iu":
        if arr.dtype.kind == "f" and not np.array_equal(arr, np.trunc(arr)):
            raise BadRequestError(f"input {name!r}: {datatype} data must be integers")
        info = np.iinfo(dtype)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise BadRequestError(f"input {name!r}: values out of range for {datatype}")
    return arr.reshape(shape).astype(dtype, copy=False)


def _number_array(values: Any, what: str, error: type[VerdictError]) -> np.ndarray:
    """A numeric array from nested lists, refusing strings, nulls and ragged rows."""
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError):
        raise error(
            f"{what} must be a rectangular array of numbers (rows of equal length)"
        ) from None
    if arr.dtype.kind not in JSON_NUMBER_KINDS and not (arr.dtype.kind == "b" and arr.size == 0):
        if arr.dtype.kind == "O":
            raise error(
                f"{what} must be a rectangular array of numbers "
                "(rows of equal length, no nulls or nested objects)"
            )
        raise error(f"{what} must hold numbers only, not {_kind_name(arr.dtype.kind)}")
    return arr


def _kind_name(kind: str) -> str:
    return {"U": "text", "S": "bytes", "b": "booleans"}.get(kind, f"values of kind {kind!r}")


def _check_finite(arr: np.ndarray, what: str, error: type[VerdictError]) -> None:
    # One reduction instead of isfinite + all: a NaN or an infinity anywhere makes the sum
    # non-finite, and finite float32 values summed in float64 cannot overflow.
    if not math.isfinite(np.add.reduce(arr, axis=None, dtype=np.float64)):
        raise error(f"{what} holds non-finite values (NaN, Infinity or out of float32 range)")


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


def rows_to_input(instances: Any, spec: InputSpec, max_rows: int) -> np.ndarray:
    """/predict rows (lists, or objects keyed by feature name) -> float32 [n, *dims]; 422 for
    rows that do not fit."""
    if not isinstance(instances, list) or not instances:
        raise InvalidInputError("`instances` must be a non-empty list of rows")
    n = len(instances)
    if n > max_rows:
        raise InvalidInputError(f"too many rows: {n} > max_rows_per_request {max_rows}")
    if dict in map(type, instances):  # JSON objects decode to exact dicts; C-speed scan
        instances = _rows_from_objects(instances, spec)
    arr = _number_array(instances, "instances", InvalidInputError)
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
    _check_finite(out, "instances", InvalidInputError)
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


def tensor_to_input(array: np.ndarray, spec: InputSpec, name: str) -> np.ndarray:
    """An OIP input tensor -> float32 [n, *dims], checking shape and finiteness (400)."""
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
    _check_finite(out, f"input {name!r}", BadRequestError)
    return out
