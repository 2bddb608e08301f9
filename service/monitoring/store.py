"""The feedback store: ground-truth labels in SQLite, recorded exactly once and durably; with
the captures (`sqlite_captures.py`) and the lifecycle's tables (`sqlite_lifecycle.py`) on the
same file (`sqlite_file.py`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

from service.monitoring.records import TIME_COLUMNS, CellCount, LabelRecord, RecordResult
from service.monitoring.records import LabelledExample as LabelledExample  # examples.py's import
from service.monitoring.sqlite_captures import SQLiteCaptures
from service.monitoring.sqlite_lifecycle import SQLiteLifecycle


class FeedbackStore(SQLiteCaptures, SQLiteLifecycle):
    """The SQLite feedback store: every method of `LabelStore` (`stores.py`) on one file.

    `path` is a file path or a SQLite `file:` URI (e.g. `file:/data/feedback.db?mode=ro`).
    Every method blocks: call it off the event loop (`asyncio.to_thread`). Any SQLite failure
    surfaces as `StoreUnavailableError`, and the connection is reopened on the next call.
    """

    # -- writes ----------------------------------------------------------------------------

    def record(self, items: Sequence[LabelRecord]) -> list[RecordResult]:
        """Record labels in one transaction; returns accepted/duplicate/conflict per item.

        A label counts once per prediction id, whatever the number of times it is sent. A
        different label for an already labelled prediction is not applied but kept in the
        `conflicts` table for audit. Either every item is committed (fsynced) before this
        returns, or none is and `StoreUnavailableError` is raised.
        """
        if not items:
            return []
        with self._lock:
            try:
                db = self._ready()
                db.execute("BEGIN IMMEDIATE")
                results: list[RecordResult] = []
                for item in items:
                    cursor = db.execute(
                        "INSERT INTO labels (prediction_id, model, version, predicted, actual,"
                        " score, issued_at, observed_at, received_at)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                        " ON CONFLICT (prediction_id) DO NOTHING",
                        (
                            item.prediction_id,
                            item.model,
                            item.version,
                            item.predicted,
                            item.actual,
                            item.score,
                            item.issued_at,
                            item.observed_at,
                            item.received_at,
                        ),
                    )
                    if cursor.rowcount == 1:
                        results.append("accepted")
                        continue
                    kept = db.execute(
                        "SELECT actual FROM labels WHERE prediction_id = ?", (item.prediction_id,)
                    ).fetchone()[0]
                    if kept == item.actual:
                        results.append("duplicate")
                        continue
                    db.execute(
                        "INSERT INTO conflicts (prediction_id, model, version, kept_actual,"
                        " sent_actual, observed_at, received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            item.prediction_id,
                            item.model,
                            item.version,
                            kept,
                            item.actual,
                            item.observed_at,
                            item.received_at,
                        ),
                    )
                    results.append("conflict")
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise self._fail(exc, "recording labels") from exc
            return results

    # -- reads -----------------------------------------------------------------------------

    def cell_counts(self, model: str, now: float, time_basis: str = "received") -> list[CellCount]:
        """Label counts per (version, predicted, actual) over all time, the last day and hour."""
        column = TIME_COLUMNS[time_basis]
        with self._lock:
            try:
                rows = (
                    self._ready()
                    .execute(
                        f"SELECT version, predicted, actual, COUNT(*),"
                        f" SUM({column} >= ?), SUM({column} >= ?)"
                        f" FROM labels WHERE model = ? GROUP BY version, predicted, actual",
                        (now - 86400.0, now - 3600.0, model),
                    )
                    .fetchall()
                )
            except sqlite3.Error as exc:
                raise self._fail(exc, "reading label counts") from exc
        return [CellCount(*row) for row in rows]

    def conflict_counts(self, model: str) -> dict[int, int]:
        """Conflicting labels kept for audit, per version of a model."""
        with self._lock:
            try:
                rows = (
                    self._ready()
                    .execute(
                        "SELECT version, COUNT(*) FROM conflicts WHERE model = ? GROUP BY version",
                        (model,),
                    )
                    .fetchall()
                )
            except sqlite3.Error as exc:
                raise self._fail(exc, "reading conflicts") from exc
        return {int(version): int(n) for version, n in rows}

    def labelled_since(self, model: str, version: int, issued_since: float) -> int:
        """Labelled predictions of one model version issued at or after a time."""
        with self._lock:
            try:
                row = (
                    self._ready()
                    .execute(
                        "SELECT COUNT(*) FROM labels"
                        " WHERE model = ? AND version = ? AND issued_at >= ?",
                        (model, version, issued_since),
                    )
                    .fetchone()
                )
            except sqlite3.Error as exc:
                raise self._fail(exc, "reading label counts") from exc
        return int(row[0])

    def conflicts(self, prediction_id: str) -> list[tuple[int, int, float]]:
        """The audit trail of one prediction: (kept label, sent label, received_at) rows."""
        with self._lock:
            try:
                rows = (
                    self._ready()
                    .execute(
                        "SELECT kept_actual, sent_actual, received_at FROM conflicts"
                        " WHERE prediction_id = ? ORDER BY id",
                        (prediction_id,),
                    )
                    .fetchall()
                )
            except sqlite3.Error as exc:
                raise self._fail(exc, "reading conflicts") from exc
        return [(int(a), int(b), float(t)) for a, b, t in rows]

    def label_of(self, prediction_id: str) -> int | None:
        """The recorded label (class index) of a prediction, or None when it has none."""
        with self._lock:
            try:
                row = (
                    self._ready()
                    .execute("SELECT actual FROM labels WHERE prediction_id = ?", (prediction_id,))
                    .fetchone()
                )
            except sqlite3.Error as exc:
                raise self._fail(exc, "reading a label") from exc
        return None if row is None else int(row[0])

    def models(self) -> Iterable[str]:
        """Models that have at least one label."""
        with self._lock:
            try:
                rows = self._ready().execute("SELECT DISTINCT model FROM labels").fetchall()
            except sqlite3.Error as exc:
                raise self._fail(exc, "listing models") from exc
        return [str(r[0]) for r in rows]
