"""The shared feedback store: ground-truth labels in PostgreSQL, recorded exactly once across
every replica that points at the same database (docs/feedback.md, "A fleet"); with the fleet's
generated prediction-id key, the captures (`postgres_captures.py`) and the lifecycle's tables
(`postgres_lifecycle.py`) on the same pool (`postgres_connection.py`)."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, cast

import psycopg

from service.errors import StoreUnavailableError
from service.monitoring.postgres_captures import PostgresCaptures
from service.monitoring.postgres_lifecycle import PostgresLifecycle
from service.monitoring.records import TIME_COLUMNS, CellCount, LabelRecord, RecordResult

KEY_NAME = "prediction_id_key"

_RECORD = (
    "SELECT r FROM record_labels(%s::text[], %s::text[], %s::int[], %s::int[], %s::int[],"
    " %s::float8[], %s::float8[], %s::float8[], %s::float8[], %s::uuid) AS r"
)


class PostgresStore(PostgresCaptures, PostgresLifecycle):
    """Labels in a PostgreSQL database shared by every replica; the same methods as the SQLite
    `FeedbackStore`.

    Every method blocks: call it off the event loop, from at most `threads` threads at once
    (each holds one pooled connection). Any database failure surfaces as
    `StoreUnavailableError`; the pool reconnects by itself when the database is back.
    """

    def prediction_key(self) -> bytes:
        """The fleet's generated prediction-id key: made by the first replica that asks, the
        same for every replica after it."""
        self._ready()

        def read(conn: psycopg.Connection[Any]) -> str:
            conn.execute(
                "INSERT INTO service_keys (name, value) VALUES (%s, %s)"
                " ON CONFLICT (name) DO NOTHING",
                (KEY_NAME, secrets.token_hex(32)),
            )
            row = conn.execute(
                "SELECT value FROM service_keys WHERE name = %s", (KEY_NAME,)
            ).fetchone()
            return str(row[0]) if row else ""

        key = self._call("reading the prediction id key", read)
        if not key:
            raise StoreUnavailableError("the stored prediction id key is empty")
        return key.encode("utf-8")

    def import_key(self, key: str) -> bool:
        """Keep `key` as the fleet's generated key unless one is stored; True when it was."""
        self._ready()

        def write(conn: psycopg.Connection[Any]) -> bool:
            cursor = conn.execute(
                "INSERT INTO service_keys (name, value) VALUES (%s, %s)"
                " ON CONFLICT (name) DO NOTHING",
                (KEY_NAME, key),
            )
            return cursor.rowcount == 1

        return self._call("storing the prediction id key", write)

    # -- writes ----------------------------------------------------------------------------

    def record(self, items: Sequence[LabelRecord]) -> list[RecordResult]:
        """Record labels in one statement (one round trip, one transaction); returns
        accepted/duplicate/conflict per item.

        The primary key decides: of all the replicas that send a label for one prediction,
        concurrently or later, exactly one gets `accepted`. A different label for a labelled
        prediction is kept in `conflicts` for audit. Either every item is committed before
        this returns, or `StoreUnavailableError` is raised.
        """
        if not items:
            return []
        self._ready()
        params = (
            [i.prediction_id for i in items],
            [i.model for i in items],
            [i.version for i in items],
            [i.predicted for i in items],
            [i.actual for i in items],
            [i.score for i in items],
            [i.issued_at for i in items],
            [i.observed_at for i in items],
            [i.received_at for i in items],
            uuid.uuid4(),  # the same on a retry: rows a lost commit wrote still read accepted
        )

        def write(conn: psycopg.Connection[Any]) -> list[RecordResult]:
            rows = conn.execute(_RECORD, params).fetchall()
            return [cast(RecordResult, row[0]) for row in rows]

        results = self._call("recording labels", write)
        if len(results) != len(items):
            raise StoreUnavailableError(
                f"feedback store answered {len(results)} results for {len(items)} labels"
            )
        return results

    def cell_counts(self, model: str, now: float, time_basis: str = "received") -> list[CellCount]:
        """Label counts per (version, predicted, actual) over all time, the last day and hour."""
        column = TIME_COLUMNS[time_basis]
        rows = self._rows(
            "reading label counts",
            f"SELECT version, predicted, actual, COUNT(*),"
            f" COUNT(*) FILTER (WHERE {column} >= %s), COUNT(*) FILTER (WHERE {column} >= %s)"
            f" FROM labels WHERE model = %s GROUP BY version, predicted, actual",
            (now - 86400.0, now - 3600.0, model),
        )
        return [CellCount(*(int(v) for v in row)) for row in rows]

    def conflict_counts(self, model: str) -> dict[int, int]:
        """Conflicting labels kept for audit, per version of a model."""
        rows = self._rows(
            "reading conflicts",
            "SELECT version, COUNT(*) FROM conflicts WHERE model = %s GROUP BY version",
            (model,),
        )
        return {int(version): int(n) for version, n in rows}

    def labelled_since(self, model: str, version: int, issued_since: float) -> int:
        """Labelled predictions of one model version issued at or after a time."""
        rows = self._rows(
            "reading label counts",
            "SELECT COUNT(*) FROM labels WHERE model = %s AND version = %s AND issued_at >= %s",
            (model, version, issued_since),
        )
        return int(rows[0][0])

    def conflicts(self, prediction_id: str) -> list[tuple[int, int, float]]:
        """The audit trail of one prediction: (kept label, sent label, received_at) rows."""
        rows = self._rows(
            "reading conflicts",
            "SELECT kept_actual, sent_actual, received_at FROM conflicts"
            " WHERE prediction_id = %s ORDER BY id",
            (prediction_id,),
        )
        return [(int(a), int(b), float(t)) for a, b, t in rows]

    def label_of(self, prediction_id: str) -> int | None:
        """The recorded label (class index) of a prediction, or None when it has none."""
        rows = self._rows(
            "reading a label",
            "SELECT actual FROM labels WHERE prediction_id = %s",
            (prediction_id,),
        )
        return int(rows[0][0]) if rows else None

    def models(self) -> Iterable[str]:
        """Models that have at least one label."""
        return [
            str(r[0]) for r in self._rows("listing models", "SELECT DISTINCT model FROM labels", ())
        ]
