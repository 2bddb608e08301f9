"""Crashes and a failing feedback store, against the real `python -m service`.

- kill -9 while feedback is posted concurrently: every label acknowledged as accepted is in the
  store after a restart, counted once; re-sending everything gives duplicates, not doubles.
- the store locked, read-only, or its disk full: /feedback answers 503 with Retry-After,
  predictions keep working, and no acknowledged label is lost.
"""

from __future__ import annotations

import re
import signal
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, wait_until
from tests.reliability.rel_support import (
    BIN_ROW,
    is_error_shape,
    live_env,
    spawn_server,
)

N_PREDICTIONS = 240
FEEDBACK_THREADS = 4
ITEMS_PER_POST = 4


def _predict_ids(url: str, n: int) -> list[str]:
    ids: list[str] = []
    with httpx.Client(timeout=30) as http:
        while len(ids) < n:
            rows = [[0.05 * (len(ids) + i), -0.1, 0.2] for i in range(min(60, n - len(ids)))]
            r = http.post(f"{url}/predict", json={"model": "bin", "instances": rows})
            assert r.status_code == 200, r.text
            ids += [p["prediction_id"] for p in r.json()["predictions"]]
    return ids


def _label(i: int) -> str:
    return "spam" if i % 3 == 0 else "ham"


def _items(ids: list[str], indices: list[int]) -> list[dict[str, Any]]:
    return [{"prediction_id": ids[i], "label": _label(i)} for i in indices]


def _post(url: str, items: list[dict[str, Any]]) -> httpx.Response:
    return httpx.post(f"{url}/feedback", json={"items": items}, timeout=30)


