"""POST /predict: the simple API (rows in, labels and probabilities out)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response

from service.codecs import decode_instances, decode_json, encode_json
from service.errors import BadRequestError, InvalidInputError
from service.inference import infer
from service.routes.common import JSON, read_body, require_api_key, require_json
from service.schemas import ErrorResponse, PredictRequest, PredictResponse, inline_schema

router = APIRouter(tags=["predict"])

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


@router.post(
    "/predict",
    summary="Predict labels for rows of features",
    response_model=None,
    responses={200: {"model": PredictResponse}, **ERRORS},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline_schema(PredictRequest)}},
        }
    },
)
async def predict(request: Request) -> Response:
    """Rows as lists in feature order or objects keyed by feature name; one answer per row
    with a prediction id, the label, the class index and probabilities by label, and for
    binary models the score and the decision at the model's threshold."""
    state = request.app.state
    require_api_key(request)
    require_json(request.headers)
    body = await read_body(request, state.settings.max_body_bytes)
    return Response(await predict_body(state, body), media_type=JSON)


async def predict_body(state: Any, body: bytes) -> bytes:
    """The JSON answer to a /predict body whose headers were checked (also the hot path's)."""
    doc = decode_json(body)
    if not isinstance(doc, dict):
        raise BadRequestError("the body must be a JSON object with `instances`")
    model = doc.get("model")
    version = doc.get("version")
    if model is not None and not isinstance(model, str):
        raise BadRequestError("`model` must be a string")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int | str)):
        raise BadRequestError("`version` must be an integer")
    repo = state.repository
    mv = repo.acquire(model, version)
    try:
        try:
            x = decode_instances(doc.get("instances"), mv.spec, state.settings.max_rows_per_request)
        except InvalidInputError:
            mv.metrics.invalid.inc()
            raise
        decided = await infer(mv, x, state.prediction_observers)
    finally:
        repo.release(mv)
    class_index = decided.class_index.tolist()
    rows = decided.probabilities.tolist()
    classes = mv.classes
    labels = [classes[ci] for ci in class_index]
    ids = state.ids.issue_many(mv.name, mv.version, decided.class_index, decided.score, time.time())
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
