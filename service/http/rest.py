"""The inference routes over HTTP: `POST /predict` and Open Inference Protocol infer.

Each adapter decodes the body (JSON, or JSON + binary tensors), asks the data plane, and
encodes its answer; the edge (`service.http.edge`) has admitted, checked and read the
request before, and writes the answer after.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from service.dataplane.inference import Decided, Inference
from service.errors import BadRequestError
from service.http.edge import Exchange
from service.http.messages import BINARY, Answer
from service.models.codecs import (
    InferInput,
    check_datatype,
    datatype_of,
    little_endian_bytes,
    tensor_from_bytes,
    tensor_from_values,
)

HEADER_LENGTH = "Inference-Header-Content-Length"
HEADER_LENGTH_NAME = HEADER_LENGTH.lower().encode("ascii")


def decode_json(body: bytes) -> Any:
    """Parse a JSON body, answering 400 in plain words when it is not JSON."""
    if not body:
        raise BadRequestError("the request body is empty; expected a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(
            f"the request body is not valid JSON (line {exc.lineno}, column {exc.colno})"
        ) from None


def encode_json(payload: Any) -> bytes:
    """Serialise an answer (numpy arrays allowed)."""
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


class Rest:
    """The adapters of the inference routes, over one data plane's inference."""

    def __init__(self, inference: Inference) -> None:
        self.inference = inference

    async def predict(self, ex: Exchange, body: bytes) -> Answer:
        """`{"model"?, "version"?, "instances": [...]}` -> one answer per row."""
        if ex.trace is None:
            doc = decode_json(body)
        else:
            with ex.trace.stage("decode"):
                doc = decode_json(body)
        if not isinstance(doc, dict):
            raise BadRequestError("the body must be a JSON object with `instances`")
        model = doc.get("model")
        version = doc.get("version")
        if model is not None and not isinstance(model, str):
            raise BadRequestError("`model` must be a string")
        if version is not None and (
            isinstance(version, bool) or not isinstance(version, int | str)
        ):
            raise BadRequestError("`version` must be an integer")
        trace = ex.trace
        decided = await self.inference.predict(model, version, doc.get("instances"), trace)
        if trace is None:
            return Answer(200, encode_predictions(decided))
        with trace.stage("encode"):
            return Answer(200, encode_predictions(decided))

    async def infer(self, ex: Exchange, body: bytes) -> Answer:
        """An OIP inference request, JSON or JSON + binary tensor data."""
        header_length = ex.headers.get(HEADER_LENGTH_NAME)
        trace = ex.trace
        if trace is None:
            request = InferRequest.decode(body, header_length)
        else:
            with trace.stage("decode"):
                request = InferRequest.decode(body, header_length)
        decided = await self.inference.infer(
            ex.params["model"],
            ex.params.get("version"),
            request.inputs,
            [name for name, _ in request.outputs] if request.outputs else None,
            with_ids=bool(request.parameters.get("prediction_ids")),
            trace=trace,
        )
        if trace is None:
            payload, json_length = request.encode(decided)
        else:
            with trace.stage("encode"):
                payload, json_length = request.encode(decided)
        if json_length is None:
            return Answer(200, payload)
        return Answer(200, payload, BINARY, [(HEADER_LENGTH_NAME, b"%d" % json_length)])


def encode_predictions(decided: Decided) -> bytes:
    """The /predict answer: per row the id, label, class index, probabilities by label, and
    for binary models the score and the decision at the threshold."""
    mv = decided.version
    class_index = decided.class_index.tolist()
    rows = decided.probabilities.tolist()
    classes = mv.classes
    labels = [classes[ci] for ci in class_index]
    ids = decided.prediction_ids
    assert ids is not None
    predictions: list[dict[str, Any]]
    # One comprehension over zipped columns: no per-row indexing, enumerate or append.
    if mv.positive_index is not None:  # binary: two classes, the score is the positive's
        pos = mv.positive_index
        first, second = classes
        decision = ("positive", "negative") if pos == 0 else ("negative", "positive")
        predictions = [
            {
                "prediction_id": pid,
                "label": label,
                "class_index": ci,
                "probabilities": {first: p0, second: p1},
                "score": p1 if pos else p0,
                "decision": decision[ci],
            }
            for pid, label, ci, (p0, p1) in zip(ids, labels, class_index, rows, strict=True)
        ]
    else:
        predictions = [
            {
                "prediction_id": pid,
                "label": label,
                "class_index": ci,
                "probabilities": dict(zip(classes, row, strict=False)),  # one per class
            }
            for pid, label, ci, row in zip(ids, labels, class_index, rows, strict=True)
        ]
    return encode_json(
        {
            "model": mv.name,
            "version": mv.version,
            "threshold": mv.threshold,
            "predictions": predictions,
        }
    )


