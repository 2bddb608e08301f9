"""Input capture in a real verdict server (its own HTTP server in a thread; REST, v2 infer and
gRPC) on a SQLite file and on PostgreSQL: the rate, both caps, the off switch, dropped
features, retention, and predictions that never fail or wait when the store is full or
broken."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydantic import SecretStr

import service.monitoring.capture as capture_module
from service.http.app import create_app
from service.monitoring.records import CaptureRecord
from tests.conftest import make_settings, write_binary
from tests.pgserver import PostgresServer
from tests.service.grpc_support import grpc_infer
from tests.service.server_support import ThreadServer


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Any]:
    servers: list[ThreadServer] = []
    write_binary(tmp_path / "models")

    def run(feedback_url: str | None = None, **options: Any) -> ThreadServer:
        settings = make_settings(tmp_path / "models", tmp_path, **options)
        if feedback_url is not None:  # make_settings names a SQLite file of the tmp folder
            settings = settings.model_copy(update={"feedback_url": SecretStr(feedback_url)})
        server = ThreadServer(create_app(settings))
        servers.append(server)
        return server

    yield run
    for server in servers:
        server.stop()


def predict(server: ThreadServer, rows: np.ndarray, http: Any = httpx) -> list[str]:
    r = http.post(f"{server.url}/predict", json={"model": "bin", "instances": rows.tolist()})
    assert r.status_code == 200, r.text
    return [p["prediction_id"] for p in r.json()["predictions"]]


def drained(server: ThreadServer) -> Any:
    """The capture of a server once it has handled every row sampled so far."""
    httpx.get(f"{server.url}/v2/health/live")  # the loop has counted earlier answers by now
    capture = server.app.state.capture
    assert capture.wait_drained(20)
    return capture


def counted(server: ThreadServer, outcome: str, model: str = "bin") -> float:
    value = server.app.state.registry.get_sample_value(
        "verdict_capture_rows_total", {"model": model, "outcome": outcome}
    )
    return value or 0.0


def stored_rows(server: ThreadServer) -> dict[str, dict[str, float]]:
    store = server.app.state.feedback.store
    examples = {}
    sql = "SELECT prediction_id, inputs FROM captures WHERE model = 'bin'"
    if hasattr(store, "path"):
        with sqlite3.connect(store.path) as db:
            found = db.execute(sql).fetchall()
    else:
        found = store._rows("test", sql, ())
    for pid, inputs in found:
        examples[pid] = json.loads(inputs)
    return examples


def rows_of(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3)).astype(np.float32)


def test_the_rate_is_honoured_over_every_transport_and_rows_are_stored_as_sent(
    start: Any,
) -> None:
    server = start(capture_rates="bin=0.25", capture_max_rows_per_s=100_000)
    sent: dict[str, list[float]] = {}
    for i in range(60):  # REST /predict, 1 to 60 rows a request
        x = rows_of(1 + i, i)
        sent.update(zip(predict(server, x), x.tolist(), strict=True))
    infer_ids: set[str] = set()
    grpc_ids: set[str] = set()
    for i in range(20):  # v2 infer, asking for prediction ids
        x = rows_of(8, 100 + i)
        body = {
            "inputs": [{"name": "input", "shape": [8, 3], "datatype": "FP32", "data": x.tolist()}],
            "parameters": {"prediction_ids": True},
        }
        r = httpx.post(f"{server.url}/v2/models/bin/infer", json=body)
        assert r.status_code == 200
        infer_ids.update(r.json()["parameters"]["prediction_ids"])
        sent.update(zip(r.json()["parameters"]["prediction_ids"], x.tolist(), strict=True))
    for i in range(10):  # gRPC, asking for prediction ids
        x = rows_of(16, 200 + i)
        res = grpc_infer_ids(server.grpc_port, x)
        grpc_ids.update(res)
        sent.update(zip(res, x.tolist(), strict=True))
    drained(server)
    stored = stored_rows(server)
    n = len(sent)  # 1830 + 160 + 160 = 2150 rows; 25% is 537.5 (sd about 20)
    assert abs(len(stored) - 0.25 * n) < 6 * (n * 0.25 * 0.75) ** 0.5, len(stored)
    assert counted(server, "stored") == len(stored)
    for pid, inputs in stored.items():
        assert pid in sent
        assert [inputs["alpha"], inputs["beta"], inputs["gamma"]] == pytest.approx(sent[pid])
    # Each transport's rows are captured at the rate too (160 rows each: about 40 expected).
    assert 10 < len(set(stored) & infer_ids) < 80
    assert 10 < len(set(stored) & grpc_ids) < 80


def grpc_infer_ids(port: int, x: np.ndarray) -> list[str]:
    import tritonclient.grpc as triton

    with triton.InferenceServerClient(f"127.0.0.1:{port}") as client:
        tensor = triton.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer("bin", [tensor], parameters={"prediction_ids": True})
    return str(result.get_response().parameters["prediction_ids"].string_param).split(",")


def test_the_rows_per_second_cap_holds(start: Any) -> None:
    server = start(capture_rates="bin=1", capture_max_rows_per_s=40)
    began = time.time()
    for i in range(30):
        predict(server, rows_of(20, i))  # 600 rows, every one sampled
    capture = drained(server)
    seconds = int(time.time()) - int(began) + 1  # the wall-clock seconds the burst touched
    stored = counted(server, "stored")
    assert stored <= 40 * seconds
    assert stored >= 40  # the first second's share at least
    assert counted(server, "dropped_rate") == 600 - stored
    assert capture.store.captured("bin") == stored


def test_the_stored_rows_cap_holds(start: Any) -> None:
    server = start(capture_rates="bin=1", capture_max_rows_per_s=100_000, capture_max_rows=75)
    for i in range(20):
        predict(server, rows_of(10, i))
    capture = drained(server)
    assert capture.store.captured("bin") == 75
    assert counted(server, "stored") == 75
    assert counted(server, "dropped_cap") == 200 - 75


def test_off_means_no_capture_at_all(start: Any) -> None:
    server = start()  # no rates
    assert server.app.state.capture is None
    assert server.app.state.dataplane.inference.capture is None
    for i in range(5):
        predict(server, rows_of(10, i))
    assert server.app.state.feedback.store.captured("bin") == 0
    other = start(capture_rates="other-model=1,bin=0")  # a rate of 0 is off too
    for i in range(5):
        predict(other, rows_of(10, i))
    httpx.get(f"{other.url}/v2/health/live")
    assert other.app.state.feedback.store.captured("bin") == 0
    assert counted(other, "stored") == 0


def test_dropped_features_are_never_stored_and_a_misspelt_one_stops_capture(
    start: Any, tmp_path: Path
) -> None:
    server = start(capture_rates="bin=1", capture_drop_features="bin:beta")
    ids = predict(server, rows_of(10, 1))
    drained(server)
    stored = stored_rows(server)
    assert set(stored) == set(ids)
    assert all(set(inputs) == {"alpha", "gamma"} for inputs in stored.values())
    misspelt = start(
        capture_rates="bin=1",
        capture_drop_features="bin:Beta",
        feedback_url=f"sqlite:///{tmp_path}/other.sqlite3",
    )
    predict(misspelt, rows_of(10, 2))
    httpx.get(f"{misspelt.url}/v2/health/live")
    assert misspelt.app.state.feedback.store.captured("bin") == 0
    assert counted(misspelt, "stored") == 0


def test_a_broken_store_never_fails_a_prediction(start: Any, tmp_path: Path) -> None:
    (tmp_path / "not-a-folder").write_text("x")  # the store's folder is a file: nothing opens
    url = f"sqlite:///{tmp_path}/not-a-folder/feedback.sqlite3"
    server = start(capture_rates="bin=1", feedback_url=url)
    for i in range(10):
        predict(server, rows_of(5, i))
    drained(server)
    assert counted(server, "failed") == 50
    assert counted(server, "stored") == 0


def test_a_full_queue_drops_rows_and_never_waits(
    start: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(capture_module, "QUEUE_ROWS", 8)
    server = start(capture_rates="bin=1", capture_max_rows_per_s=100_000)
    store = server.app.state.feedback.store
    store.migrate()
    blocker = sqlite3.connect(store.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the writer now waits for the lock (up to 5 s)
    try:
        # One kept-alive client: a new one a request (TLS context, connection) is most of the
        # time measured, 30 ms a request on a busy two-core host, 1.2 s of the 4.
        with httpx.Client() as http:
            t0 = time.monotonic()
            for i in range(40):
                predict(server, rows_of(10, i), http)
            took = time.monotonic() - t0
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    drained(server)
    assert counted(server, "dropped_full") > 300
    total = sum(counted(server, o) for o in capture_module.OUTCOMES)
    assert total == 400
    assert took < 4.0  # 40 requests did not wait for the 5 s lock


def test_captures_past_the_retention_are_pruned_at_start(start: Any, tmp_path: Path) -> None:
    from service.monitoring.store import FeedbackStore

    store = FeedbackStore(str(tmp_path / "var" / "feedback.sqlite3"))
    now = time.time()
    old = [CaptureRecord(f"old{i}", "bin", 1, now - 3 * 86400 - i, "{}") for i in range(5)]
    new = [CaptureRecord(f"new{i}", "bin", 1, now - 86400, "{}") for i in range(3)]
    store.capture(old + new, max_rows=100)
    store.close()
    server = start(capture_rates="bin=0.01", capture_retention_days=2)
    deadline = time.monotonic() + 10
    while server.app.state.feedback.store.captured("bin") != 3:
        assert time.monotonic() < deadline, "old captures were not pruned"
        time.sleep(0.05)


def test_capture_on_postgresql_with_labels_makes_labelled_examples(
    start: Any, pg: PostgresServer
) -> None:
    server = start(
        capture_rates="bin=0.5",
        capture_max_rows_per_s=100_000,
        capture_drop_features="bin:gamma",
        feedback_url=pg.url,
    )
    ids: list[str] = []
    for i in range(40):
        ids += predict(server, rows_of(10, i))
    drained(server)
    stored = stored_rows(server)
    assert abs(len(stored) - 200) < 6 * 10  # 400 rows at 50%: sd 10
    assert all(set(inputs) == {"alpha", "beta"} for inputs in stored.values())
    assert counted(server, "stored") == len(stored)
    items = [{"prediction_id": pid, "label": "spam"} for pid in ids[:100]]
    r = httpx.post(f"{server.url}/feedback", json={"items": items})
    assert r.json()["accepted"] == 100
    examples = server.app.state.feedback.store.labelled_examples("bin")
    assert {e.prediction_id for e in examples} == set(stored) & set(ids[:100])
    assert all(e.actual == 1 for e in examples)


def test_a_stopped_database_never_fails_a_prediction(start: Any, pg: PostgresServer) -> None:
    server = start(capture_rates="bin=1", capture_max_rows_per_s=100_000, feedback_url=pg.url)
    predict(server, rows_of(5, 0))
    drained(server)
    assert counted(server, "stored") == 5
    pg.stop()
    for i in range(10):
        predict(server, rows_of(5, i))
    drained(server)
    assert counted(server, "failed") == 50
    assert counted(server, "stored") == 5
    assert grpc_infer(server.grpc_port) is not None
