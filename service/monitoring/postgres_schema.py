"""The PostgreSQL feedback store's schema: versioned migrations, applied by one replica at a
time under an advisory lock (docs/feedback.md, "A fleet")."""

from __future__ import annotations

import logging
from typing import Any, cast

import psycopg

log = logging.getLogger(__name__)

# Key of the advisory lock that serialises migrations across replicas starting together.
MIGRATION_LOCK = 0x76657264696374  # "verdict"

# Ordered migrations: entry i takes the schema from version i to i + 1 (rows of
# schema_migrations). Append, never edit. Each runs in one transaction with the others.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE labels (
        prediction_id TEXT PRIMARY KEY,
        model TEXT NOT NULL,
        version INTEGER NOT NULL,
        predicted INTEGER NOT NULL,
        actual INTEGER NOT NULL,
        score DOUBLE PRECISION NOT NULL,
        issued_at DOUBLE PRECISION NOT NULL,
        observed_at DOUBLE PRECISION NOT NULL,
        received_at DOUBLE PRECISION NOT NULL,
        batch UUID NOT NULL
    );
    CREATE INDEX labels_model_received ON labels (model, received_at);
    CREATE TABLE conflicts (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        prediction_id TEXT NOT NULL,
        model TEXT NOT NULL,
        version INTEGER NOT NULL,
        kept_actual INTEGER NOT NULL,
        sent_actual INTEGER NOT NULL,
        observed_at DOUBLE PRECISION NOT NULL,
        received_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX conflicts_prediction ON conflicts (prediction_id);
    CREATE INDEX conflicts_model ON conflicts (model, version);
    CREATE TABLE service_keys (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    -- One call per request: insert every first label (ids in order, so concurrent batches
    -- take their row locks in one order and never deadlock), then, in a fresh snapshot
    -- that sees what other replicas committed, judge each item against the stored label
    -- and keep the conflicting ones for audit. `batch` marks the rows this call inserted,
    -- also when a retry follows a commit whose answer was lost.
    CREATE FUNCTION record_labels(
        p_ids TEXT[], p_models TEXT[], p_versions INTEGER[], p_predicted INTEGER[],
        p_actual INTEGER[], p_scores DOUBLE PRECISION[], p_issued DOUBLE PRECISION[],
        p_observed DOUBLE PRECISION[], p_received DOUBLE PRECISION[], p_batch UUID
    ) RETURNS SETOF TEXT LANGUAGE plpgsql VOLATILE AS $$
    BEGIN
        INSERT INTO labels (prediction_id, model, version, predicted, actual, score,
                            issued_at, observed_at, received_at, batch)
        SELECT DISTINCT ON (t.id) t.id, t.model, t.version, t.predicted, t.actual, t.score,
               t.issued, t.observed, t.received, p_batch
        FROM unnest(p_ids, p_models, p_versions, p_predicted, p_actual, p_scores, p_issued,
                    p_observed, p_received) WITH ORDINALITY
             AS t(id, model, version, predicted, actual, score, issued, observed, received, n)
        ORDER BY t.id, t.n
        ON CONFLICT (prediction_id) DO NOTHING;

        WITH t AS (
            SELECT u.*, min(u.n) OVER (PARTITION BY u.id) AS first_n
            FROM unnest(p_ids, p_models, p_versions, p_actual, p_observed, p_received)
                 WITH ORDINALITY AS u(id, model, version, actual, observed, received, n)
        )
        INSERT INTO conflicts (prediction_id, model, version, kept_actual, sent_actual,
                               observed_at, received_at)
        SELECT t.id, t.model, t.version, l.actual, t.actual, t.observed, t.received
        FROM t JOIN labels l ON l.prediction_id = t.id
        WHERE l.actual <> t.actual AND NOT (l.batch = p_batch AND t.n = t.first_n)
        ORDER BY t.n;

        RETURN QUERY
        WITH t AS (
            SELECT u.*, min(u.n) OVER (PARTITION BY u.id) AS first_n
            FROM unnest(p_ids, p_actual) WITH ORDINALITY AS u(id, actual, n)
        )
        SELECT CASE
                 WHEN l.batch = p_batch AND t.n = t.first_n THEN 'accepted'
                 WHEN l.actual = t.actual THEN 'duplicate'
                 ELSE 'conflict'
               END
        FROM t JOIN labels l ON l.prediction_id = t.id
        ORDER BY t.n;
    END
    $$;
    """,
    # 2: the loop from production traffic to a challenger (docs/lifecycle.md). `inputs` is
    # the JSON of one captured row; a shadow version's decision is kept under the primary's
    # prediction id, so one label scores both; promotions keep what each decision rested on.
    """
    CREATE TABLE captures (
        prediction_id TEXT PRIMARY KEY,
        model TEXT NOT NULL,
        version INTEGER NOT NULL,
        captured_at DOUBLE PRECISION NOT NULL,
        inputs TEXT NOT NULL
    );
    CREATE INDEX captures_model_captured ON captures (model, captured_at);
    CREATE TABLE shadow_decisions (
        prediction_id TEXT NOT NULL,
        model TEXT NOT NULL,
        version INTEGER NOT NULL,
        predicted INTEGER NOT NULL,
        score DOUBLE PRECISION NOT NULL,
        decided_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (prediction_id, version)
    );
    CREATE INDEX shadow_decisions_model ON shadow_decisions (model, version, decided_at);
    CREATE TABLE promotions (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        model TEXT NOT NULL,
        primary_version INTEGER NOT NULL,
        shadow_version INTEGER NOT NULL,
        decided_at DOUBLE PRECISION NOT NULL,
        outcome TEXT NOT NULL,
        requested_by TEXT NOT NULL,
        figures TEXT NOT NULL
    );
    CREATE INDEX promotions_model ON promotions (model, decided_at);
    """,
    # 3: the roles in force (primary, shadow, sample rate), one row per model, so that every
    # replica serves the same ones; `revision` makes a change compare-and-set.
    """
    CREATE TABLE roles (
        model TEXT PRIMARY KEY,
        primary_version INTEGER,
        shadow_version INTEGER,
        sample_rate DOUBLE PRECISION NOT NULL,
        revision BIGINT NOT NULL,
        changed_at DOUBLE PRECISION NOT NULL
    );
    """,
)


def schema_version(conn: psycopg.Connection[Any]) -> int:
    """The schema version of the database (0: none yet)."""
    row = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()
    return int(row[0]) if row else 0


def migrate_schema(conn: psycopg.Connection[Any]) -> int:
    """Apply the missing migrations in one transaction; returns the version reached. An
    up-to-date schema needs no write; a newer one (a later release) is refused."""
    current = schema_version(conn)
    if current > len(MIGRATIONS):
        raise _NewerSchemaError(current)
    if current == len(MIGRATIONS):
        return current
    with conn.transaction():
        # A large table may take a while to migrate; the other replicas wait on the lock.
        conn.execute("SET LOCAL statement_timeout = 0")
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        current = schema_version(conn)
        if current > len(MIGRATIONS):
            raise _NewerSchemaError(current)
        for step in range(current, len(MIGRATIONS)):
            conn.execute(cast(Any, MIGRATIONS[step]))
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (step + 1,))
        log.info("feedback store schema migrated from version %d to %d", current, len(MIGRATIONS))
    return len(MIGRATIONS)


class _NewerSchemaError(psycopg.Error):
    def __init__(self, found: int) -> None:
        super().__init__(
            f"schema version {found} is newer than this service knows ({len(MIGRATIONS)})"
        )
