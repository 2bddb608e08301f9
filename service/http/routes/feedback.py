"""Ground truth over HTTP: POST /feedback and GET /models/{name}/quality."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Query, Request, Response

from service.dataplane.feedback_items import items_of, tally
from service.errors import InvalidJSONError
from service.http.routes import dataplane, json_response
from service.http.schemas import ERROR_CONTENT, EXAMPLE_ID

router = APIRouter(tags=["feedback"])

# EXAMPLE_ID is not signed by your server's key: sent as it is, it is answered `unknown`.

# Items are checked one by one: one that does not fit is answered `invalid` and the others
# still count, so the schema documents the fields without rejecting the request over them.
_ITEM = {
    "description": "{prediction_id, label, observed_at?}; a malformed item is answered invalid",
    "properties": {
        "prediction_id": {
            "description": "the id /predict answered with (a string)",
            "examples": [EXAMPLE_ID],
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
            "example": {"items": [{"prediction_id": EXAMPLE_ID, "label": "malignant"}]},
        }
    },
}


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
        400: {"description": "body is not JSON", **ERROR_CONTENT},
        401: {"description": "an API key is required", **ERROR_CONTENT},
        413: {"description": "body larger than max_body_bytes", **ERROR_CONTENT},
        415: {"description": "content type is not JSON", **ERROR_CONTENT},
        422: {"description": "body is not a list of items, or too many items", **ERROR_CONTENT},
        503: {"description": "the feedback store is unavailable; retry", **ERROR_CONTENT},
    },
)
async def post_feedback(request: Request) -> Response:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise InvalidJSONError("the request body is not valid JSON") from None
    answers = await dataplane(request).feedback.submit(items_of(body))
    return json_response({"results": answers, **tally(answers)})


@router.get(
    "/models/{name}/quality",
    summary="Labelled quality of a model: confusion matrix, FPR/FNR, objectives, cost",
    responses={
        404: {"description": "no such model", **ERROR_CONTENT},
        422: {"description": "unknown time_basis", **ERROR_CONTENT},
        503: {"description": "the feedback store is unavailable; retry", **ERROR_CONTENT},
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
) -> Response:
    """Confusion matrix, FPR, FNR, precision and recall per version for the last hour, day and
    all time, against the manifest's targets, with expected cost and label coverage."""
    return json_response(await dataplane(request).feedback.quality(name, time_basis))


@router.get(
    "/models/{name}/shadow",
    summary="The shadow against the primary on the same labelled rows",
    responses={
        404: {"description": "no such model", **ERROR_CONTENT},
        503: {"description": "the feedback store is unavailable; retry", **ERROR_CONTENT},
    },
)
async def get_shadow(request: Request, name: str) -> Response:
    """The roles in force; outcomes, FNR, FPR and cost per row of the primary and the shadow on
    the labelled rows both decided; the difference in cost with its confidence bounds; and
    whether a promotion would be granted now (the server's confidence and minimum)."""
    return json_response(await dataplane(request).lifecycle.comparison(name))
