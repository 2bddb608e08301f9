"""Open Inference Protocol v2 REST: health, server and model metadata, infer."""

from __future__ import annotations

import time
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response

from service.codecs import (
    DTYPE_TO_DATATYPE,
    HEADER_LENGTH,
    decode_infer_request,
    encode_infer_response,
    to_model_input,
)
from service.errors import BadRequestError, InvalidInputError, VerdictError
from service.inference import infer as run_inference
from service.repository import ModelVersion
from service.routes.common import (
    json_response,
    read_body,
    require_api_key,
    require_infer_type,
)
from service.routes.predict import ERRORS
from service.schemas import (
    InferRequestBody,
    InferResponseBody,
    ModelMetadataResponse,
    ReadyResponse,
    ServerMetadataResponse,
    inline_schema,
)

router = APIRouter(tags=["v2"])

SERVER_NAME = "verdict"
EXTENSIONS = ["binary_tensor_data", "model_repository", "parameters"]
PLATFORM = "onnxruntime_onnx"
BINARY = "application/octet-stream"


def _server_version() -> str:
    try:
        return package_version("verdict")
    except PackageNotFoundError:
        return "0.1.0"


@router.get("/v2", summary="Server metadata", response_model=ServerMetadataResponse)
async def server_metadata() -> Response:
    """Name, version and the protocol extensions this server supports."""
    return json_response(
        {"name": SERVER_NAME, "version": _server_version(), "extensions": EXTENSIONS}
    )


@router.get("/v2/health/live", summary="Liveness", response_model=ReadyResponse)
async def live() -> Response:
    """Always true while the process answers; never depends on models."""
    return json_response({"live": True})


@router.get(
    "/v2/health/ready",
    summary="Readiness",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse, "description": "Models still loading."}},
)
async def ready(request: Request) -> Response:
    """True once every configured model is loaded and warmed up (503 until then)."""
    repo = request.app.state.repository
    if repo.ready:
        return json_response({"ready": True})
    waiting = repo.not_ready() if repo.started else ["(loading)"]
    return json_response(
        {
            "ready": False,
            "error": f"models not ready: {waiting}",
            "code": "not_ready",
        },
        status_code=503,
    )


def _metadata(repo: Any, mv: ModelVersion) -> dict[str, Any]:
    inp, out = mv.manifest["input"], mv.manifest["output"]
    return {
        "name": mv.name,
        "versions": [str(v) for v in repo.versions(mv.name)],
        "platform": PLATFORM,
        "inputs": [
            {"name": inp["name"], "datatype": DTYPE_TO_DATATYPE["float32"], "shape": inp["shape"]}
        ],
        "outputs": [
            {
                "name": out["name"],
                "datatype": DTYPE_TO_DATATYPE["float32"],
                "shape": out["shape"],
            }
        ],
        "parameters": {
            "version": str(mv.version),
            "providers": mv.providers,
            "task": mv.task,
            "classes": mv.classes,
            "threshold": mv.threshold,
            "positive_class": out.get("positive_class"),
            "feature_names": inp.get("feature_names"),
            "batching": mv.batcher.enabled,
        },
    }


META: dict[str, Any] = {"response_model": ModelMetadataResponse, "responses": {404: ERRORS[404]}}


@router.get("/v2/models/{model}", summary="Model metadata (latest version)", **META)
async def model_metadata(model: str, request: Request) -> Response:
    """Inputs, outputs, served versions, and the providers in use."""
    repo = request.app.state.repository
    return json_response(_metadata(repo, repo.resolve(model)))


@router.get("/v2/models/{model}/versions/{version}", summary="Model metadata", **META)
async def model_version_metadata(model: str, version: str, request: Request) -> Response:
    """Metadata of one version."""
    repo = request.app.state.repository
    return json_response(_metadata(repo, repo.resolve(model, version)))


def _config(mv: ModelVersion) -> dict[str, Any]:
    inp, out = mv.manifest["input"], mv.manifest["output"]
    return {
        "name": mv.name,
        "platform": PLATFORM,
        "backend": "onnxruntime",
        # Shapes below include the batch axis (-1), as Triton writes them for max_batch_size 0.
        "max_batch_size": 0,
        "input": [{"name": inp["name"], "data_type": "TYPE_FP32", "dims": inp["shape"]}],
        "output": [{"name": out["name"], "data_type": "TYPE_FP32", "dims": out["shape"]}],
        "dynamic_batching": {
            "max_queue_delay_microseconds": int(mv.batcher.max_queue_delay_s * 1e6)
        }
        if mv.batcher.enabled
        else None,
        "parameters": {"providers": {"string_value": ",".join(mv.providers)}},
    }


CONFIG_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Triton-style model configuration (for tools such as perf_analyzer).",
        "content": {
            "application/json": {
                "example": {
                    "name": "breast-cancer",
                    "platform": "onnxruntime_onnx",
                    "max_batch_size": 0,
                    "input": [{"name": "input", "data_type": "TYPE_FP32", "dims": [-1, 30]}],
                    "output": [
                        {"name": "probabilities", "data_type": "TYPE_FP32", "dims": [-1, 2]}
                    ],
                }
            }
        },
    },
    404: ERRORS[404],
}


