"""Shadow decisions, promotion decisions and the roles in force, in the PostgreSQL feedback
store that every replica shares (docs/lifecycle.md, "Shadow serving and promotion")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import psycopg

from service.monitoring.decisions import PairCell, PromotionRecord, RolesRecord, ShadowDecision
from service.monitoring.postgres_connection import PostgresConnection
from service.monitoring.records import roles_record


class PostgresLifecycle(PostgresConnection):
    """The shadow_decisions, promotions and roles tables of the PostgreSQL store."""

    def record_shadow_decisions(self, items: Sequence[ShadowDecision]) -> int:
        """Keep shadow decisions (one per prediction id and version; a repeat is ignored), in
        one statement; returns how many were new."""
        if not items:
            return 0
        self._ready()
        params = (
            [d.prediction_id for d in items],
            [d.model for d in items],
            [d.version for d in items],
            [d.predicted for d in items],
            [d.score for d in items],
            [d.decided_at for d in items],
        )

        def write(conn: psycopg.Connection[Any]) -> int:
            cursor = conn.execute(
                "INSERT INTO shadow_decisions (prediction_id, model, version, predicted, score,"
                " decided_at) SELECT * FROM unnest(%s::text[], %s::text[], %s::int[],"
                " %s::int[], %s::float8[], %s::float8[])"
                " ON CONFLICT (prediction_id, version) DO NOTHING",
                params,
            )
            return int(cursor.rowcount)

        return self._call("recording shadow decisions", write)

    def shadow_decisions_of(self, prediction_ids: Sequence[str]) -> list[ShadowDecision]:
        """The shadow decisions kept for these prediction ids."""
        if not prediction_ids:
            return []
        rows = self._rows(
            "reading shadow decisions",
            "SELECT prediction_id, model, version, predicted, score, decided_at"
            " FROM shadow_decisions WHERE prediction_id = ANY(%s::text[])",
            (list(prediction_ids),),
        )
        return [
            ShadowDecision(str(p), str(m), int(v), int(c), float(s), float(t))
            for p, m, v, c, s, t in rows
        ]

    def paired_cells(self, model: str, primary: int, shadow: int) -> list[PairCell]:
        """Labelled predictions of the primary version that the shadow version also decided,
        counted per (primary's class, shadow's class, actual class)."""
        rows = self._rows(
            "reading paired labels",
            "SELECT l.predicted, s.predicted, l.actual, COUNT(*)"
            " FROM labels l JOIN shadow_decisions s"
            " ON s.prediction_id = l.prediction_id AND s.version = %s"
            " WHERE l.model = %s AND l.version = %s"
            " GROUP BY l.predicted, s.predicted, l.actual",
            (shadow, model, primary),
        )
        return [PairCell(*(int(v) for v in row)) for row in rows]

    def shadow_decided(self, model: str, version: int) -> int:
        """Shadow decisions kept for a model version."""
        rows = self._rows(
            "counting shadow decisions",
            "SELECT COUNT(*) FROM shadow_decisions WHERE model = %s AND version = %s",
            (model, version),
        )
        return int(rows[0][0])

    def record_promotion(self, record: PromotionRecord) -> int:
        """Keep a promotion decision or rollback; returns its id."""
        self._ready()
        params = (
            record.model,
            record.primary_version,
            record.shadow_version,
            record.decided_at,
            record.outcome,
            record.requested_by,
            record.figures,
        )

        def write(conn: psycopg.Connection[Any]) -> int:
            row = conn.execute(
                "INSERT INTO promotions (model, primary_version, shadow_version, decided_at,"
                " outcome, requested_by, figures) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                " RETURNING id",
                params,
            ).fetchone()
            return int(row[0]) if row else 0

        return self._call("recording a promotion", write)

    def promotions(self, model: str, limit: int = 100) -> list[PromotionRecord]:
        """A model's promotion decisions and rollbacks, newest first."""
        rows = self._rows(
            "reading promotions",
            "SELECT model, primary_version, shadow_version, decided_at, outcome, requested_by,"
            " figures, id FROM promotions WHERE model = %s"
            " ORDER BY decided_at DESC, id DESC LIMIT %s",
            (model, limit),
        )
        return [
            PromotionRecord(str(m), int(p), int(s), float(t), str(o), str(r), str(f), int(i))
            for m, p, s, t, o, r, f, i in rows
        ]

    # -- roles in force (docs/lifecycle.md, "Roles") ---------------------------------------

    def stored_roles(self) -> list[RolesRecord]:
        """The roles kept for every model that has some (one row per model)."""
        rows = self._rows(
            "reading the roles",
            "SELECT model, primary_version, shadow_version, sample_rate, revision, changed_at"
            " FROM roles ORDER BY model",
            (),
        )
        return [roles_record(row) for row in rows]

    def keep_roles(self, record: RolesRecord, revision: int | None) -> int | None:
        """Replace a model's roles if they are still at `revision` (None: none stored yet),
        whichever replica asks; returns the new revision, or None when another replica changed
        them first."""
        self._ready()
        values = (record.primary, record.shadow, record.sample_rate, record.changed_at)
        if revision is None:
            sql = (
                "INSERT INTO roles (primary_version, shadow_version, sample_rate, changed_at,"
                " model, revision) VALUES (%s, %s, %s, %s, %s, 1)"
                " ON CONFLICT (model) DO NOTHING RETURNING revision"
            )
            params: tuple[Any, ...] = (*values, record.model)
        else:
            sql = (
                "UPDATE roles SET primary_version = %s, shadow_version = %s, sample_rate = %s,"
                " changed_at = %s, revision = revision + 1 WHERE model = %s AND revision = %s"
                " RETURNING revision"
            )
            params = (*values, record.model, revision)

        def write(conn: psycopg.Connection[Any]) -> int | None:
            row = conn.execute(cast(Any, sql), params).fetchone()
            return None if row is None else int(row[0])

        return self._call("keeping the roles", write)

    def clear_roles(self, model: str) -> bool:
        """Forget a model's stored roles (its roles.json or VERDICT_SHADOWS apply again);
        True when it had some."""
        self._ready()
        return self._call(
            "clearing the roles",
            lambda conn: conn.execute("DELETE FROM roles WHERE model = %s", (model,)).rowcount == 1,
        )
