"""Exactly-once as a property: any sequence of sends leaves one label per prediction."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import service.monitoring.sqlite_file
from service.monitoring.records import LabelRecord
from service.monitoring.store import FeedbackStore

SENDS = st.lists(
    st.lists(st.tuples(st.sampled_from("abcde"), st.integers(0, 2)), min_size=1, max_size=6),
    min_size=1,
    max_size=6,
)


@settings(max_examples=25, deadline=None)
@given(requests=SENDS, reopen_every=st.integers(1, 3))
def test_any_sequence_of_sends_counts_each_prediction_once(
    requests: list[list[tuple[str, int]]], reopen_every: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "feedback.db")
        store = FeedbackStore(path)
        first: dict[str, int] = {}
        expected_conflicts = 0
        for n, request in enumerate(requests):
            if n % reopen_every == 0:  # restarts in between
                store.close()
                store = FeedbackStore(path)
            answers = store.record(
                [LabelRecord(pid, "m", 1, 0, label, 0.5, 1.0, 2.0, 3.0) for pid, label in request]
            )
            for (pid, label), answer in zip(request, answers, strict=True):
                if pid not in first:
                    assert answer == "accepted"
                    first[pid] = label
                elif first[pid] == label:
                    assert answer == "duplicate"
                else:
                    assert answer == "conflict"
                    expected_conflicts += 1
        for pid, label in first.items():
            assert store.label_of(pid) == label
        assert sum(c.all_time for c in store.cell_counts("m", now=10.0)) == len(first)
        assert sum(store.conflict_counts("m").values()) == expected_conflicts
        store.close()


def test_a_later_migration_runs_once_on_an_existing_file(
    db_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FeedbackStore(db_path)
    store.record([LabelRecord("kept", "m", 1, 0, 1, 0.5, 1.0, 2.0, 3.0)])
    store.close()
    later = (
        *service.monitoring.sqlite_file.MIGRATIONS,
        "ALTER TABLE labels ADD COLUMN source TEXT; CREATE INDEX labels_source ON labels (source)",
    )
    monkeypatch.setattr(service.monitoring.sqlite_file, "MIGRATIONS", later)
    upgraded = FeedbackStore(db_path)
    assert upgraded.migrate() == len(later)
    assert upgraded.migrate() == len(later)  # a second start finds nothing to do
    assert upgraded.schema_version() == len(later)
    assert upgraded.label_of("kept") == 1
    columns = [row[1] for row in upgraded._connect().execute("PRAGMA table_info(labels)")]
    assert columns.count("source") == 1
    upgraded.close()
