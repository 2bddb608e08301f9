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


# -- shadow and promotion (docs/lifecycle.md) ---------------------------------------

REQUESTED_BY_HEADER = "x-requested-by"
_ROLES_EXAMPLE = {"name": "breast-cancer", "primary": 1, "shadow": 2, "sample_rate": 0.1}


async def _json_body(request: Request) -> Any:
    """The decoded JSON body, or None when the body is empty."""
    body = await request.body()
    if not body.strip():
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequestError("the request body is not valid JSON") from None


@router.get(
    "/v2/repository/models/{model}/roles",
    summary="Roles of a model's versions",
    responses={200: {"content": {"application/json": {"example": _ROLES_EXAMPLE}}}, **ADMIN_ERRORS},
)
async def roles(model: str, request: Request) -> Response:
    """The primary (answers requests without a version), the shadow and its sample rate."""
    return json_response(dataplane(request).lifecycle.roles(model))


@router.post(
    "/v2/repository/models/{model}/shadow",
    summary="Mark a version shadow (or stop shadowing)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"example": {"version": 2, "sample_rate": 0.1}}},
        }
    },
    responses={200: {"content": {"application/json": {"example": _ROLES_EXAMPLE}}}, **ADMIN_ERRORS},
)
async def shadow(model: str, request: Request) -> Response:
    """`{"version": 2, "sample_rate": 0.1}`: version 2 also runs on 10% of the primary's
    requests, off the response path, and its decisions are scored by the same labels;
    `{"version": null}` stops shadowing. The roles are kept in the feedback store, for every
    process of the deployment (they survive reloads and restarts); the primary in force stays
    primary."""
    body = await _json_body(request)
    return json_response(await dataplane(request).lifecycle.set_shadow(model, body))


PROMOTE_ERRORS = {
    **ADMIN_ERRORS,
    409: {
        "model": ErrorResponse,
        "description": "Refused: too few paired labels, or the shadow's cost is not lower with "
        "the confidence asked; or no shadow. The decision is kept all the same.",
    },
    503: {"model": ErrorResponse, "description": "The feedback store is unavailable; retry."},
}


@router.post(
    "/v2/repository/models/{model}/promote",
    summary="Promote the shadow to primary, when the labels support it",
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {
                "application/json": {
                    "example": {"confidence": 0.95, "min_labels": 200, "requested_by": "alice"}
                }
            },
        }
    },
    responses=PROMOTE_ERRORS,
)
async def promote(model: str, request: Request) -> Response:
    """The shadow becomes primary (a hot swap; the old primary becomes the shadow) only when
    at least `min_labels` labelled rows were decided by both and the shadow's cost per row
    is lower with `confidence`; else 409 with the figures. Who asked: `requested_by` or the
    X-Requested-By header, with the admin key's identity."""
    body = await _json_body(request)
    who = request.headers.get(REQUESTED_BY_HEADER)
    return json_response(await dataplane(request).lifecycle.promote(model, body, who))


@router.post(
    "/v2/repository/models/{model}/rollback",
    summary="Undo the last promotion",
    responses=PROMOTE_ERRORS,
)
async def rollback(model: str, request: Request) -> Response:
    """The version the last promotion replaced is primary again (the promoted one its
    shadow); kept in the promotions history like a promotion."""
    body = await _json_body(request)
    who = request.headers.get(REQUESTED_BY_HEADER)
    return json_response(await dataplane(request).lifecycle.rollback(model, body, who))


@router.get(
    "/v2/repository/models/{model}/promotions",
    summary="Promotion decisions and rollbacks of a model",
    responses=ADMIN_ERRORS,
)
async def promotions(model: str, request: Request) -> Response:
    """Newest first: outcome (promoted, refused, rolled_back), the versions, who asked, and
    the figures each decision rested on."""
    return json_response(await dataplane(request).lifecycle.history(model))