@router.get("/v2/models/{model}/config", summary="Model configuration", responses=CONFIG_RESPONSES)
async def model_config(model: str, request: Request) -> Response:
    """The Triton model configuration of the latest version."""
    return json_response(_config(request.app.state.repository.resolve(model)))


@router.get(
    "/v2/models/{model}/versions/{version}/config",
    summary="Model configuration of a version",
    responses=CONFIG_RESPONSES,
)
async def model_version_config(model: str, version: str, request: Request) -> Response:
    """The Triton model configuration of one version."""
    return json_response(_config(request.app.state.repository.resolve(model, version)))


def _model_ready(request: Request, model: str, version: str | None) -> Response:
    repo = request.app.state.repository
    try:
        mv = repo.resolve(model, version)
    except VerdictError as exc:
        if exc.status_code == 503:
            return json_response(
                {"name": model, "ready": False, "error": exc.message, "code": exc.code}, 503
            )
        raise
    return json_response({"name": mv.name, "ready": True})


READY: dict[str, Any] = {"response_model": ReadyResponse, "responses": {404: ERRORS[404]}}


@router.get("/v2/models/{model}/ready", summary="Model readiness", **READY)
async def model_ready(model: str, request: Request) -> Response:
    """True when the model serves a version."""
    return _model_ready(request, model, None)


@router.get("/v2/models/{model}/versions/{version}/ready", summary="Version readiness", **READY)
async def model_version_ready(model: str, version: str, request: Request) -> Response:
    """True when this version serves."""
    return _model_ready(request, model, version)


INFER: dict[str, Any] = {
    "response_model": None,
    "responses": {200: {"model": InferResponseBody}, **ERRORS},
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": inline_schema(InferRequestBody)},
                BINARY: {
                    "schema": {"type": "string", "format": "binary"},
                    "description": f"JSON header of {HEADER_LENGTH} bytes, then tensor data.",
                },
            },
        }
    },
}


@router.post("/v2/models/{model}/infer", summary="Infer (latest version)", **INFER)
async def model_infer(model: str, request: Request) -> Response:
    """Open Inference Protocol inference, JSON or binary tensor data."""
    return await infer(request, model, None)


@router.post("/v2/models/{model}/versions/{version}/infer", summary="Infer", **INFER)
async def model_version_infer(model: str, version: str, request: Request) -> Response:
    """Inference on one version."""
    return await infer(request, model, version)


async def infer(request: Request, model: str, version: str | None) -> Response:
    """The infer handler of the framework's routes."""
    state = request.app.state
    require_api_key(request)
    require_infer_type(request.headers)
    body = await read_body(request, state.settings.max_body_bytes)
    payload, header_length = await infer_body(
        state, body, request.headers.get(HEADER_LENGTH), model, version
    )
    if header_length is None:
        return Response(payload, media_type="application/json")
    return Response(payload, media_type=BINARY, headers={HEADER_LENGTH: str(header_length)})


async def infer_body(
    state: Any, body: bytes, header_length: str | None, model: str, version: str | None
) -> tuple[bytes, int | None]:
    """The answer to an infer body whose headers were checked (also the hot path's):
    the payload, and the JSON header's length when the payload carries binary tensors."""
    req = decode_infer_request(body, header_length)
    repo = state.repository
    mv = repo.acquire(model, version)
    try:
        try:
            x = _model_input(mv, req.inputs, state.settings.max_rows_per_request)
            wanted = _outputs(mv, req.outputs, req.binary_output_default)
        except (BadRequestError, InvalidInputError):
            mv.metrics.invalid.inc()
            raise
        decided = await run_inference(mv, x, state.prediction_observers)
    finally:
        repo.release(mv)
    parameters: dict[str, Any] = {}
    if req.parameters.get("prediction_ids"):
        parameters["prediction_ids"] = state.ids.issue_many(
            mv.name, mv.version, decided.class_index, decided.score, time.time()
        )
    outputs = [(name, decided.probabilities, binary) for name, binary in wanted]
    return encode_infer_response(mv.name, mv.version, req.id, parameters, outputs)


def _model_input(mv: ModelVersion, inputs: list[Any], max_rows: int) -> np.ndarray:
    names = [i.name for i in inputs]
    if names != [mv.spec.name]:
        raise BadRequestError(
            f"model {mv.name!r} takes one input named {mv.spec.name!r}; got {names}"
        )
    x = to_model_input(inputs[0].array, mv.spec, mv.spec.name)
    if len(x) > max_rows:
        raise InvalidInputError(f"too many rows: {len(x)} > max_rows_per_request {max_rows}")
    return x


def _outputs(
    mv: ModelVersion, requested: list[Any] | None, binary_default: bool
) -> list[tuple[str, bool]]:
    if requested is None:
        return [(mv.output_name, binary_default)]
    out = []
    for r in requested:
        if r.name != mv.output_name:
            raise BadRequestError(
                f"model {mv.name!r} has no output {r.name!r}; outputs: [{mv.output_name!r}]"
            )
        out.append((r.name, r.binary or binary_default))
    return out
