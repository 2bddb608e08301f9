"""Shadow decisions, promotion decisions and the roles in force, in the SQLite feedback store
(docs/lifecycle.md, "Shadow serving and promotion")."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from service.monitoring.decisions import PairCell, PromotionRecord, RolesRecord, ShadowDecision
from service.monitoring.records import roles_record
from service.monitoring.sqlite_file import SQLiteFile


class SQLiteLifecycle(SQLiteFile):
    """The shadow_decisions, promotions and roles tables of the SQLite store."""

    def record_shadow_decisions(self, items: Sequence[ShadowDecision]) -> int:
        """Keep shadow decisions (one per prediction id and version; a repeat is ignored), in
        one transaction; returns how many were new."""
        if not items:
            return 0
        with self._lock:
            try:
                db = self._ready()
                db.execute("BEGIN IMMEDIATE")
                before = db.total_changes
                db.executemany(
                    "INSERT INTO shadow_decisions (prediction_id, model, version, predicted,"
                    " score, decided_at) VALUES (?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (prediction_id, version) DO NOTHING",
                    [
                        (d.prediction_id, d.model, d.version, d.predicted, d.score, d.decided_at)
                        for d in items
                    ],
                )
                added = db.total_changes - before
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise self._fail(exc, "recording shadow decisions") from exc
        return int(added)

    def shadow_decisions_of(self, prediction_ids: Sequence[str]) -> list[ShadowDecision]:
        """The shadow decisions kept for these prediction ids."""
        if not prediction_ids:
            return []
        marks = ",".join("?" * len(prediction_ids))
        with self._lock:
            try:
                rows = (
                    self._ready()
                    .execute(
                        "SELECT prediction_id, model, version, predicted, score, decided_at"
                        f" FROM shadow_decisions WHERE prediction_id IN ({marks})",
                        tuple(prediction_ids),
                    )
                    .fetchall()
                )
            except sqlite3.Error as exc:
                raise self._fail(exc, "reading shadow decisions") from exc
        return [
            ShadowDecision(str(p), str(m), int(v), int(c), float(s), float(t))
            for p, m, v, c, s, t in rows
        ]

    def paired_cells(self, model: str, primary: int, shadow: int) -> list[PairCell]:
        """Labelled predictions of the primary version that the shadow version also decided,
        counted per (primary's class, shadow's class, actual class)."""
        with self._lock:
            try:
                rows = (
                    self._ready()
                    .execute(
                        "SELECT l.predicted, s.predicted, l.actual, COUNT(*)"
                        " FROM labels l JOIN shadow_decisions s"
                        " ON s.prediction_id = l.prediction_id AND s.version = ?"
                        " WHERE l.model = ? AND l.version = ?"
                        " GROUP BY l.predicted, s.predicted, l.actual",
                        (shadow, model, primary),
                    )
                    .fetchall()
                )
            except sqlite3.Error as exc:
                raise self._fail(exc, "reading paired labels") from exc
        return [PairCell(*(int(v) for v in row)) for row in rows]

    def shadow_decided(self, model: str, version: int) -> int:
        """Shadow decisions kept for a model version."""
        with self._lock:
            try:
                row = (
                    self._ready()
                    .execute(
                        "SELECT COUNT(*) FROM shadow_decisions WHERE model = ? AND version = ?",
                        (model, version),
                    )
                    .fetchone()
                )
            except sqlite3.Error as exc:
                raise self._fail(exc, "counting shadow decisions") from exc
        return int(row[0])

    def record_promotion(self, record: PromotionRecord) -> int:
        """Keep a promotion decision or rollback; returns its id."""
        with self._lock:
            try:
                db = self._ready()
                db.execute("BEGIN IMMEDIATE")
                cursor = db.execute(
                    "INSERT INTO promotions (model, primary_version, shadow_version, decided_at,"
                    " outcome, requested_by, figures) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.model,
                        record.primary_version,
                        record.shadow_version,
                        record.decided_at,
                        record.outcome,
                        record.requested_by,
                        record.figures,
                    ),
                )
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise self._fail(exc, "recording a promotion") from exc
        return int(cursor.lastrowid or 0)

    def promotions(self, model: str, limit: int = 100) -> list[PromotionRecord]:
        """A model's promotion decisions and rollbacks, newest first."""
        with self._lock:
            try:
                rows = (
                    self._ready()
                    .execute(
                        "SELECT model, primary_version, shadow_version, decided_at, outcome,"
                        " requested_by, figures, id FROM promotions WHERE model = ?"
                        " ORDER BY decided_at DESC, id DESC LIMIT ?",
                        (model, limit),
                    )
                    .fetchall()
                )
            except sqlite3.Error as exc:
                raise self._fail(exc, "reading promotions") from exc
        return [
            PromotionRecord(str(m), int(p), int(s), float(t), str(o), str(r), str(f), int(i))
            for m, p, s, t, o, r, f, i in rows
        ]

    # -- roles in force (docs/lifecycle.md, "Roles") ---------------------------------------

    def stored_roles(self) -> list[RolesRecord]:
        """The roles kept for every model that has some (one row per model)."""
        with self._lock:
            try:
                rows = (
                    self._ready()
                    .execute(
                        "SELECT model, primary_version, shadow_version, sample_rate, revision,"
                        " changed_at FROM roles ORDER BY model"
                    )
                    .fetchall()
                )
            except sqlite3.Error as exc:
                raise self._fail(exc, "reading the roles") from exc
        return [roles_record(row) for row in rows]

    def keep_roles(self, record: RolesRecord, revision: int | None) -> int | None:
        """Replace a model's roles if they are still at `revision` (None: none stored yet);
        returns the new revision, or None when another process changed them first."""
        with self._lock:
            try:
                db = self._ready()
                db.execute("BEGIN IMMEDIATE")
                if revision is None:
                    cursor = db.execute(
                        "INSERT INTO roles (model, primary_version, shadow_version, sample_rate,"
                        " revision, changed_at) VALUES (?, ?, ?, ?, 1, ?)"
                        " ON CONFLICT (model) DO NOTHING",
                        (
                            record.model,
                            record.primary,
                            record.shadow,
                            record.sample_rate,
                            record.changed_at,
                        ),
                    )
                else:
                    cursor = db.execute(
                        "UPDATE roles SET primary_version = ?, shadow_version = ?,"
                        " sample_rate = ?, revision = revision + 1, changed_at = ?"
                        " WHERE model = ? AND revision = ?",
                        (
                            record.primary,
                            record.shadow,
                            record.sample_rate,
                            record.changed_at,
                            record.model,
                            revision,
                        ),
                    )
                kept = cursor.rowcount == 1
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise self._fail(exc, "keeping the roles") from exc
        return (revision or 0) + 1 if kept else None

    def clear_roles(self, model: str) -> bool:
        """Forget a model's stored roles (its roles.json or VERDICT_SHADOWS apply again);
        True when it had some."""
        with self._lock:
            try:
                cursor = self._ready().execute("DELETE FROM roles WHERE model = ?", (model,))
            except sqlite3.Error as exc:
                raise self._fail(exc, "clearing the roles") from exc
        return cursor.rowcount == 1
