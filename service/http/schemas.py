"""Pydantic request/response types: they document the API (OpenAPI); requests are decoded
with orjson, not through these."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# An id of the shape /predict answers with.
EXAMPLE_ID = "p3.AAAAAQAAAaI7Ae_7YoB5diCCfrtFT-ZCYnJlYXN0LWNhbmNlcg.AAAAAAABP3___B1VrdyM_5jz"
# The first row of scikit-learn's breast cancer data: a valid request for the bundled
# `breast-cancer` model (/docs shows examples for the models actually served, docs.py).
BREAST_CANCER_ROW: list[Any] = [
    17.99,
    10.38,
    122.8,
    1001.0,
    0.1184,
    0.2776,
    0.3001,
    0.1471,
    0.2419,
    0.07871,
    1.095,
    0.9053,
    8.589,
    153.4,
    0.006399,
    0.04904,
    0.05373,
    0.01587,
    0.03003,
    0.006193,
    25.38,
    17.33,
    184.6,
    2019.0,
    0.1622,
    0.6656,
    0.7119,
    0.2654,
    0.4601,
    0.1189,
]


class ErrorResponse(BaseModel):
    """Every error answer."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"error": "unknown model 'x'", "code": "model_not_found"}]}
    )
    error: str = Field(description="What went wrong, and what was expected.")
    code: str = Field(description="A stable machine-readable code.")


class PredictRequest(BaseModel):
    """POST /predict body."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"model": "breast-cancer", "instances": [BREAST_CANCER_ROW]},
                {"model": "breast-cancer", "version": 1, "instances": [BREAST_CANCER_ROW]},
            ]
        }
    )
    model: str | None = Field(None, description="Model name; optional when one model is served.")
    version: int | None = Field(None, description="Model version; the latest when omitted.")
    instances: list[list[Any] | dict[str, float]] = Field(
        description="Rows: lists of numbers in feature order, or objects keyed by feature name. "
        "Image models take H*W values flat or nested as [1][H][W] or [H][W]."
    )


class Prediction(BaseModel):
    """The answer for one row."""

    prediction_id: str = Field(description="Signed id to quote in POST /feedback.")
    label: str = Field(description="Predicted label (binary: the decision at the threshold).")
    class_index: int = Field(description="Index of the label in the model's classes.")
    probabilities: dict[str, float] = Field(description="Probability of each label.")
    score: float | None = Field(None, description="Binary: probability of the positive class.")
    decision: str | None = Field(
        None, description="Binary: `positive` when score >= threshold, else `negative`."
    )


class PredictResponse(BaseModel):
    """POST /predict answer."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "breast-cancer",
                    "version": 1,
                    "threshold": 0.12,
                    "predictions": [
                        {
                            "prediction_id": EXAMPLE_ID,
                            "label": "malignant",
                            "class_index": 1,
                            "probabilities": {"benign": 0.03, "malignant": 0.97},
                            "score": 0.97,
                            "decision": "positive",
                        }
                    ],
                }
            ]
        }
    )
    model: str
    version: int
    threshold: float | None = None
    predictions: list[Prediction]


class InferTensor(BaseModel):
    """An OIP input tensor (JSON, or binary with parameters.binary_data_size)."""

    name: str
    shape: list[int]
    datatype: str = Field(description="FP32, FP64, FP16, INT8..INT64 or UINT8..UINT64.")
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = Field(None, description="Flat or nested, row-major.")


class RequestedOutputSpec(BaseModel):
    """An output the client asks for (parameters.binary_data for binary)."""

    name: str
    parameters: dict[str, Any] | None = None


class InferRequestBody(BaseModel):
    """OIP inference request."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "42",
                    "inputs": [
                        {
                            "name": "input",
                            "shape": [1, 30],
                            "datatype": "FP32",
                            "data": BREAST_CANCER_ROW,
                        }
                    ],
                    "outputs": [{"name": "probabilities"}],
                }
            ]
        }
    )
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InferTensor]
    outputs: list[RequestedOutputSpec] | None = None


class OutputTensor(BaseModel):
    """An OIP output tensor."""

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferResponseBody(BaseModel):
    """OIP inference response."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model_name": "breast-cancer",
                    "model_version": "1",
                    "id": "42",
                    "outputs": [
                        {
                            "name": "probabilities",
                            "datatype": "FP32",
                            "shape": [1, 2],
                            "data": [0.97, 0.03],
                        }
                    ],
                }
            ]
        }
    )
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[OutputTensor]


