"""Rows both feedback stores keep and return (labels, captures, labelled examples, label
counts), and the SQL and row conversions the SQLite and PostgreSQL stores share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from service.monitoring.decisions import RolesRecord

# Columns a quality window may be measured on (whitelisted: they are spliced into SQL).
TIME_COLUMNS = {"received": "received_at", "observed": "observed_at", "issued": "issued_at"}

RecordResult = Literal["accepted", "duplicate", "conflict"]


@dataclass(frozen=True, slots=True)
class LabelRecord:
    """One label to record, already verified against its prediction id and manifest."""

    prediction_id: str
    model: str
    version: int
    predicted: int
    actual: int
    score: float
    issued_at: float
    observed_at: float
    received_at: float


@dataclass(frozen=True, slots=True)
class CaptureRecord:
    """The inputs of one sampled prediction, as the capture writer stores them."""

    prediction_id: str
    model: str
    version: int
    captured_at: float
    inputs: str  # JSON of one row (docs/lifecycle.md, "What a capture holds")


@dataclass(frozen=True, slots=True)
class LabelledExample:
    """A captured prediction that got a label: one row of production training data."""

    prediction_id: str
    version: int
    captured_at: float
    inputs: str
    predicted: int
    actual: int
    score: float
    observed_at: float


@dataclass(frozen=True, slots=True)
class CellCount:
    """Labelled predictions of one (version, predicted, actual) cell, per time window."""

    version: int
    predicted: int
    actual: int
    all_time: int
    last_day: int
    last_hour: int


def captures_by_model(rows: Sequence[CaptureRecord]) -> dict[str, list[CaptureRecord]]:
    groups: dict[str, list[CaptureRecord]] = {}
    for r in rows:
        groups.setdefault(r.model, []).append(r)
    return groups


def examples_query(
    model: str, version: int | None, since: float | None, until: float | None, mark: str
) -> tuple[str, tuple[object, ...]]:
    """The join of captures and labels, for either store (`mark`: its parameter marker)."""
    where = [f"c.model = {mark}"]
    params: list[object] = [model]
    for clause, value in (
        (f"c.version = {mark}", version),
        (f"c.captured_at >= {mark}", since),
        (f"c.captured_at < {mark}", until),
    ):
        if value is not None:
            where.append(clause)
            params.append(value)
    sql = (
        "SELECT c.prediction_id, c.version, c.captured_at, c.inputs, l.predicted, l.actual,"
        " l.score, l.observed_at FROM captures c JOIN labels l"
        " ON l.prediction_id = c.prediction_id WHERE "
        + " AND ".join(where)
        + " ORDER BY c.captured_at, c.prediction_id"
    )
    return sql, tuple(params)


def labelled_example(row: Sequence[object]) -> LabelledExample:
    pid, version, captured_at, inputs, predicted, actual, score, observed_at = row
    return LabelledExample(
        str(pid),
        int(version),  # type: ignore[call-overload]
        float(captured_at),  # type: ignore[arg-type]
        str(inputs),
        int(predicted),  # type: ignore[call-overload]
        int(actual),  # type: ignore[call-overload]
        float(score),  # type: ignore[arg-type]
        float(observed_at),  # type: ignore[arg-type]
    )


def roles_record(row: Sequence[object]) -> RolesRecord:
    model, primary, shadow, rate, revision, changed_at = row
    return RolesRecord(
        str(model),
        None if primary is None else int(primary),  # type: ignore[call-overload]
        None if shadow is None else int(shadow),  # type: ignore[call-overload]
        float(rate),  # type: ignore[arg-type]
        int(revision),  # type: ignore[call-overload]
        float(changed_at),  # type: ignore[arg-type]
    )
