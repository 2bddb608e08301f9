"""The SQLite feedback store: schema migration, exactly-once, atomicity, failures."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from service.errors import StoreUnavailableError
from service.monitoring.records import LabelRecord
from service.monitoring.sqlite_file import MIGRATIONS
from service.monitoring.store import FeedbackStore


def label(pid: str, actual: int = 1, predicted: int = 1) -> LabelRecord:
    return LabelRecord(pid, "bc", 1, predicted, actual, 0.9, 100.0, 200.0, 300.0)


def test_migrate_creates_the_schema_once_in_wal_with_full_sync(db_path: str) -> None:
    store = FeedbackStore(db_path)
    assert store.migrate() == len(MIGRATIONS)
    assert store.migrate() == len(MIGRATIONS)
    assert store.schema_version() == len(MIGRATIONS)
    db = store._connect()
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    store.close()
    other = sqlite3.connect(db_path)
    tables = {r[0] for r in other.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"labels", "conflicts"} <= tables
    other.close()


def test_a_newer_schema_is_refused(db_path: str) -> None:
    FeedbackStore(db_path).migrate()
    raw = sqlite3.connect(db_path)
    raw.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 5}")
    raw.close()
    with pytest.raises(StoreUnavailableError, match="newer"):
        FeedbackStore(db_path).migrate()


def test_a_label_counts_once_across_reopen(db_path: str) -> None:
    store = FeedbackStore(db_path)
    assert store.record([label("p1"), label("p2", 0), label("p1")]) == [
        "accepted",
        "accepted",
        "duplicate",
    ]
    store.close()
    reopened = FeedbackStore(db_path)  # a restart, or another replica on the same file
    assert reopened.record([label("p1"), label("p2", 1), label("p3")]) == [
        "duplicate",
        "conflict",
        "accepted",
    ]
    assert reopened.label_of("p2") == 0  # the first label stands
    assert [(kept, sent) for kept, sent, _ in reopened.conflicts("p2")] == [(0, 1)]
    assert reopened.conflict_counts("bc") == {1: 1}
    counts = reopened.cell_counts("bc", now=1000.0)
    assert sum(c.all_time for c in counts) == 3
    reopened.close()


def test_a_full_disk_commits_nothing_of_the_request(store: FeedbackStore) -> None:
    store.record([label("before")])
    db = store._connect()
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages + 8}")  # room for a few rows only: "disk full"
    big = [label(f"{i:04d}" + "x" * 3000) for i in range(50)]
    with pytest.raises(StoreUnavailableError, match="full"):
        store.record(big)
    assert store.label_of(big[0].prediction_id) is None
    assert store.label_of("before") == 1
    db.execute(f"PRAGMA max_page_count = {2**30}")
    assert store.record(big[:2]) == ["accepted", "accepted"]


def test_a_locked_store_is_unavailable_then_recovers(db_path: str) -> None:
    store = FeedbackStore(db_path, busy_timeout_s=0.05)
    store.migrate()
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    with pytest.raises(StoreUnavailableError, match="locked"):
        store.record([label("p1")])
    holder.execute("ROLLBACK")
    holder.close()
    assert store.label_of("p1") is None
    assert store.record([label("p1")]) == ["accepted"]


def test_a_read_only_store_refuses_writes_but_answers_reads(db_path: str) -> None:
    writer = FeedbackStore(db_path)
    writer.record([label("p1")])
    reader = FeedbackStore(f"file:{db_path}?mode=ro")
    with pytest.raises(StoreUnavailableError, match="readonly"):
        reader.record([label("p2")])
    assert reader.label_of("p1") == 1
    assert reader.label_of("p2") is None
    writer.close()
    reader.close()


def test_a_path_that_cannot_be_a_database_is_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file")
    with pytest.raises(StoreUnavailableError):
        FeedbackStore(str(blocker / "feedback.db")).migrate()
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a SQLite file" * 100)
    with pytest.raises(StoreUnavailableError):
        FeedbackStore(str(garbage)).record([label("p1")])


def test_time_windows_count_by_the_chosen_time(store: FeedbackStore) -> None:
    now = 100_000.0
    rows = [
        LabelRecord("old", "bc", 1, 1, 1, 0.9, now - 90_000, now - 90_000, now - 30),
        LabelRecord("day", "bc", 1, 1, 1, 0.9, now - 7_200, now - 7_200, now - 20),
        LabelRecord("hour", "bc", 1, 1, 1, 0.9, now - 60, now - 60, now - 10),
    ]
    store.record(rows)
    [received] = store.cell_counts("bc", now, "received")
    assert (received.all_time, received.last_day, received.last_hour) == (3, 3, 3)
    [observed] = store.cell_counts("bc", now, "observed")
    assert (observed.all_time, observed.last_day, observed.last_hour) == (3, 2, 1)
    assert store.labelled_since("bc", 1, now - 7_200) == 2


def test_two_replicas_on_one_file_accept_each_label_once(db_path: str) -> None:
    first, second = FeedbackStore(db_path), FeedbackStore(db_path)
    first.migrate()
    pids = [f"p{i}" for i in range(40)]
    answers: dict[str, list[str]] = {"first": [], "second": []}

    def send(name: str, store: FeedbackStore) -> None:
        for pid in pids:  # one request per label, interleaving with the other replica
            answers[name] += store.record([label(pid)])

    threads = [
        threading.Thread(target=send, args=("first", first)),
        threading.Thread(target=send, args=("second", second)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for i in range(len(pids)):
        pair = sorted([answers["first"][i], answers["second"][i]])
        assert pair == ["accepted", "duplicate"]
    first.close()
    second.close()
