"""`verdict-store copy`: a SQLite store's rows added to the PostgreSQL store, table by table,
so that a second copy adds nothing (docs/deploy.md, "Moving from SQLite to PostgreSQL")."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, cast

import psycopg

from service.monitoring.postgres import PostgresStore

# The `batch` of rows copied from another store (`verdict-store copy`).
COPIED = uuid.UUID(int=0)

# What `verdict-store copy` brings from a SQLite store, table by table, in this order: the
# columns read there, and the statement that adds them here (one array parameter per column).
# Rows already here stay and are not counted: labels, captures, shadow decisions and roles by
# their key (the roles a model already has here win); audited conflicts and promotions, which
# have no key in common, by what they hold.
COPIED_TABLES: dict[str, tuple[str, str]] = {
    "labels": (
        "prediction_id, model, version, predicted, actual, score, issued_at, observed_at,"
        " received_at",
        "INSERT INTO labels (prediction_id, model, version, predicted, actual, score,"
        " issued_at, observed_at, received_at, batch)"
        f" SELECT *, '{COPIED}'::uuid FROM unnest(%s::text[], %s::text[], %s::int[], %s::int[],"
        " %s::int[], %s::float8[], %s::float8[], %s::float8[], %s::float8[])"
        " ON CONFLICT (prediction_id) DO NOTHING",
    ),
    "conflicts": (
        "prediction_id, model, version, kept_actual, sent_actual, observed_at, received_at",
        "INSERT INTO conflicts (prediction_id, model, version, kept_actual, sent_actual,"
        " observed_at, received_at)"
        " SELECT * FROM unnest(%s::text[], %s::text[], %s::int[], %s::int[], %s::int[],"
        " %s::float8[], %s::float8[]) AS c(p, m, v, k, s, o, r)"
        " WHERE NOT EXISTS (SELECT 1 FROM conflicts x WHERE x.prediction_id = c.p"
        " AND x.sent_actual = c.s AND x.received_at = c.r)",
    ),
    "captures": (
        "prediction_id, model, version, captured_at, inputs",
        "INSERT INTO captures (prediction_id, model, version, captured_at, inputs)"
        " SELECT * FROM unnest(%s::text[], %s::text[], %s::int[], %s::float8[], %s::text[])"
        " ON CONFLICT (prediction_id) DO NOTHING",
    ),
    "shadow_decisions": (
        "prediction_id, model, version, predicted, score, decided_at",
        "INSERT INTO shadow_decisions (prediction_id, model, version, predicted, score,"
        " decided_at) SELECT * FROM unnest(%s::text[], %s::text[], %s::int[], %s::int[],"
        " %s::float8[], %s::float8[]) ON CONFLICT (prediction_id, version) DO NOTHING",
    ),
    "promotions": (
        "model, primary_version, shadow_version, decided_at, outcome, requested_by, figures",
        "INSERT INTO promotions (model, primary_version, shadow_version, decided_at, outcome,"
        " requested_by, figures)"
        " SELECT * FROM unnest(%s::text[], %s::int[], %s::int[], %s::float8[], %s::text[],"
        " %s::text[], %s::text[]) AS c(m, p, s, t, o, r, f)"
        " WHERE NOT EXISTS (SELECT 1 FROM promotions x WHERE x.model = c.m"
        " AND x.primary_version = c.p AND x.shadow_version = c.s AND x.decided_at = c.t"
        " AND x.outcome = c.o AND x.requested_by = c.r)",
    ),
    "roles": (
        "model, primary_version, shadow_version, sample_rate, revision, changed_at",
        "INSERT INTO roles (model, primary_version, shadow_version, sample_rate, revision,"
        " changed_at) SELECT * FROM unnest(%s::text[], %s::int[], %s::int[], %s::float8[],"
        " %s::int8[], %s::float8[]) ON CONFLICT (model) DO NOTHING",
    ),
}


def copy_rows(store: PostgresStore, table: str, rows: Sequence[tuple[Any, ...]]) -> int:
    """Add rows of one of `COPIED_TABLES` (its columns, in order) from another store, in one
    transaction; what is already here stays. Returns the rows added."""
    if not rows:
        return 0
    store.migrate()
    columns, insert = COPIED_TABLES[table]
    params = [list(column) for column in zip(*rows, strict=True)]
    if len(params) != len(columns.split(",")):
        raise ValueError(f"{table} rows have {len(params)} columns, not {columns}")

    def write(conn: psycopg.Connection[Any]) -> int:
        with conn.transaction():
            return int(conn.execute(cast(Any, insert), params).rowcount)

    return store._call(f"copying {table.replace('_', ' ')}", write)
