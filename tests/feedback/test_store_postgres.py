"""The PostgreSQL feedback store against a real server: the same answers as SQLite, exactly
once across replicas writing at the same moment, migrations, the shared key, and faults
(the server stopped, restarted, read-only)."""

from __future__ import annotations

import random
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import service.monitoring.postgres_schema as schema
from service.errors import StoreUnavailableError
from service.monitoring.postgres import PostgresStore
from service.monitoring.records import LabelRecord
from service.monitoring.store import FeedbackStore
from tests.pgserver import PostgresServer

SENDS = st.lists(
    st.lists(st.tuples(st.sampled_from("abcde"), st.integers(0, 2)), min_size=1, max_size=8),
    min_size=1,
    max_size=6,
)


def label(pid: str, actual: int = 1, model: str = "bc", received: float = 300.0) -> LabelRecord:
    return LabelRecord(pid, model, 1, 1, actual, 0.9, 100.0, 200.0, received)


@pytest.fixture
def replicas(pg: PostgresServer) -> list[PostgresStore]:
    """Three stores on one database, as three replicas hold them."""
    stores = [PostgresStore(pg.url) for _ in range(3)]
    yield stores  # type: ignore[misc]
    for store in stores:
        store.close()


# Each example uses a model of its own, so the database the examples share needs no reset.
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(requests=SENDS, data=st.data())
def test_replicas_on_postgres_answer_every_sequence_as_one_sqlite_file_does(
    replicas: list[PostgresStore], requests: list[list[tuple[str, int]]], data: st.DataObject
) -> None:
    model = f"m-{uuid.uuid4().hex[:8]}"  # a fresh model per example: the database is shared
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = FeedbackStore(str(Path(tmp) / "feedback.db"))
        for request in requests:
            batch = [label(f"{model}/{pid}", actual, model) for pid, actual in request]
            replica = data.draw(st.sampled_from(replicas))
            assert replica.record(batch) == sqlite.record(batch)
        for pid, _ in {p for r in requests for p in r}:
            assert replicas[0].label_of(f"{model}/{pid}") == sqlite.label_of(f"{model}/{pid}")
            got = [(k, s) for k, s, _ in replicas[1].conflicts(f"{model}/{pid}")]
            assert got == [(k, s) for k, s, _ in sqlite.conflicts(f"{model}/{pid}")]
        assert replicas[2].cell_counts(model, 1000.0) == sqlite.cell_counts(model, 1000.0)
        assert replicas[0].conflict_counts(model) == sqlite.conflict_counts(model)
        sqlite.close()


def test_replicas_sending_the_same_labels_at_once_accept_each_exactly_once(
    replicas: list[PostgresStore],
) -> None:
    n = 1500
    start = threading.Barrier(len(replicas))
    answers: Counter[str] = Counter()
    accepted: Counter[str] = Counter()
    errors: list[BaseException] = []
    lock = threading.Lock()

    def send(store: PostgresStore, seed: int) -> None:
        order = list(range(n))
        random.Random(seed).shuffle(order)  # every replica in its own order: no deadlock
        start.wait()
        try:
            for at in range(0, n, 50):
                batch = [label(f"p{i}", i % 2) for i in order[at : at + 50]]
                results = store.record(batch)
                with lock:
                    answers.update(results)
                    accepted.update(
                        b.prediction_id
                        for b, r in zip(batch, results, strict=True)
                        if r == "accepted"
                    )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(s, k)) for k, s in enumerate(replicas)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert answers == {"accepted": n, "duplicate": n * (len(replicas) - 1)}
    assert set(accepted.values()) == {1} and len(accepted) == n
    assert sum(c.all_time for c in replicas[0].cell_counts("bc", 1000.0)) == n


