"""A request alone in flight runs its model at once and is answered without a task.

`Batcher.run_now` on its own, then through the app (ASGI) and a real uvicorn server with
verdict's protocol on 127.0.0.1, where a lone predict request is answered inside
`data_received` and requests in flight together still go through the batcher.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.models.batching import ALONE, Batcher
from service.errors import InferenceError, ShuttingDownError
from service.dataplane.inference import infer
from tests.conftest import make_settings, write_binary, write_image
from tests.service.test_service_inline import W, _batcher, _failing_run
from tests.service.test_service_protocol import (
    INFER,
    PREDICT,
    Reader,
    ThreadServer,
    connect,
    request,
)


def test_run_now_runs_on_the_loop_at_once() -> None:
    calls: list[int] = []

    def run(x: np.ndarray) -> np.ndarray:
        calls.append(threading.get_ident())
        return x @ W

    async def main() -> None:
        b = _batcher(run)
        b.calibrate(1e-6, 1e-7)
        b.start()
        x = np.ones((2, 3), np.float32)
        first = b.run_now(x)  # no await: the run happened in this call
        assert first is not None
        np.testing.assert_array_equal(first.probabilities, x @ W)
        assert calls == [threading.get_ident()]
        assert b._queued_rows == 0 and b.inline_runs == 1
        await b.close()

    asyncio.run(main())


def test_one_lone_request_a_loop_turn() -> None:
    """Only the first request of a turn with nothing else in flight runs at once; the
    requests read after it in the same turn are merged."""
    from service.hotpath import FrontDoor

    async def main() -> None:
        front = FrontDoor.__new__(FrontDoor)
        front.active, front.limit, front._lone_turn = 1, 0, False
        assert front.lone()
        assert not front.lone()  # same turn
        await asyncio.sleep(0)
        assert front.lone()
        await asyncio.sleep(0)
        front.active = 2  # another request is in flight
        assert not front.lone()

    asyncio.run(main())


def test_run_now_leaves_to_submit_what_must_be_merged_or_is_not_cheap() -> None:
    async def main() -> None:
        x = np.ones((3, 3), np.float32)
        uncalibrated = _batcher()
        assert uncalibrated.run_now(x) is None  # cost unknown
        gpu = _batcher(inline_budget_s=0.0)
        gpu.calibrate(0.0, 0.0)
        assert gpu.run_now(x) is None  # every run on the thread
        slow = _batcher()
        slow.calibrate(0.0, 0.0005)  # 3 rows: 1.5 ms, over the 1 ms budget
        assert slow.run_now(x) is None
        small = _batcher(max_batch_rows=2)
        small.calibrate(0.0, 0.0)
        assert small.run_now(x) is None  # more rows than one run takes
        waiting = _batcher()
        waiting.calibrate(0.0, 0.0)
        waiting.start()
        queued = asyncio.ensure_future(waiting.submit(x))
        await asyncio.sleep(0)  # the submit waits for the end of the turn
        assert waiting._tick
        assert waiting.run_now(x) is None  # goes after it, in order
        await queued
        await waiting.close()
        for b in (uncalibrated, gpu, slow, small):
            assert b.inline_runs == 0 and b._queued_rows == 0
            b._thread.shutdown()

    asyncio.run(main())


def test_a_failed_run_now_raises_and_releases_its_rows() -> None:
    fail = [True]

    async def main() -> None:
        b = _batcher(_failing_run(fail))
        b.calibrate(0.0, 0.0)
        b.start()
        with pytest.raises(InferenceError):
            b.run_now(np.ones((2, 3), np.float32))
        assert b._queued_rows == 0
        fail[0] = False
        await asyncio.sleep(0)
        assert b.run_now(np.ones((2, 3), np.float32)) is not None
        await b.close()
        await asyncio.sleep(0)
        with pytest.raises(ShuttingDownError):
            b.run_now(np.ones((2, 3), np.float32))

    asyncio.run(main())


def test_a_run_now_is_learned_from_after_the_turn() -> None:
    async def main() -> None:
        b = _batcher()
        b.calibrate(1e-9, 0.0)  # far cheaper than any real run
        b.start()
        assert b.run_now(np.ones((1, 3), np.float32)) is not None
        assert b._cost_scale == 1.0  # observed on the next callback, after the answer
        await asyncio.sleep(0)
        assert b._cost_scale > 1.0
        await b.close()

    asyncio.run(main())


def _spy(monkeypatch: pytest.MonkeyPatch, cls: Any, name: str) -> list[Any]:
    """Record each call of `cls.name` (its result, or the exception it raised)."""
    calls: list[Any] = []
    original = getattr(cls, name)

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        calls.append(result)
        return result

    monkeypatch.setattr(cls, name, spy)
    return calls


def test_infer_runs_at_once_only_for_a_lone_request_and_counts_after(
    client: TestClient, app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    mv = app.state.repository.resolve("bin")
    submits = _spy(monkeypatch, Batcher, "submit")
    x = np.ones((1, 3), np.float32)

    async def lone() -> tuple[float, float]:
        ALONE.set(True)
        before = mv.issued
        decided = await infer(mv, x, [])
        counted_at_return = mv.issued - before  # the answer is written before the counts
        await asyncio.sleep(0)
        assert len(decided.class_index) == 1
        return counted_at_return, mv.issued - before

    assert client.portal is not None
    at_return, after = client.portal.call(lone)
    assert (at_return, after) == (0, 1)
    assert submits == []

    async def not_alone() -> None:
        await infer(mv, x, [])  # ALONE is False: merged with what else comes this turn

    client.portal.call(not_alone)
    assert len(submits) == 1


def test_a_lone_request_through_the_app_runs_at_once(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    submits = _spy(monkeypatch, Batcher, "submit")
    now = _spy(monkeypatch, Batcher, "run_now")
    r = client.post("/predict", json={"model": "bin", "instances": [[1, 2, 3]]})
    assert r.status_code == 200, r.text
    assert submits == [] and len(now) == 1 and now[0] is not None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    from service.http.app import create_app

    tmp = tmp_path_factory.mktemp("run-now")
    write_binary(tmp / "models")
    write_image(tmp / "models")
    srv = ThreadServer(create_app(make_settings(tmp / "models", tmp, body_timeout_s=5.0)))
    yield srv
    srv.stop()


def test_a_lone_predict_request_is_answered_without_a_task(
    server: ThreadServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.protocol import HotCycle

    spawned = _spy(monkeypatch, HotCycle, "spawn")
    now = _spy(monkeypatch, Batcher, "run_now")
    with connect(server) as sock:
        reader = Reader(sock)
        for data, rid in (
            (request("POST", "/predict", PREDICT, X_Request_ID="a"), "a"),
            (request("POST", "/v2/models/bin/infer", INFER, X_Request_ID="b"), "b"),
        ):
            sock.sendall(data)
            status, headers, body = reader.response()
            assert status == 200, body
            assert headers["x-request-id"] == rid
    assert spawned == []  # answered inside data_received
    assert len(now) == 2 and None not in now
    assert server.app.front.active == 0


def test_requests_in_flight_together_are_merged_not_run_at_once(
    server: ThreadServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = _spy(monkeypatch, Batcher, "run_now")
    submits = _spy(monkeypatch, Batcher, "submit")
    with connect(server) as held, connect(server) as a, connect(server) as b:
        held.sendall(request("POST", "/predict", PREDICT)[:-4])  # admitted, body pending
        for _ in range(50):
            if server.app.front.active == 1:
                break
            threading.Event().wait(0.02)
        assert server.app.front.active == 1
        a.sendall(request("POST", "/predict", PREDICT))
        b.sendall(request("POST", "/v2/models/bin/infer", INFER))
        assert Reader(a).response()[0] == 200
        assert Reader(b).response()[0] == 200
        assert now == [] and len(submits) == 2  # neither was alone: both went to the batcher
        held.sendall(PREDICT[-4:])
        assert Reader(held).response()[0] == 200  # alone by then: at once
    assert len(now) == 1 and now[0] is not None
    assert server.app.front.active == 0


def test_a_lone_request_that_waits_for_the_model_thread_is_answered(
    server: ThreadServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Over the inline budget, the run goes to the model's thread: the request started at
    once must go on in a task, in its own context (its request id), once the run is done."""
    from service.protocol import HotCycle

    caplog.set_level(logging.WARNING)
    batcher = server.app.state.repository.resolve("img").batcher
    monkeypatch.setattr(batcher, "estimate_s", lambda rows: 1.0)  # far over the budget
    threads: list[int] = []
    original = batcher._run

    def run(x: np.ndarray) -> np.ndarray:
        threads.append(threading.get_ident())
        return original(x)

    monkeypatch.setattr(batcher, "_run", run)
    spawned = _spy(monkeypatch, HotCycle, "spawn")
    body = json.dumps({"model": "img", "instances": [[0.5] * 16]}).encode()
    with connect(server) as sock:
        reader = Reader(sock)
        for i in range(3):
            sock.sendall(request("POST", "/predict", body, X_Request_ID=f"slow-{i}"))
            status, headers, answer = reader.response()
            assert status == 200, answer
            assert headers["x-request-id"] == f"slow-{i}"
            assert len(json.loads(answer)["predictions"]) == 1
    assert len(threads) == 3 and server.thread.ident not in threads
    assert len(spawned) == 3  # each went on in a task after its run
    # ... in the context it started in: its request id's reset there raises nothing.
    assert not [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.WARNING]
    assert server.app.front.active == 0
    r = httpx.post(f"{server.url}/predict", content=PREDICT)  # and the next lone one is fine
    assert r.status_code == 200


