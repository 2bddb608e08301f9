"""Open Inference Protocol v2 over HTTP, but inference: health, server and model metadata,
model readiness and the Triton-style model configuration."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from service.http.routes import dataplane, json_response
from service.http.schemas import (
    ERRORS,
    ModelMetadataResponse,
    ReadyResponse,
    ServerMetadataResponse,
)

router = APIRouter(tags=["v2"])


@router.get("/v2", summary="Server metadata", response_model=ServerMetadataResponse)
async def server_metadata(request: Request) -> Response:
    """Name, version and the protocol extensions this server supports."""
    return json_response(dataplane(request).metadata.server())


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
    is_ready, why = dataplane(request).metadata.readiness()
    if is_ready:
        return json_response({"ready": True})
    return json_response({"ready": False, "error": why, "code": "not_ready"}, status_code=503)


META: dict[str, Any] = {"response_model": ModelMetadataResponse, "responses": {404: ERRORS[404]}}


@router.get("/v2/models/{model}", summary="Model metadata (latest version)", **META)
async def model_metadata(model: str, request: Request) -> Response:
    """Inputs, outputs, served versions, and the providers in use."""
    return json_response(dataplane(request).metadata.model(model))


@router.get("/v2/models/{model}/versions/{version}", summary="Model metadata", **META)
async def model_version_metadata(model: str, version: str, request: Request) -> Response:
    """Metadata of one version."""
    return json_response(dataplane(request).metadata.model(model, version))


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
    return json_response(dataplane(request).metadata.config(model))


@router.get(
    "/v2/models/{model}/versions/{version}/config",
    summary="Model configuration of a version",
    responses=CONFIG_RESPONSES,
)
async def model_version_config(model: str, version: str, request: Request) -> Response:
    """The Triton model configuration of one version."""
    return json_response(dataplane(request).metadata.config(model, version))


def _model_ready(request: Request, model: str, version: str | None) -> Response:
    name, why = dataplane(request).metadata.model_ready(model, version)
    if why is None:
        return json_response({"name": name, "ready": True})
    return json_response(
        {"name": name, "ready": False, "error": why.message, "code": why.code}, 503
    )


READY: dict[str, Any] = {"response_model": ReadyResponse, "responses": {404: ERRORS[404]}}


@router.get("/v2/models/{model}/ready", summary="Model readiness", **READY)
async def model_ready(model: str, request: Request) -> Response:
    """True when the model serves a version."""
    return _model_ready(request, model, None)


@router.get("/v2/models/{model}/versions/{version}/ready", summary="Version readiness", **READY)
async def model_version_ready(model: str, version: str, request: Request) -> Response:
    """True when this version serves."""
    return _model_ready(request, model, version)
