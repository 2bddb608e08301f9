"""HTTP for ground truth: POST /feedback and GET /models/{name}/quality."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from service.errors import scrub_paths
from service.feedback import FeedbackService, parse_body, tally
from service.routes.common import read_body, require_api_key, require_json
from service.store import FeedbackError, StoreUnavailableError

router = APIRouter(tags=["feedback"])

# Items are checked one by one: one that does not fit is answered `invalid` and the others
# still count, so the schema documents the fields without rejecting the request over them.
_ITEM = {
    "description": "{prediction_id, label, observed_at?}; a malformed item is answered invalid",
    "properties": {
        "prediction_id": {
            "description": "the id /predict answered with (a string)",
            "examples": ["p1.AAAAAQABP..."],
        },
        "label": {
            "description": "the true class, by name (string) or index (integer)",
            "examples": ["malignant", 1],
        },
        "observed_at": {
            "description": "when the truth became known: RFC 3339 with an offset, or epoch "
            "seconds; defaults to the time of receipt",
            "examples": ["2026-11-24T09:30:00Z", 1795000000],
        },
    },
}
_ITEMS = {"type": "array", "minItems": 1, "items": _ITEM}
_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "anyOf": [
                    {
                        "type": "object",
                        "required": ["items"],
                        "properties": {"items": _ITEMS},
                        "additionalProperties": False,
                    },
                    _ITEMS,
                ]
            },
            "example": {"items": [{"prediction_id": "p1.AAAAAQABP...", "label": "malignant"}]},
        }
    },
}
_ERROR = {
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


def _json(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(content),
        status_code=status_code,
        headers=headers,
        media_type="application/json",
    )


def _error(exc: FeedbackError) -> Response:
    headers = {}
    if isinstance(exc, StoreUnavailableError):
        headers["Retry-After"] = str(exc.retry_after_s)
    message = scrub_paths(exc.message)
    return _json({"error": message, "code": exc.code}, exc.status_code, headers)


def _service(request: Request) -> FeedbackService:
    service: FeedbackService = request.app.state.feedback
    return service


@router.post(
    "/feedback",
    summary="Ground truth for earlier predictions",
    description=(
        'Body: `{"items": [{"prediction_id": "...", "label": "malignant" | 1, '
        '"observed_at": "2026-11-23T23:00:00Z" | 1795000000}]}` (a bare list also works). '
        "An answer per item: accepted, duplicate, conflict, unknown or invalid. Accepted "
        "labels are committed before the answer; a store failure answers 503 and "
        "acknowledges nothing."
    ),
    openapi_extra={"requestBody": _BODY},
    responses={
        400: {"description": "body is not JSON", **_ERROR},
        401: {"description": "an API key is required", **_ERROR},
        413: {"description": "body larger than max_body_bytes", **_ERROR},
        415: {"description": "content type is not JSON", **_ERROR},
        422: {"description": "body is not a list of items, or too many items", **_ERROR},
        503: {"description": "the feedback store is unavailable; retry", **_ERROR},
    },
)
async def post_feedback(request: Request) -> Any:
    service = _service(request)
    require_api_key(request)
    require_json(request.headers)
    body = await read_body(request, request.app.state.settings.max_body_bytes)
    try:
        items = parse_body(body)
        answers = await service.submit(items)
    except FeedbackError as exc:
        return _error(exc)
    return _json({"results": answers, **tally(answers)})


@router.get(
    "/models/{name}/quality",
    summary="Labelled quality of a model: confusion matrix, FPR/FNR, objectives, cost",
    responses={
        404: {"description": "no such model", **_ERROR},
        422: {"description": "unknown time_basis", **_ERROR},
        503: {"description": "the feedback store is unavailable; retry", **_ERROR},
    },
)
async def get_quality(
    request: Request,
    name: str,
    time_basis: str = Query(
        "received",
        description="the time the hour/day windows are measured on",
        json_schema_extra={"enum": ["received", "observed", "issued"]},
    ),
) -> Any:
    try:
        return _json(await _service(request).quality(name, time_basis))
    except FeedbackError as exc:
        return _error(exc)