def _slow_img(app: Any, monkeypatch: pytest.MonkeyPatch, seconds: float) -> bytes:
    """Make `img` run on its thread and take `seconds`; a /predict body for it."""
    batcher = app.state.repository.resolve("img").batcher
    original = batcher._run

    def run(x: np.ndarray) -> np.ndarray:
        time.sleep(seconds)
        return original(x)

    monkeypatch.setattr(batcher, "estimate_s", lambda rows: 1.0)  # over the inline budget
    monkeypatch.setattr(batcher, "_run", run)
    return json.dumps({"model": "img", "instances": [[0.5] * 16]}).encode()


def _own_server(tmp_path: Path, **options: Any) -> ThreadServer:
    from service.http.app import create_app

    write_binary(tmp_path / "models")
    write_image(tmp_path / "models")
    return ThreadServer(create_app(make_settings(tmp_path / "models", tmp_path)), **options)


def test_a_request_answered_at_once_does_not_time_out_the_next_one_in_its_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first request's answer, written inside `data_received`, arms the keep-alive timer;
    the next request in the same bytes has begun, and must not be cut off by it."""
    srv = _own_server(tmp_path, timeout_keep_alive=1)
    try:
        slow = _slow_img(srv.app, monkeypatch, 2.0)
        with connect(srv) as sock:
            reader = Reader(sock)
            sock.sendall(
                request("POST", "/predict", PREDICT, X_Request_ID="first")
                + request("POST", "/predict", slow, X_Request_ID="second")
            )
            assert reader.response()[0] == 200
            status, headers, _ = reader.response()
            assert status == 200 and headers["x-request-id"] == "second"
    finally:
        srv.stop()


def test_shutdown_reaches_a_lone_request_that_waits(tmp_path: Path) -> None:
    """A lone request started at once that waits (here for a write buffer that never drains)
    is in a task uvicorn knows: at the end of the graceful shutdown it is cancelled, its
    admission returns and its connection closes."""
    srv = _own_server(tmp_path, timeout_graceful_shutdown=1)
    front, state = srv.app.front, srv.server.server_state
    with connect(srv) as sock:
        sock.sendall(request("GET", "/v2/health/live"))
        assert Reader(sock).response()[0] == 200
        (protocol,) = [
            p for p in state.connections if getattr(p, "client", None) == sock.getsockname()
        ]
        loop = srv.server.servers[0].get_loop()
        # What the transport does once the client reads nothing past the high-water mark.
        loop.call_soon_threadsafe(protocol.pause_writing)
        time.sleep(0.1)
        sock.sendall(request("POST", "/predict", PREDICT))
        deadline = time.monotonic() + 5
        while front.active != 1:
            assert time.monotonic() < deadline, "the request was not admitted"
            time.sleep(0.01)
        time.sleep(0.1)
        assert len(state.tasks) == 1  # waiting for the drain, in a task
        srv.stop()
        assert front.active == 0
        assert not srv.thread.is_alive()