class ServerMetadataResponse(BaseModel):
    """GET /v2."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "verdict",
                    "version": "0.1.0",
                    "extensions": ["binary_tensor_data", "model_repository"],
                }
            ]
        }
    )
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    """Name, datatype and shape of a model input or output."""

    name: str
    datatype: str
    shape: list[int]


class ModelMetadataResponse(BaseModel):
    """GET /v2/models/{m}[/versions/{v}]."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "breast-cancer",
                    "versions": ["1"],
                    "platform": "onnxruntime_onnx",
                    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 30]}],
                    "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}],
                    "parameters": {
                        "version": "1",
                        "providers": ["CPUExecutionProvider"],
                        "task": "binary",
                        "classes": ["benign", "malignant"],
                        "threshold": 0.12,
                    },
                }
            ]
        }
    )
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any]


class ReadyResponse(BaseModel):
    """Liveness / readiness."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"live": True}, {"ready": True}]})
    live: bool | None = None
    ready: bool | None = None
    name: str | None = None


class RepositoryIndexRequest(BaseModel):
    """POST /v2/repository/index body (optional)."""

    ready: bool | None = Field(None, description="Only versions that are ready.")


class RepositoryIndexEntry(BaseModel):
    """One row of the repository index."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"name": "breast-cancer", "version": "1", "state": "READY"}]
        }
    )
    name: str
    version: str
    state: str
    reason: str | None = None


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema of a model with its $defs inlined (for openapi_extra request bodies)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.rsplit("/", 1)[1]])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "Malformed JSON or request fields.",
        401: "API key missing or wrong.",
        404: "Unknown model or version.",
        413: "Body over max_body_bytes.",
        415: "Not JSON.",
        422: "Rows that do not fit the model (count, names, non-finite values).",
        503: "Overloaded (see Retry-After) or model not ready.",
    }.items()
}
ERROR_CONTENT: dict[str, Any] = {
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["error", "code"],
                "properties": {"error": {"type": "string"}, "code": {"type": "string"}},
            }
        }
    }
}


def _json_content(model: type[BaseModel]) -> dict[str, Any]:
    return {"application/json": {"schema": inline_schema(model)}}


def _operation(summary: str, description: str, body: dict[str, Any], ok: type[BaseModel]) -> Any:
    responses: dict[str, Any] = {"200": {"description": "OK", "content": _json_content(ok)}}
    for code, doc in ERRORS.items():
        responses[str(code)] = {
            "description": doc["description"],
            "content": _json_content(ErrorResponse),
        }
    return {
        "post": {
            "tags": ["inference"],
            "summary": summary,
            "description": description,
            "requestBody": {"required": True, "content": body},
            "responses": responses,
        }
    }


def edge_paths() -> dict[str, Any]:
    """OpenAPI path items of the routes the edge answers itself (the inference routes)."""
    infer_body = {
        **_json_content(InferRequestBody),
        "application/octet-stream": {
            "schema": {"type": "string", "format": "binary"},
            "description": "JSON header of Inference-Header-Content-Length bytes, then tensor "
            "data.",
        },
    }
    infer = _operation(
        "Infer (latest version)",
        "Open Inference Protocol inference, JSON or binary tensor data (the binary tensor data "
        "extension). `parameters.prediction_ids: true` adds a signed prediction id per row.",
        infer_body,
        InferResponseBody,
    )
    version = _operation(
        "Infer",
        "Inference on one version of the model, as above.",
        infer_body,
        InferResponseBody,
    )
    predict = _operation(
        "Predict labels for rows of features",
        "Rows as lists in feature order or objects keyed by feature name; one answer per row "
        "with a prediction id, the label, the class index and probabilities by label, and for "
        "binary models the score and the decision at the model's threshold.",
        _json_content(PredictRequest),
        PredictResponse,
    )
    return {
        "/predict": predict,
        "/v2/models/{model}/infer": infer,
        "/v2/models/{model}/versions/{version}/infer": version,
    }
