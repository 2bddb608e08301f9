"""The feedback store: ground-truth labels in SQLite, recorded exactly once and durably."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from service.errors import StoreUnavailableError
from service.monitoring.decisions import PairCell, PromotionRecord, RolesRecord, ShadowDecision

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

# Columns a quality window may be measured on (whitelisted: they are spliced into SQL).
TIME_COLUMNS = {"received": "received_at", "observed": "observed_at", "issued": "issued_at"}

RecordResult = Literal["accepted", "duplicate", "conflict"]


@dataclass(frozen=True, slots=True)
class LabelRecord:
    """One label to record, already verified against its prediction id and manifest."""

    prediction_id: str
    model: str
    version: int
    predicted: int
    actual: int
    score: float
    issued_at: float
    observed_at: float
    received_at: float


@dataclass(frozen=True, slots=True)
class CaptureRecord:
    """The inputs of one sampled prediction, as the capture writer stores them."""

    prediction_id: str
    model: str
    version: int
    captured_at: float
    inputs: str  # JSON of one row (docs/lifecycle.md, "What a capture holds")


@dataclass(frozen=True, slots=True)
class LabelledExample:
    """A captured prediction that got a label: one row of production training data."""

    prediction_id: str
    version: int
    captured_at: float
    inputs: str
    predicted: int
    actual: int
    score: float
    observed_at: float


@dataclass(frozen=True, slots=True)
class CellCount:
    """Labelled predictions of one (version, predicted, actual) cell, per time window."""

    version: int
    predicted: int
    actual: int
    all_time: int
    last_day: int
    last_hour: int


def captures_by_model(rows: Sequence[CaptureRecord]) -> dict[str, list[CaptureRecord]]:
    groups: dict[str, list[CaptureRecord]] = {}
    for r in rows:
        groups.setdefault(r.model, []).append(r)
    return groups


def examples_query(
    model: str, version: int | None, since: float | None, until: float | None, mark: str
) -> tuple[str, tuple[object, ...]]:
    """The join of captures and labels, for either store (`mark`: its parameter marker)."""
    where = [f"c.model = {mark}"]
    params: list[object] = [model]
    for clause, value in (
        (f"c.version = {mark}", version),
        (f"c.captured_at >= {mark}", since),
        (f"c.captured_at < {mark}", until),
    ):
        if value is not None:
            where.append(clause)
            params.append(value)
    sql = (
        "SELECT c.prediction_id, c.version, c.captured_at, c.inputs, l.predicted, l.actual,"
        " l.score, l.observed_at FROM captures c JOIN labels l"
        " ON l.prediction_id = c.prediction_id WHERE "
        + " AND ".join(where)
        + " ORDER BY c.captured_at, c.prediction_id"
    )
    return sql, tuple(params)


def labelled_example(row: Sequence[object]) -> LabelledExample:
    pid, version, captured_at, inputs, predicted, actual, score, observed_at = row
    return LabelledExample(
        str(pid),
        int(version),  # type: ignore[call-overload]
        float(captured_at),  # type: ignore[arg-type]
        str(inputs),
        int(predicted),  # type: ignore[call-overload]
        int(actual),  # type: ignore[call-overload]
        float(score),  # type: ignore[arg-type]
        float(observed_at),  # type: ignore[arg-type]
    )


def roles_record(row: Sequence[object]) -> RolesRecord:
    model, primary, shadow, rate, revision, changed_at = row
    return RolesRecord(
        str(model),
        None if primary is None else int(primary),  # type: ignore[call-overload]
        None if shadow is None else int(shadow),  # type: ignore[call-overload]
        float(rate),  # type: ignore[arg-type]
        int(revision),  # type: ignore[call-overload]
        float(changed_at),  # type: ignore[arg-type]
    )


class FeedbackStore:
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

    def models(self) -> Iterable[str]:
        """Models that have at least one label."""
        with self._lock:
            try:
                rows = self._ready().execute("SELECT DISTINCT model FROM labels").fetchall()
            except sqlite3.Error as exc:
                raise self._fail(exc, "listing models") from exc
        return [str(r[0]) for r in rows]

    def close(self) -> None:
        """Close the connection (a later call reopens it)."""
        with self._lock:
            self._drop()

    # -- shadow evaluation and promotions (docs/lifecycle.md) ------------------------

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