class InferRequest:
    """A decoded OIP request: its id, parameters, input tensors, the outputs asked for (name,
    binary) or None for every output, and whether outputs go back as binary by default."""

    __slots__ = ("binary_default", "id", "inputs", "outputs", "parameters")

    def __init__(
        self,
        request_id: str | None,
        parameters: dict[str, Any],
        inputs: list[InferInput],
        outputs: list[tuple[str, bool]] | None,
        binary_default: bool,
    ) -> None:
        self.id = request_id
        self.parameters = parameters
        self.inputs = inputs
        self.outputs = outputs
        self.binary_default = binary_default

    @classmethod
    def decode(cls, body: bytes, header_length: bytes | None) -> InferRequest:
        """JSON only, or a JSON header of `header_length` bytes and then binary tensor data.
        A field given as null is taken as absent; any other value must have its type."""
        binary = b""
        if header_length is not None:
            try:
                length = int(header_length)
            except ValueError:
                raise BadRequestError(f"{HEADER_LENGTH} must be an integer") from None
            if length < 0 or length > len(body):
                raise BadRequestError(
                    f"{HEADER_LENGTH} is {length} but the body has {len(body)} bytes"
                )
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
        parameters = _parameters(doc.get("parameters"), "`parameters`")
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
        outputs = _requested_outputs(doc.get("outputs"))
        binary_default = bool(parameters.get("binary_data_output", False))
        return cls(request_id, parameters, inputs, outputs, binary_default)

    def encode(self, decided: Decided) -> tuple[bytes, int | None]:
        """The OIP answer: every output asked for (every output when none is named); binary
        ones follow the JSON header, whose length is returned (None: JSON only)."""
        mv = decided.version
        wanted = self.outputs or [(mv.output_name, False)]
        tensors: list[dict[str, Any]] = []
        chunks: list[bytes] = []
        for name, binary in wanted:
            array = decided.probabilities
            tensor: dict[str, Any] = {
                "name": name,
                "datatype": datatype_of(array),
                "shape": list(array.shape),
            }
            if binary or self.binary_default:
                raw = little_endian_bytes(array)
                tensor["parameters"] = {"binary_data_size": len(raw)}
                chunks.append(raw)
            else:
                tensor["data"] = array.reshape(-1)
            tensors.append(tensor)
        doc: dict[str, Any] = {
            "model_name": mv.name,
            "model_version": str(mv.version),
            "outputs": tensors,
        }
        if self.id is not None:
            doc["id"] = self.id
        if decided.prediction_ids is not None:
            doc["parameters"] = {"prediction_ids": decided.prediction_ids}
        header = encode_json(doc)
        if not chunks:
            return header, None
        return header + b"".join(chunks), len(header)


def _parameters(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequestError(f"{what} must be an object")
    return value


def _decode_tensor(tensor: Any, i: int, binary: bytes, offset: int) -> tuple[Any, int]:
    """One input tensor, from its JSON `data` or from the binary data at `offset`; returns the
    array and the binary bytes it used."""
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
    params = tensor.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise BadRequestError(f"input {name!r}: parameters must be an object")
    size = params.get("binary_data_size") if params else None
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BadRequestError(f"input {name!r}: binary_data_size must be an integer")
        dtype = check_datatype(name, datatype)
        needed = math.prod(shape) * dtype.itemsize
        if size != needed:
            raise BadRequestError(
                f"input {name!r}: binary_data_size is {size} bytes but shape {shape} of "
                f"{datatype} needs {needed}"
            )
        return tensor_from_bytes(name, dtype, shape, binary, offset), size
    if "data" not in tensor:
        raise BadRequestError(f"input {name!r}: `data` is missing (and no binary_data_size)")
    return tensor_from_values(name, datatype, shape, tensor["data"]), 0


def _requested_outputs(raw: Any) -> list[tuple[str, bool]] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise BadRequestError("`outputs` must be a list")
    outputs = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadRequestError(f"outputs[{i}] must be an object with a name")
        params = _parameters(item.get("parameters"), f"outputs[{i}].parameters")
        outputs.append((item["name"], bool(params.get("binary_data", False))))
    return outputs
