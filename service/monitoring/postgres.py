"""The shared feedback store: ground-truth labels in PostgreSQL, recorded exactly once across
every replica that points at the same database (docs/feedback.md, "A fleet")."""

from __future__ import annotations

import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar, cast

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from service.errors import StoreUnavailableError
from service.monitoring.decisions import PairCell, PromotionRecord, RolesRecord, ShadowDecision
from service.monitoring.postgres_schema import migrate_schema, schema_version
from service.monitoring.store import (
    TIME_COLUMNS,
    CaptureRecord,
    CellCount,
    LabelledExample,
    LabelRecord,
    RecordResult,
    captures_by_model,
    examples_query,
    labelled_example,
    roles_record,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

# Connections per replica, and so the threads that call the store (each call holds one).
POOL_SIZE = 4
# Longest wait for a free connection, and for a statement, before the request gets 503.
WAIT_S = 5.0
# Libpq settings a URL may set itself; these are the values when it does not.
CONNECT_DEFAULTS = {
    "connect_timeout": "5",
    "application_name": "verdict",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
}
# After a failure to reach the database, calls answer 503 at once for this long (one call
# then tries again), instead of each waiting WAIT_S for a connection.
DOWN_HOLD_S = 1.0
# How long the pool keeps retrying a lost connection in the background before it gives up
# (a later call then asks for a new one at once).
RECONNECT_S = 10.0
KEY_NAME = "prediction_id_key"
# Namespace of the transaction-scoped advisory locks that keep the stored-rows cap of captures
# per model exact when replicas store captures at the same moment.
CAPTURE_LOCK = 0x63617074  # "capt"
# The `batch` of rows copied from another store (`verdict-store copy`).
COPIED = uuid.UUID(int=0)

_RECORD = (
    "SELECT r FROM record_labels(%s::text[], %s::text[], %s::int[], %s::int[], %s::int[],"
    " %s::float8[], %s::float8[], %s::float8[], %s::float8[], %s::uuid) AS r"
)


def redact(url: str) -> str:
    """The URL with its password (if any) replaced by `***`, for logs and messages."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error:
        return "postgresql://<unparsable URL>"
    if "password" in params:
        params["password"] = "***"
    return make_conninfo(**{k: str(v) for k, v in params.items()})


def _conninfo(url: str) -> str:
    params = {**CONNECT_DEFAULTS, **conninfo_to_dict(url)}
    return make_conninfo(**{k: str(v) for k, v in params.items()})


def _configure(conn: psycopg.Connection[Any]) -> None:
    # READ COMMITTED whatever the database's default: each statement of record_labels must
    # see what other replicas committed before it. Statements are bounded like SQLite's wait.
    conn.execute(
        "SELECT set_config('default_transaction_isolation', 'read committed', false),"
        " set_config('statement_timeout', %s, false)",
        (str(int(WAIT_S * 1000)),),
    )


class PostgresStore:
    """Labels in a PostgreSQL database shared by every replica; the same methods as the SQLite
    `FeedbackStore`.

    Every method blocks: call it off the event loop, from at most `threads` threads at once
    (each holds one pooled connection). Any database failure surfaces as
    `StoreUnavailableError`; the pool reconnects by itself when the database is back.
    """

    threads = POOL_SIZE

    def __init__(self, url: str, pool_size: int = POOL_SIZE) -> None:
        self.url = url
        self.threads = pool_size
        self._conninfo = _conninfo(url)
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._lock = threading.Lock()
        self._migrated = False
        self._retry_at = 0.0  # while down: when the next call may try the database again
        self._down: str | None = None  # why the last call could not reach the database

    def __repr__(self) -> str:
        return f"PostgresStore({redact(self.url)!r})"

    # -- connections -----------------------------------------------------------------------

    def _get_pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        with self._lock:
            if self._pool is None:
                self._pool = ConnectionPool(
                    self._conninfo,
                    kwargs={"autocommit": True},
                    min_size=1,
                    max_size=self.threads,
                    open=False,
                    configure=_configure,
                    timeout=WAIT_S,
                    reconnect_timeout=RECONNECT_S,
                    name="verdict-feedback",
                )
                self._pool.open(wait=False)
            return self._pool

    def _admit(self) -> float:
        """How long this call may wait for a connection; fails at once while the database is
        known to be unreachable (one call a second probes, for a shorter time)."""
        with self._lock:
            if self._down is None:
                return WAIT_S
            now = time.monotonic()
            if now < self._retry_at:
                raise StoreUnavailableError(f"feedback store unreachable: {self._down}")
            self._retry_at = now + DOWN_HOLD_S  # this call probes; the others wait their turn
            return DOWN_HOLD_S

    def _mark(self, down: str | None) -> None:
        with self._lock:
            self._down = down
            if down is not None:
                self._retry_at = time.monotonic() + DOWN_HOLD_S

    def _why_unreachable(self) -> psycopg.Error | None:
        """The pool only says it timed out; one direct attempt says why (refused, wrong
        password, no such database), for the answer and the log."""
        try:
            psycopg.connect(self._conninfo, connect_timeout=2).close()
        except psycopg.Error as exc:
            return exc
        return None

    def _call(self, doing: str, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run `fn` on a pooled connection. A connection that broke while idle (the database
        restarted) is replaced and the call made once more: `fn` must be safe to repeat."""
        wait_s = self._admit()
        pool = self._get_pool()
        for attempt in (1, 2):
            conn: psycopg.Connection[Any] | None = None
            try:
                with pool.connection(timeout=wait_s) as conn:
                    result = fn(conn)
                self._mark(None)
                return result
            except psycopg.Error as exc:
                lost = conn is None or conn.broken
                if lost and attempt == 1 and conn is not None:
                    pool.check()  # drop every idle connection that broke the same way
                    wait_s = min(wait_s, DOWN_HOLD_S)  # back at once after a restart, or down
                    continue
                if isinstance(exc, PoolTimeout):
                    exc = self._why_unreachable() or exc
                message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                if lost:
                    self._mark(message)
                raise StoreUnavailableError(
                    f"feedback store unavailable while {doing}: {message}"
                ) from exc
        raise AssertionError("unreachable")

    # -- schema ----------------------------------------------------------------------------

    def migrate(self) -> int:
        """Create or upgrade the schema to the latest version; returns that version.

        Replicas that start together take turns on an advisory lock; the first applies the
        missing migrations in one transaction, the others then find the schema current. An
        up-to-date schema needs no write, so a read-only database still serves reads.
        """
        version = self._call("migrating the schema", migrate_schema)
        self._migrated = True
        return version

    def schema_version(self) -> int:
        """The schema version the database is at (0: none)."""
        return self._call("reading the schema version", schema_version)

    def _ready(self) -> None:
        if not self._migrated:
            self.migrate()

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

    # -- reads -----------------------------------------------------------------------------

    def _rows(self, doing: str, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        self._ready()
        return self._call(doing, lambda conn: conn.execute(sql, params).fetchall())

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

    def models(self) -> Iterable[str]:
        """Models that have at least one label."""
        return [
            str(r[0]) for r in self._rows("listing models", "SELECT DISTINCT model FROM labels", ())
        ]

    def close(self) -> None:
        """Close every pooled connection (a later call opens a new pool)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close(timeout=WAIT_S)

    # -- shadow evaluation and promotions (docs/lifecycle.md) ------------------------

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
