"""A request alone in flight runs its model at once, without the batcher's queue.

`Batcher.run_now` on its own, then the data plane's choice (`Inference`: the only
inference request in flight, the first of its loop turn), through the app (ASGI) and
verdict's own server on 127.0.0.1, where requests in flight together still merge.
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

from service.errors import InferenceError, ShuttingDownError
from service.models.batching import Batcher
from tests.conftest import make_settings, write_binary, write_image
from tests.service.server_support import (
    INFER,
    PREDICT,
    Reader,
    ThreadServer,
    connect,
    request,
)
from tests.service.test_service_inline import W, _batcher, _failing_run


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


@pytest.fixture
def cheap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every model run predicted well within the inline budget, whatever this host's speed:
    the costs a batcher learns from its runs would put a run of the tiny model over the
    budget on a host busy enough, and these tests are about the choice, not the timing."""
    monkeypatch.setattr(Batcher, "estimate_s", lambda self, rows: 1e-6)


@pytest.mark.usefixtures("cheap")
def test_one_lone_request_a_loop_turn(client: TestClient, app: Any) -> None:
    """Only the first request of a turn with nothing else in flight runs at once; the
    requests that start after it in the same turn are merged."""
    inference = app.state.dataplane.inference
    mv = app.state.repository.resolve("bin")
    x = np.ones((1, 3), np.float32)

    async def main() -> list[bool]:
        ran: list[bool] = []
        original = mv.batcher.run_now

        def run_now(rows: np.ndarray, tag: object = None) -> Any:
            result = original(rows, tag)
            ran.append(result is not None)
            return result

        mv.batcher.run_now = run_now
        try:
            inference._active = 1  # as inside a request
            assert inference._run_now(mv, x, None) is not None
            assert inference._run_now(mv, x, None) is None  # same turn
            await asyncio.sleep(0)
            assert inference._run_now(mv, x, None) is not None
            await asyncio.sleep(0)
            inference._active = 2  # another request is in flight
            assert inference._run_now(mv, x, None) is None
        finally:
            inference._active = 0
            del mv.batcher.run_now
        return ran

    assert client.portal is not None
    assert client.portal.call(main) == [True, True]


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


@pytest.mark.usefixtures("cheap")
def test_a_lone_request_runs_at_once_and_is_counted_after(
    client: TestClient, app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    inference = app.state.dataplane.inference
    mv = app.state.repository.resolve("bin")
    submits = _spy(monkeypatch, Batcher, "submit")

    async def lone() -> tuple[int, int]:
        before = mv.issued
        decided = await inference.predict("bin", None, [[1.0, 2.0, 3.0]])
        counted_at_return = mv.issued - before  # the answer is written before the counts
        await asyncio.sleep(0)
        assert len(decided.class_index) == 1
        return counted_at_return, mv.issued - before

    assert client.portal is not None
    assert client.portal.call(lone) == (0, 1)
    assert submits == []

    async def together() -> None:
        await asyncio.gather(*(inference.predict("bin", None, [[1.0, 2.0, 3.0]]) for _ in range(3)))

    client.portal.call(together)
    assert len(submits) == 2  # the first ran at once; the others were merged


@pytest.mark.usefixtures("cheap")
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
    srv = ThreadServer(create_app(make_settings(tmp / "models", tmp, read_timeout_s=5.0)))
    yield srv
    srv.stop()


@pytest.mark.usefixtures("cheap")
def test_lone_requests_through_the_server_run_at_once(
    server: ThreadServer, monkeypatch: pytest.MonkeyPatch
) -> None:
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
    assert len(now) == 2 and None not in now
    assert server.app.edge.active == 0


def test_requests_in_flight_together_are_merged_not_run_at_once(
    server: ThreadServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = _slow_img(server.app, monkeypatch, 1.0)
    with connect(server) as held, connect(server) as a, connect(server) as b:
        held.sendall(request("POST", "/predict", slow))  # in the data plane, on its thread
        inference = server.app.state.dataplane.inference
        deadline = time.monotonic() + 5
        while inference._active != 1:
            assert time.monotonic() < deadline, "the slow request did not start"
            time.sleep(0.01)
        now = _spy(monkeypatch, Batcher, "run_now")
        submits = _spy(monkeypatch, Batcher, "submit")
        a.sendall(request("POST", "/predict", PREDICT))
        b.sendall(request("POST", "/v2/models/bin/infer", INFER))
        assert Reader(a).response()[0] == 200
        assert Reader(b).response()[0] == 200
        assert now == [] and len(submits) == 2  # neither was alone: both went to the batcher
        assert Reader(held).response()[0] == 200
    assert server.app.edge.active == 0


def test_a_lone_request_that_waits_for_the_model_thread_is_answered(
    server: ThreadServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Over the inline budget, the run goes to the model's thread; the request is answered
    once the run is done, under its own request id."""
    caplog.set_level(logging.WARNING)
    batcher = server.app.state.repository.resolve("img").batcher
    monkeypatch.setattr(batcher, "estimate_s", lambda rows: 1.0)  # far over the budget
    threads: list[int] = []
    original = batcher._run

    def run(x: np.ndarray) -> np.ndarray:
        threads.append(threading.get_ident())
        return original(x)

    monkeypatch.setattr(batcher, "_run", run)
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
    assert not [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.WARNING]
    assert server.app.edge.active == 0
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


def test_an_answer_does_not_time_out_the_next_request_in_its_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first request's answer arms the idle timer while the next request in the same
    bytes has begun: it must not be cut off by it."""
    import service.http.server as server_module
    from service.http.app import create_app

    monkeypatch.setattr(server_module, "KEEP_ALIVE_S", 1.0)
    write_binary(tmp_path / "models")
    write_image(tmp_path / "models")
    srv = ThreadServer(create_app(make_settings(tmp_path / "models", tmp_path)))
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
