"""Captured inputs in the SQLite feedback store: stored under a per-model cap, pruned by age,
and joined with their labels as production examples (docs/lifecycle.md, "Capture")."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from service.monitoring.records import (
    CaptureRecord,
    LabelledExample,
    captures_by_model,
    examples_query,
    labelled_example,
)
from service.monitoring.sqlite_file import SQLiteFile


class SQLiteCaptures(SQLiteFile):
    """The captures table of the SQLite store."""

    def capture(self, rows: Sequence[CaptureRecord], max_rows: int) -> int:
        """Store captured inputs in one transaction, at most `max_rows` stored rows per model
        (rows beyond are not stored); returns how many were stored. A prediction id already
        captured is kept as it is."""
        if not rows:
            return 0
        with self._lock:
            try:
                db = self._ready()
                db.execute("BEGIN IMMEDIATE")
                stored = 0
                for model, group in captures_by_model(rows).items():
                    held = db.execute(
                        "SELECT COUNT(*) FROM captures WHERE model = ?", (model,)
                    ).fetchone()[0]
                    room = max(0, max_rows - int(held))
                    for r in group[:room]:
                        stored += db.execute(
                            "INSERT INTO captures (prediction_id, model, version, captured_at,"
                            " inputs) VALUES (?, ?, ?, ?, ?)"
                            " ON CONFLICT (prediction_id) DO NOTHING",
                            (r.prediction_id, r.model, r.version, r.captured_at, r.inputs),
                        ).rowcount
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise self._fail(exc, "storing captured inputs") from exc
        return stored

    def prune_captures(self, before: float, model: str | None = None) -> int:
        """Delete the captures made before a time (of one model, or of all); returns how many."""
        sql = "DELETE FROM captures WHERE captured_at < ?"
        params: tuple[object, ...] = (before,)
        if model is not None:
            sql, params = sql + " AND model = ?", (before, model)
        with self._lock:
            try:
                cursor = self._ready().execute(sql, params)
            except sqlite3.Error as exc:
                raise self._fail(exc, "pruning captured inputs") from exc
        return int(cursor.rowcount)

    def captured(self, model: str) -> int:
        """Captured rows of a model held now."""
        with self._lock:
            try:
                row = (
                    self._ready()
                    .execute("SELECT COUNT(*) FROM captures WHERE model = ?", (model,))
                    .fetchone()
                )
            except sqlite3.Error as exc:
                raise self._fail(exc, "counting captured inputs") from exc
        return int(row[0])

    def labelled_examples(
        self,
        model: str,
        version: int | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[LabelledExample]:
        """Captured predictions of a model that have a label, oldest capture first; `version`
        and the window [since, until) on the capture time narrow them."""
        sql, params = examples_query(model, version, since, until, "?")
        with self._lock:
            try:
                rows = self._ready().execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._fail(exc, "reading labelled examples") from exc
        return [labelled_example(row) for row in rows]
