"""Captured inputs in the PostgreSQL feedback store: stored under a per-model cap that holds
across replicas, pruned by age, and joined with their labels (docs/lifecycle.md, "Capture")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from service.monitoring.postgres_connection import PostgresConnection
from service.monitoring.records import (
    CaptureRecord,
    LabelledExample,
    captures_by_model,
    examples_query,
    labelled_example,
)

# Namespace of the transaction-scoped advisory locks that keep the stored-rows cap of captures
# per model exact when replicas store captures at the same moment.
CAPTURE_LOCK = 0x63617074  # "capt"


class PostgresCaptures(PostgresConnection):
    """The captures table of the PostgreSQL store."""

    def capture(self, rows: Sequence[CaptureRecord], max_rows: int) -> int:
        """Store captured inputs in one transaction, at most `max_rows` stored rows per model
        across every replica (rows beyond are not stored); returns how many were stored."""
        if not rows:
            return 0
        self._ready()
        groups = captures_by_model(rows)

        def write(conn: psycopg.Connection[Any]) -> int:
            stored = 0
            with conn.transaction():
                for model, group in sorted(groups.items()):
                    # Replicas storing captures of one model take turns, so the cap holds.
                    conn.execute(
                        "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (CAPTURE_LOCK, model)
                    )
                    row = conn.execute(
                        "SELECT COUNT(*) FROM captures WHERE model = %s", (model,)
                    ).fetchone()
                    room = max(0, max_rows - int(row[0] if row else 0))
                    take = group[:room]
                    if not take:
                        continue
                    stored += conn.execute(
                        "INSERT INTO captures (prediction_id, model, version, captured_at, inputs)"
                        " SELECT * FROM unnest(%s::text[], %s::text[], %s::int[], %s::float8[],"
                        " %s::text[]) ON CONFLICT (prediction_id) DO NOTHING",
                        (
                            [r.prediction_id for r in take],
                            [r.model for r in take],
                            [r.version for r in take],
                            [r.captured_at for r in take],
                            [r.inputs for r in take],
                        ),
                    ).rowcount
            return stored

        return self._call("storing captured inputs", write)

    def prune_captures(self, before: float, model: str | None = None) -> int:
        """Delete the captures made before a time (of one model, or of all); returns how many."""
        self._ready()
        sql = "DELETE FROM captures WHERE captured_at < %s"
        params: tuple[Any, ...] = (before,)
        if model is not None:
            sql, params = sql + " AND model = %s", (before, model)
        return self._call(
            "pruning captured inputs", lambda conn: int(conn.execute(sql, params).rowcount)
        )

    def captured(self, model: str) -> int:
        """Captured rows of a model held now."""
        rows = self._rows(
            "counting captured inputs", "SELECT COUNT(*) FROM captures WHERE model = %s", (model,)
        )
        return int(rows[0][0])

    def labelled_examples(
        self,
        model: str,
        version: int | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[LabelledExample]:
        """Captured predictions of a model that have a label, oldest capture first; `version`
        and the window [since, until) on the capture time narrow them."""
        sql, params = examples_query(model, version, since, until, "%s")
        rows = self._rows("reading labelled examples", sql, params)
        return [labelled_example(row) for row in rows]
