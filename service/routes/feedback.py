"""HTTP for ground truth: POST /feedback and GET /models/{name}/quality."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from service.feedback import FeedbackService, parse_body, tally
from service.store import FeedbackError, StoreUnavailableError

router = APIRouter(tags=["feedback"])


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
    return _json({"error": exc.message, "code": exc.code}, exc.status_code, headers)


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
)
async def post_feedback(request: Request) -> Any:
    service = _service(request)
    try:
        items = parse_body(await request.body())
        answers = await service.submit(items)
    except FeedbackError as exc:
        return _error(exc)
    return _json({"results": answers, **tally(answers)})


@router.get(
    "/models/{name}/quality",
    summary="Labelled quality of a model: confusion matrix, FPR/FNR, objectives, cost",
)
async def get_quality(
    request: Request,
    name: str,
    time_basis: str = Query(
        "received",
        description="the time the hour/day windows are measured on: received, observed, issued",
    ),
) -> Any:
    try:
        return _json(await _service(request).quality(name, time_basis))
    except FeedbackError as exc:
        return _error(exc)
