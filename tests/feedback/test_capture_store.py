"""The captures table of both stores: the stored-rows cap (exact, also with replicas writing
at once on PostgreSQL), pruning, and the join of captures with labels; and the sampler."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.monitoring.capture import Sampler, encoder_for
from service.monitoring.postgres import PostgresStore
from service.monitoring.records import CaptureRecord, LabelRecord
from service.monitoring.store import FeedbackStore
from service.monitoring.stores import LabelStore
from tests.pgserver import PostgresServer


@pytest.fixture(params=["sqlite", "postgres"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LabelStore]:
    if request.param == "sqlite":
        store: LabelStore = FeedbackStore(str(tmp_path / "f.db"))
    else:
        pg: PostgresServer = request.getfixturevalue("pg")
        store = PostgresStore(pg.url)
    store.migrate()
    yield store
    store.close()


def rows(model: str, n: int, start: float = 1000.0, prefix: str = "p") -> list[CaptureRecord]:
    return [
        CaptureRecord(f"{prefix}{model}{i}", model, 1, start + i, json.dumps({"a": float(i)}))
        for i in range(n)
    ]


def test_the_stored_rows_cap_holds_per_model(any_store: LabelStore) -> None:
    assert any_store.capture(rows("m", 7), max_rows=10) == 7
    assert any_store.capture(rows("m", 7, prefix="q") + rows("n", 3), max_rows=10) == 6
    assert any_store.captured("m") == 10
    assert any_store.captured("n") == 3
    assert any_store.capture(rows("m", 2, prefix="r"), max_rows=10) == 0
    # A prediction id captured already is kept as it was.
    assert any_store.capture(rows("n", 3), max_rows=10) == 0
    assert any_store.captured("n") == 3


def test_prune_deletes_only_what_is_older(any_store: LabelStore) -> None:
    any_store.capture(rows("m", 10) + rows("n", 10), max_rows=100)
    assert any_store.prune_captures(1005.0, model="m") == 5
    assert any_store.captured("m") == 5 and any_store.captured("n") == 10
    assert any_store.prune_captures(1008.0) == 3 + 8
    assert any_store.captured("m") == 2 and any_store.captured("n") == 2


def test_labelled_examples_join_captures_and_labels(any_store: LabelStore) -> None:
    any_store.capture(rows("m", 6), max_rows=100)
    any_store.capture([CaptureRecord("pm5v2", "m", 2, 2000.0, "{}")], max_rows=100)
    labels = [
        LabelRecord(f"pm{i}", "m", 1, 0, i % 2, 0.25, 999.0, 3000.0 + i, 3000.0 + i)
        for i in (1, 2, 4)
    ]
    labels.append(LabelRecord("pm5v2", "m", 2, 1, 1, 0.75, 1999.0, 4000.0, 4000.0))
    labels.append(LabelRecord("unc", "m", 1, 1, 1, 0.75, 1999.0, 4000.0, 4000.0))
    any_store.record(labels)
    got = any_store.labelled_examples("m")
    assert [e.prediction_id for e in got] == ["pm1", "pm2", "pm4", "pm5v2"]
    first = got[0]
    assert (first.version, first.captured_at, first.actual, first.predicted) == (1, 1001.0, 1, 0)
    assert json.loads(first.inputs) == {"a": 1.0}
    assert (first.score, first.observed_at) == (0.25, 3001.0)
    assert [e.prediction_id for e in any_store.labelled_examples("m", version=2)] == ["pm5v2"]
    window = any_store.labelled_examples("m", since=1002.0, until=2000.0)
    assert [e.prediction_id for e in window] == ["pm2", "pm4"]
    assert any_store.labelled_examples("other") == []


def test_replicas_capturing_at_once_keep_the_cap_exactly(pg: PostgresServer) -> None:
    stores = [PostgresStore(pg.url) for _ in range(3)]
    for store in stores:
        store.migrate()
    stored: list[int] = []

    def write(i: int, store: PostgresStore) -> None:
        for k in range(10):
            stored.append(store.capture(rows("m", 20, prefix=f"{i}-{k}-"), max_rows=150))

    threads = [threading.Thread(target=write, args=(i, s)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(stored) == 150
    assert stores[0].captured("m") == 150
    for store in stores:
        store.close()


def test_the_sampler_takes_each_row_with_the_rate() -> None:
    sampler = Sampler(0.05)
    sampler.rng.seed(1)
    picked = 0
    for n in [1, 3, 64, 7] * 2500:  # 187 500 rows
        got = sampler.pick(n)
        if got is not None:
            assert all(0 <= i < n for i in got) and got == sorted(set(got))
            picked += len(got)
    # 5% of 187 500 is 9 375 (sd about 94).
    assert 9375 - 500 < picked < 9375 + 500
    assert Sampler(1.0).pick(5) == [0, 1, 2, 3, 4]


def test_dropped_features_are_left_out_and_misspelt_ones_refused() -> None:
    manifest = {"input": {"name": "input", "feature_names": ["a", "b", "c"]}}
    import numpy as np

    enc = encoder_for(manifest, frozenset({"b"}))
    assert json.loads(enc.encode(np.array([1.0, 2.0, 3.0], dtype=np.float32))) == {
        "a": 1.0,
        "c": 3.0,
    }
    with pytest.raises(ValueError, match="not features of the model"):
        encoder_for(manifest, frozenset({"B"}))
    image = {"input": {"name": "input", "feature_names": None}}
    flat = encoder_for(image, frozenset()).encode(np.zeros((1, 2, 2), dtype=np.float32))
    assert json.loads(flat) == {"input": [0.0, 0.0, 0.0, 0.0]}


def test_capture_settings_are_checked_at_start() -> None:
    from pydantic import ValidationError

    from service.settings import Settings

    s = Settings(capture_rates="a=0.5, b=0", capture_drop_features="a:x y,a:z,b:w")
    assert s.capture_rates == {"a": 0.5, "b": 0.0}
    assert s.capture_drop() == {"a": frozenset({"x y", "z"}), "b": frozenset({"w"})}
    for bad, match in (
        ({"capture_rates": "a=1.5"}, "must be in \\[0, 1\\]"),
        ({"capture_rates": "a"}, "model=rate pairs"),
        ({"capture_rates": "a=lots"}, "capture_rates"),
        ({"capture_drop_features": "feature-without-model"}, "model:feature entries"),
        ({"capture_max_rows_per_s": 0}, "capture_max_rows_per_s"),
    ):
        with pytest.raises(ValidationError, match=match):
            Settings(**bad)
