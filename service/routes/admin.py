"""The OIP repository extension (admin key only) and /metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from service.codecs import decode_json
from service.errors import BadRequestError
from service.metrics import render
from service.routes.common import (
    json_response,
    read_body,
    require_admin,
    require_metrics_key,
)
from service.routes.predict import ERRORS
from service.schemas import ErrorResponse, RepositoryIndexEntry

router = APIRouter(tags=["admin"])

ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {k: ERRORS[k] for k in (400, 401, 404)}
ADMIN_ERRORS[403] = {"model": ErrorResponse, "description": "Disabled: no admin key is set."}
INDEX: dict[str, Any] = {"response_model": list[RepositoryIndexEntry], "responses": ADMIN_ERRORS}


async def _index(request: Request) -> Response:
    require_admin(request)
    body = await read_body(request, request.app.state.settings.max_body_bytes)
    ready_only = False
    if body.strip():
        doc = decode_json(body)
        if not isinstance(doc, dict):
            raise BadRequestError("the body must be a JSON object")
        ready_only = bool(doc.get("ready", False))
    rows = request.app.state.repository.index()
    if ready_only:
        rows = [r for r in rows if r["state"] == "READY"]
    return json_response(rows)


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
    require_admin(request)
    await read_body(request, request.app.state.settings.max_body_bytes)
    versions = await request.app.state.repository.load_model(model)
    return json_response({"name": model, "versions": [str(v) for v in versions]})


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
    require_admin(request)
    await read_body(request, request.app.state.settings.max_body_bytes)
    await request.app.state.repository.unload_model(model)
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
    require_metrics_key(request)
    state = request.app.state
    for hook in state.before_metrics:  # e.g. flush buffered drift counts
        hook()
    body, content_type = render(state.registry, state.multiproc_dir)
    return Response(body, media_type=content_type)
