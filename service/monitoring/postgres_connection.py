"""The PostgreSQL feedback store's connections: a pool per replica, bounded waits, a fast
answer while the database is down, and the schema migrations on top (docs/feedback.md,
"A fleet"); the stores' concerns (labels, captures, the lifecycle) build on it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from service.errors import StoreUnavailableError
from service.monitoring.postgres_schema import migrate_schema, schema_version

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


class PostgresConnection:
    """A PostgreSQL database shared by every replica, through a pool of connections.

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
        return f"{type(self).__name__}({redact(self.url)!r})"

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

    def use_as_is(self) -> None:
        """Never migrate the schema from this process: for a tool that only reads
        (`verdict-train export`), which must not upgrade a store that the services of an
        older release still use. Queries then run on the schema as it is."""
        self._migrated = True

    def schema_version(self) -> int:
        """The schema version the database is at (0: none)."""
        return self._call("reading the schema version", schema_version)

    def _ready(self) -> None:
        if not self._migrated:
            self.migrate()

    # -- reads -----------------------------------------------------------------------------

    def _rows(self, doing: str, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        self._ready()
        return self._call(doing, lambda conn: conn.execute(sql, params).fetchall())

    def close(self) -> None:
        """Close every pooled connection (a later call opens a new pool)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close(timeout=WAIT_S)
