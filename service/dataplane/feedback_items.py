"""What a feedback body holds: its items, their times and labels, and the tally of the answers
(service/dataplane/feedback.py checks and stores them)."""

from __future__ import annotations

import math
from collections import Counter
from datetime import datetime
from typing import Any

from service.errors import InvalidFeedbackError

RESULTS = ("accepted", "duplicate", "conflict", "unknown", "invalid")


def items_of(body: Any) -> list[Any]:
    """The items of a decoded feedback body: `{"items": [...]}` or a bare list."""
    if isinstance(body, dict) and set(body) == {"items"}:
        body = body["items"]
    if not isinstance(body, list):
        raise InvalidFeedbackError(
            'body must be {"items": [{"prediction_id": ..., "label": ...}, ...]} or a list of items'
        )
    return body


def parse_time(value: Any) -> float | None:
    """Seconds since the epoch from RFC 3339 text or a number; None when it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an int past float range
            return None
    elif isinstance(value, str) and 0 < len(value) <= 64:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return None
        if moment.tzinfo is None:  # RFC 3339 always carries an offset
            return None
        seconds = moment.timestamp()
    else:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def resolve_label(label: Any, classes: list[str]) -> int | None:
    """The class index of a label given by name or by index, or None when it is no class."""
    if isinstance(label, bool):
        return None
    if isinstance(label, str):
        return classes.index(label) if label in classes else None
    if isinstance(label, int) and 0 <= label < len(classes):
        return label
    return None


def tally(answers: list[dict[str, Any]]) -> dict[str, int]:
    """How many answers of each result kind, every kind present."""
    counts = Counter(a["result"] for a in answers)
    return {kind: counts.get(kind, 0) for kind in RESULTS}