def test_replicas_starting_together_migrate_once(pg: PostgresServer) -> None:
    stores = [PostgresStore(pg.url) for _ in range(6)]
    start = threading.Barrier(len(stores))
    versions: list[int] = []

    def migrate(store: PostgresStore) -> None:
        start.wait()
        versions.append(store.migrate())

    threads = [threading.Thread(target=migrate, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for store in stores:
        store.close()
    assert versions == [len(schema.MIGRATIONS)] * len(stores)
    assert pg.sql("SELECT version FROM schema_migrations ORDER BY version") == [
        (v,) for v in range(1, len(schema.MIGRATIONS) + 1)
    ]


def test_a_later_migration_upgrades_a_store_in_place(
    pg: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = PostgresStore(pg.url)
    old.record([label("kept", 0)])
    old.close()
    later = (*schema.MIGRATIONS, "ALTER TABLE labels ADD COLUMN source TEXT")
    monkeypatch.setattr(schema, "MIGRATIONS", later)
    upgraded = PostgresStore(pg.url)
    assert upgraded.migrate() == len(later)
    assert upgraded.label_of("kept") == 0
    assert upgraded.record([label("kept", 0), label("new")]) == ["duplicate", "accepted"]
    upgraded.close()
    assert pg.sql("SELECT version FROM schema_migrations ORDER BY version") == [
        (v,) for v in range(1, len(later) + 1)
    ]
    monkeypatch.undo()
    current = PostgresStore(pg.url)  # this release, on the later release's schema
    with pytest.raises(StoreUnavailableError, match="newer"):
        current.migrate()
    current.close()


def test_a_repeated_call_whose_answer_was_lost_still_reads_accepted(
    replicas: list[PostgresStore],
) -> None:
    """The store repeats a call once on a broken connection; its batch id makes rows that
    the first attempt committed read `accepted` again, and only for that call."""
    replicas[0].migrate()
    sql = (
        "SELECT r FROM record_labels(ARRAY['x', 'y', 'x'], ARRAY['bc', 'bc', 'bc'],"
        " ARRAY[1, 1, 1], ARRAY[1, 1, 1], ARRAY[1, 0, 0], ARRAY[0.5, 0.5, 0.5]::float8[],"
        " ARRAY[1, 1, 1]::float8[], ARRAY[2, 2, 2]::float8[], ARRAY[3, 3, 3]::float8[],"
        " '{batch}'::uuid) AS r"
    )
    batch = uuid.uuid4()
    first = replicas[0]._call("test", lambda c: c.execute(sql.format(batch=batch)).fetchall())
    again = replicas[1]._call("test", lambda c: c.execute(sql.format(batch=batch)).fetchall())
    other = replicas[2]._call(
        "test", lambda c: c.execute(sql.format(batch=uuid.uuid4())).fetchall()
    )
    assert [r[0] for r in first] == ["accepted", "accepted", "conflict"]
    assert [r[0] for r in again] == ["accepted", "accepted", "conflict"]
    assert [r[0] for r in other] == ["duplicate", "duplicate", "conflict"]


def test_every_replica_gets_the_one_generated_key(replicas: list[PostgresStore]) -> None:
    keys = {store.prediction_key() for store in replicas}
    assert len(keys) == 1 and len(next(iter(keys))) == 64
    assert replicas[0].import_key("another") is False
    assert replicas[1].prediction_key() in keys


def test_the_server_stopped_fails_fast_and_the_same_store_recovers_when_it_is_back(
    pg: PostgresServer,
) -> None:
    store = PostgresStore(pg.url)
    assert store.record([label("before")]) == ["accepted"]
    pg.stop()
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError):
        store.record([label("while-down")])
    assert time.monotonic() - started < 3.0
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError, match="unreachable"):
        store.label_of("before")  # known down: answered at once
    assert time.monotonic() - started < 0.5
    pg.start()
    deadline = time.monotonic() + 20.0
    while True:
        try:
            results = store.record([label("before"), label("after")])
            break
        except StoreUnavailableError:
            assert time.monotonic() < deadline, "the store did not reconnect by itself"
            time.sleep(0.2)
    assert results == ["duplicate", "accepted"]
    assert store.label_of("while-down") is None
    store.close()


def test_a_restart_between_calls_costs_no_call(pg: PostgresServer) -> None:
    """Idle connections broken by a restart are replaced; the call in hand is made once more."""
    store = PostgresStore(pg.url)
    store.record([label("a")])
    pg.stop()
    pg.start()
    assert store.record([label("a"), label("b")]) == ["duplicate", "accepted"]
    store.close()


def test_a_read_only_database_refuses_writes_and_still_answers_reads(
    pg: PostgresServer,
) -> None:
    store = PostgresStore(pg.url)
    store.record([label("a", 0)])
    pg.sql_admin("postgres", "ALTER SYSTEM SET default_transaction_read_only = on")
    pg.reload("default_transaction_read_only", "on")  # sessions apply it on their next command
    with pytest.raises(StoreUnavailableError, match="read-only"):
        store.record([label("b"), label("c")])
    assert store.label_of("a") == 0 and store.label_of("b") is None
    fresh = PostgresStore(pg.url)  # a replica starting now: the schema is current, no write
    assert fresh.migrate() == len(schema.MIGRATIONS)
    fresh.close()
    pg.sql_admin("postgres", "ALTER SYSTEM RESET default_transaction_read_only")
    pg.reload("default_transaction_read_only", "off")
    assert store.record([label("b")]) == ["accepted"]
    store.close()


def test_no_message_shows_the_password(pg: PostgresServer) -> None:
    wrong = pg.url.replace("verdict-test", "not-the-password-41")
    store = PostgresStore(wrong)
    assert "not-the-password-41" not in repr(store)
    with pytest.raises(StoreUnavailableError) as failed:
        store.migrate()
    assert "not-the-password-41" not in failed.value.message
    assert "password authentication failed" in failed.value.message
    store.close()
