"""The OIP repository extension (the edge lets only the admin key through) and /metrics."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from service.errors import BadRequestError
from service.http.routes import dataplane, json_response
from service.http.schemas import ERRORS, ErrorResponse, RepositoryIndexEntry
from service.monitoring.metrics import render

router = APIRouter(tags=["admin"])

ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {k: ERRORS[k] for k in (400, 401, 404)}
ADMIN_ERRORS[403] = {"model": ErrorResponse, "description": "Disabled: no admin key is set."}
INDEX: dict[str, Any] = {"response_model": list[RepositoryIndexEntry], "responses": ADMIN_ERRORS}


async def _index(request: Request) -> Response:
    body = await request.body()
    ready_only = False
    if body.strip():
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise BadRequestError("the request body is not valid JSON") from None
        if not isinstance(doc, dict):
            raise BadRequestError("the body must be a JSON object")
        ready_only = bool(doc.get("ready", False))
    return json_response(dataplane(request).metadata.index(ready_only))


@router.get("/v2/repository/index", summary="Repository index", **INDEX)
async def index_get(request: Request) -> Response:
    """Every model version on disk with its state (READY / UNAVAILABLE and why)."""
    return await _index(request)


@router.post("/v2/repository/index", summary="Repository index", **INDEX)
async def index_post(request: Request) -> Response:
    """Same as GET; body `{"ready": true}` lists only ready versions."""
    return await _index(request)


@router.post(
    "/v2/repository/models/{model}/load",
    summary="Load or reload a model",
    responses={
        200: {"content": {"application/json": {"example": {"name": "digits", "versions": ["1"]}}}},
        **ADMIN_ERRORS,
    },
)
async def load(model: str, request: Request) -> Response:
    """(Re)load a model from disk; new versions are checked and warmed up before they take
    traffic, and requests in flight finish on the version they started on."""
    versions = await dataplane(request).metadata.load(model)
    return json_response({"name": model, "versions": versions})


@router.post(
    "/v2/repository/models/{model}/unload",
    summary="Unload a model",
    responses={
        200: {"content": {"application/json": {"example": {"name": "digits"}}}},
        **ADMIN_ERRORS,
    },
)
async def unload(model: str, request: Request) -> Response:
    """Stop serving a model; requests in flight finish first."""
    await dataplane(request).metadata.unload(model)
    return json_response({"name": model})


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    tags=["metrics"],
    responses={
        200: {"content": {"text/plain": {"example": "verdict_model_info{...} 1.0"}}},
        401: {
            "model": ErrorResponse,
            "description": "API key missing or wrong (only with VERDICT_METRICS_REQUIRE_KEY).",
        },
    },
)
async def metrics(request: Request) -> Response:
    """Prometheus text format (every worker's values in multiprocess mode)."""
    state = request.app.state
    # Buffered counts reach their series first (in multiprocess mode the collection below
    # reads the files, not this registry, so nothing else would flush them).
    state.drift.flush()
    state.metrics.flush()
    body, content_type = render(state.registry, state.metrics.multiproc)
    return Response(body, media_type=content_type)