def _stored(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT prediction_id, actual FROM labels").fetchall())


def _labelled(url: str) -> int:
    quality = httpx.get(f"{url}/models/bin/quality", timeout=30).json()
    return sum(v["windows"]["all_time"]["labelled"] for v in quality["versions"])


@pytest.mark.slow
def test_kill_9_during_concurrent_feedback_loses_no_acknowledged_label(
    start_server: Callable[..., LiveServer], rel_repo: Path
) -> None:
    env = live_env(rel_repo)
    db = Path(env["VERDICT_FEEDBACK_DB"])
    server = start_server(env)
    ids = _predict_ids(server.url, N_PREDICTIONS)
    acknowledged: set[int] = set()
    lock = threading.Lock()
    enough = threading.Event()

    def send(share: list[int]) -> None:
        with httpx.Client(timeout=30) as http:
            for start in range(0, len(share), ITEMS_PER_POST):
                chunk = share[start : start + ITEMS_PER_POST]
                try:
                    r = http.post(f"{server.url}/feedback", json={"items": _items(ids, chunk)})
                except httpx.HTTPError:
                    return  # the server died under us
                if r.status_code != 200:
                    continue
                with lock:
                    for i, res in zip(chunk, r.json()["results"], strict=True):
                        if res["result"] == "accepted":
                            acknowledged.add(i)
                    if len(acknowledged) >= N_PREDICTIONS // 3:
                        enough.set()

    shares = [list(range(k, N_PREDICTIONS, FEEDBACK_THREADS)) for k in range(FEEDBACK_THREADS)]
    threads = [threading.Thread(target=send, args=(s,), daemon=True) for s in shares]
    for t in threads:
        t.start()
    assert enough.wait(60), "no feedback was acknowledged"
    server.proc.send_signal(signal.SIGKILL)  # mid-stream: no drain, no close
    server.proc.wait(timeout=30)
    for t in threads:
        t.join(timeout=30)
    with lock:
        acked = set(acknowledged)
    assert 0 < len(acked) < N_PREDICTIONS, "the kill did not land while feedback was flowing"

    # After the restart every acknowledged label is in the store, with its value.
    stored = _stored(db)
    classes = {"ham": 0, "spam": 1}
    for i in acked:
        assert stored.get(ids[i]) == classes[_label(i)], f"acknowledged label {i} was lost"

    again = start_server(env)
    resent = _post(again.url, _items(ids, sorted(acked)))
    assert resent.status_code == 200
    assert resent.json()["duplicate"] == len(acked) and resent.json()["accepted"] == 0
    everything = _post(again.url, _items(ids, list(range(N_PREDICTIONS))))
    body = everything.json()
    assert body["conflict"] == body["invalid"] == body["unknown"] == 0
    assert body["accepted"] + body["duplicate"] == N_PREDICTIONS
    assert body["accepted"] <= N_PREDICTIONS - len(acked)
    # Once more: all duplicates, and each label counted exactly once.
    assert _post(again.url, _items(ids, list(range(N_PREDICTIONS)))).json()["duplicate"] == (
        N_PREDICTIONS
    )
    assert len(_stored(db)) == N_PREDICTIONS
    assert _labelled(again.url) == N_PREDICTIONS


def _predictions_work(url: str) -> None:
    r = httpx.post(f"{url}/predict", json={"model": "bin", "instances": [BIN_ROW]}, timeout=30)
    assert r.status_code == 200, r.text


def _assert_store_refused(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert is_error_shape(r.json()) and r.json()["code"] == "store_unavailable"
    assert int(r.headers["retry-after"]) >= 1


def test_a_locked_store_answers_503_while_predictions_keep_working(
    start_server: Callable[..., LiveServer], rel_repo: Path
) -> None:
    env = live_env(rel_repo)  # the store waits 5 s for a lock, then answers 503
    server = start_server(env)
    ids = _predict_ids(server.url, 20)
    first = _post(server.url, _items(ids, list(range(10))))
    assert first.json()["accepted"] == 10

    holder = sqlite3.connect(env["VERDICT_FEEDBACK_DB"], isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    try:
        results: list[httpx.Response] = []
        t = threading.Thread(
            target=lambda: results.append(_post(server.url, _items(ids, list(range(10, 20)))))
        )
        t.start()
        for _ in range(5):  # while feedback waits on the lock, predictions are answered
            _predictions_work(server.url)
        t.join(timeout=30)
        _assert_store_refused(results[0])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    # The refused labels were not acknowledged; sent again they are accepted, and the
    # acknowledged ones are still there.
    after = _post(server.url, _items(ids, list(range(20)))).json()
    assert (after["accepted"], after["duplicate"]) == (10, 10)


def test_a_read_only_store_answers_503_and_keeps_what_it_had(
    start_server: Callable[..., LiveServer], rel_repo: Path
) -> None:
    env = live_env(rel_repo)
    db = env["VERDICT_FEEDBACK_DB"]
    server = start_server(env)
    ids = _predict_ids(server.url, 20)
    assert _post(server.url, _items(ids, list(range(10)))).json()["accepted"] == 10
    server.stop()

    read_only = start_server({**env, "VERDICT_FEEDBACK_DB": f"file:{db}?mode=ro"})
    _assert_store_refused(_post(read_only.url, _items(ids, list(range(10, 20)))))
    _predictions_work(read_only.url)
    assert _labelled(read_only.url) == 10  # reads still work
    read_only.stop()

    again = start_server(env)
    after = _post(again.url, _items(ids, list(range(20)))).json()
    assert (after["accepted"], after["duplicate"]) == (10, 10)


def test_a_full_disk_answers_503_and_loses_no_acknowledged_label(
    start_server: Callable[..., LiveServer], rel_repo: Path
) -> None:
    env = live_env(rel_repo)
    db = Path(env["VERDICT_FEEDBACK_DB"])
    seed = start_server(env)  # creates the store, then stops
    ids = _predict_ids(seed.url, N_PREDICTIONS)
    seed.stop()

    full = spawn_server(env, fsize_limit=db.stat().st_size + 96 * 1024)
    try:
        full.wait_ready()
        acked: set[int] = set()
        refused = 0
        for start in range(0, N_PREDICTIONS, ITEMS_PER_POST):
            chunk = list(range(start, start + ITEMS_PER_POST))
            r = _post(full.url, _items(ids, chunk))
            if r.status_code == 503:
                _assert_store_refused(r)
                # SQLite's own words for a write the file system refused
                assert re.search(r"disk|I/O|full", r.json()["error"]), r.text
                refused += 1
                _predictions_work(full.url)
                if refused >= 3:
                    break
                continue
            assert r.status_code == 200, r.text
            acked.update(i for i, res in zip(chunk, r.json()["results"], strict=True)
                         if res["result"] == "accepted")  # fmt: skip
        assert refused, "the disk never filled up"
        assert acked, "nothing was stored before the disk filled up"
    finally:
        full.stop()
    wait_until(lambda: full.proc.poll() is not None, 30, "the server to stop")

    again = start_server(env)
    resent = _post(again.url, _items(ids, sorted(acked))).json()
    assert resent["duplicate"] == len(acked), "an acknowledged label was lost"
