"""The SQLite file under the feedback store: its schema migrations, and one connection (WAL,
synchronous=FULL) that every thread shares through one lock; the stores' concerns (labels,
captures, the lifecycle) build on it."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from service.errors import StoreUnavailableError

# Ordered migrations: entry i takes the schema from user_version i to i + 1. Append, never edit.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE labels (
        prediction_id TEXT PRIMARY KEY,
        model TEXT NOT NULL,
        version INTEGER NOT NULL,
        predicted INTEGER NOT NULL,
        actual INTEGER NOT NULL,
        score REAL NOT NULL,
        issued_at REAL NOT NULL,
        observed_at REAL NOT NULL,
        received_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX labels_model_received ON labels (model, received_at);
    CREATE TABLE conflicts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        prediction_id TEXT NOT NULL,
        model TEXT NOT NULL,
        version INTEGER NOT NULL,
        kept_actual INTEGER NOT NULL,
        sent_actual INTEGER NOT NULL,
        observed_at REAL NOT NULL,
        received_at REAL NOT NULL
    );
    CREATE INDEX conflicts_prediction ON conflicts (prediction_id);
    """,
    # 2: the loop from production traffic to a challenger (docs/lifecycle.md). `inputs` is
    # the JSON of one captured row; a shadow version's decision is kept under the primary's
    # prediction id, so one label scores both; promotions keep what each decision rested on.
    """
    CREATE TABLE captures (
        prediction_id TEXT PRIMARY KEY,
        model TEXT NOT NULL,
        version INTEGER NOT NULL,
        captured_at REAL NOT NULL,
        inputs TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX captures_model_captured ON captures (model, captured_at);
    CREATE TABLE shadow_decisions (
        prediction_id TEXT NOT NULL,
        model TEXT NOT NULL,
        version INTEGER NOT NULL,
        predicted INTEGER NOT NULL,
        score REAL NOT NULL,
        decided_at REAL NOT NULL,
        PRIMARY KEY (prediction_id, version)
    ) WITHOUT ROWID;
    CREATE INDEX shadow_decisions_model ON shadow_decisions (model, version, decided_at);
    CREATE TABLE promotions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        model TEXT NOT NULL,
        primary_version INTEGER NOT NULL,
        shadow_version INTEGER NOT NULL,
        decided_at REAL NOT NULL,
        outcome TEXT NOT NULL,
        requested_by TEXT NOT NULL,
        figures TEXT NOT NULL
    );
    CREATE INDEX promotions_model ON promotions (model, decided_at);
    """,
    # 3: the roles in force (primary, shadow, sample rate), one row per model, so that every
    # process of a deployment serves the same ones; `revision` makes a change compare-and-set.
    """
    CREATE TABLE roles (
        model TEXT PRIMARY KEY,
        primary_version INTEGER,
        shadow_version INTEGER,
        sample_rate REAL NOT NULL,
        revision INTEGER NOT NULL,
        changed_at REAL NOT NULL
    ) WITHOUT ROWID;
    """,
)


class SQLiteFile:
    """A SQLite file (WAL, synchronous=FULL) shared by every worker thread through one lock.

    `path` is a file path or a SQLite `file:` URI (e.g. `file:/data/feedback.db?mode=ro`).
    Every method blocks: call it off the event loop (`asyncio.to_thread`). Any SQLite failure
    surfaces as `StoreUnavailableError`, and the connection is reopened on the next call.
    """

    # Threads worth calling it from: SQLite has one writer, and this class one connection.
    threads = 1

    def __init__(self, path: str, busy_timeout_s: float = 5.0) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._migrated = False

    # -- connection ------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._db is not None:
            return self._db
        uri = self.path.startswith("file:")
        if not uri and self.path != ":memory:":
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreUnavailableError(
                    f"feedback store folder cannot be made: {exc.strerror}"
                ) from exc
        # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves.
        db = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout_s,
            isolation_level=None,
            check_same_thread=False,
            uri=uri,
        )
        try:
            db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            db.execute("PRAGMA journal_mode = WAL")
            # FULL: a committed label survives power loss, not only a process crash.
            db.execute("PRAGMA synchronous = FULL")
            db.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error:
            db.close()
            raise
        self._db = db
        return db

    def _drop(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            finally:
                self._db = None

    def _fail(self, exc: sqlite3.Error, doing: str) -> StoreUnavailableError:
        db = self._db
        if db is not None and db.in_transaction:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                self._drop()
        if not isinstance(exc, sqlite3.OperationalError):
            # Anything but a transient condition: start from a fresh connection next time.
            self._drop()
        return StoreUnavailableError(f"feedback store unavailable while {doing}: {exc}")

    # -- schema ----------------------------------------------------------------------------

    def migrate(self) -> int:
        """Create or upgrade the schema to the latest version; returns that version."""
        with self._lock:
            return self._migrate_locked()

    def _migrate_locked(self) -> int:
        try:
            db = self._connect()
            # Up to date: no write needed, so a read-only store can still answer queries.
            if db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS):
                self._migrated = True
                return len(MIGRATIONS)
            db.execute("BEGIN IMMEDIATE")
            current = db.execute("PRAGMA user_version").fetchone()[0]
            if current > len(MIGRATIONS):
                db.execute("ROLLBACK")
                raise StoreUnavailableError(
                    f"feedback store schema version {current} is newer than this service "
                    f"knows ({len(MIGRATIONS)})"
                )
            for step in range(current, len(MIGRATIONS)):
                for statement in MIGRATIONS[step].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {step + 1}")
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._fail(exc, "migrating the schema") from exc
        self._migrated = True
        return len(MIGRATIONS)

    def use_as_is(self) -> None:
        """Never migrate the schema from this process: for a tool that only reads
        (`verdict-train export`), which must not upgrade a store that the services of an
        older release still use. Queries then run on the schema as it is."""
        self._migrated = True

    def schema_version(self) -> int:
        """The schema version the file is at (PRAGMA user_version)."""
        with self._lock:
            try:
                return int(self._connect().execute("PRAGMA user_version").fetchone()[0])
            except sqlite3.Error as exc:
                raise self._fail(exc, "reading the schema version") from exc

    def _ready(self) -> sqlite3.Connection:
        if not self._migrated:
            self._migrate_locked()
        return self._connect()

    def close(self) -> None:
        """Close the connection (a later call reopens it)."""
        with self._lock:
            self._drop()
