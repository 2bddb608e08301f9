"""Cheap models run on the event loop, merged per turn of the loop; slow ones on their thread."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.errors import InferenceError
from service.http.app import create_app
from service.models.batching import Batcher
from tests.conftest import make_settings, wait_ready

W = np.arange(6, dtype=np.float32).reshape(3, 2)


def _batcher(run: Any = None, **kw: Any) -> Batcher:
    opts: dict[str, Any] = {
        "max_batch_rows": 16,
        "max_queue_delay_ms": 5.0,
        "max_queue_rows": 1000,
        "inline_budget_s": 0.001,
    }
    opts.update(kw)
    return Batcher(run or (lambda x: x @ W), name="t-1", **opts)


def _failing_run(fail: list[bool]) -> Any:
    """A model run that raises while `fail[0]` is True."""

    def run(x: np.ndarray) -> np.ndarray:
        if fail[0]:
            raise RuntimeError("boom")
        return x @ W

    return run


def _recording(calls: list[tuple[int, int]]) -> Any:
    def run(x: np.ndarray) -> np.ndarray:
        calls.append((len(x), threading.get_ident()))
        return x @ W

    return run


def test_requests_of_one_loop_turn_merge_into_one_run_on_the_loop() -> None:
    calls: list[tuple[int, int]] = []
    xs = [np.full((n, 3), float(n), dtype=np.float32) for n in (1, 3, 2, 4)]

    async def main() -> tuple[list[np.ndarray], int]:
        b = _batcher(_recording(calls))
        b.calibrate(1e-6, 1e-7)  # cheap: well inside the 1 ms budget
        b.start()
        results = await asyncio.gather(*(b.submit(x) for x in xs))
        await b.close()
        assert b.inline_runs == 1
        return [r.probabilities for r in results], threading.get_ident()

    outs, loop_thread = asyncio.run(main())
    assert calls == [(10, loop_thread)]
    for x, out in zip(xs, outs, strict=True):
        np.testing.assert_array_equal(out, x @ W)


def test_rows_over_the_budget_or_the_batch_limit_go_to_the_thread() -> None:
    calls: list[tuple[int, int]] = []

    async def main() -> int:
        b = _batcher(_recording(calls), max_batch_rows=4)
        b.calibrate(0.0, 0.0002)  # 0.2 ms a row: 5 rows are over the 1 ms budget
        b.start()
        await asyncio.gather(b.submit(np.ones((3, 3), np.float32)))  # inline
        await b.submit(np.ones((5, 3), np.float32))  # over budget and limit: thread
        await b.close()
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert calls[0] == (3, loop_thread)
    assert calls[1][0] == 5 and calls[1][1] != loop_thread


def test_uncalibrated_or_zero_budget_never_runs_on_the_loop() -> None:
    calls: list[tuple[int, int]] = []

    async def main() -> int:
        never = _batcher(_recording(calls))  # not calibrated: cost unknown
        never.start()
        await never.submit(np.ones((1, 3), np.float32))
        await never.close()
        off = _batcher(_recording(calls), inline_budget_s=0.0)
        off.calibrate(0.0, 0.0)
        off.start()
        await off.submit(np.ones((1, 3), np.float32))
        await off.close()
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert len(calls) == 2 and all(t != loop_thread for _, t in calls)


def test_a_failed_inline_run_fails_each_of_its_requests_and_the_next_run_works() -> None:
    fail = [True]

    async def main() -> None:
        b = _batcher(_failing_run(fail))
        b.calibrate(0.0, 0.0)
        b.start()
        results = await asyncio.gather(
            *(b.submit(np.ones((2, 3), np.float32)) for _ in range(3)), return_exceptions=True
        )
        assert all(isinstance(r, InferenceError) for r in results)
        fail[0] = False
        ok = await b.submit(np.ones((2, 3), np.float32))
        np.testing.assert_array_equal(ok.probabilities, np.ones((2, 3), np.float32) @ W)
        assert b._queued_rows == 0  # every failed row was released
        await b.close()

    asyncio.run(main())


def test_a_failed_inline_merged_run_fails_only_the_request_whose_rows_fail() -> None:
    calls: list[int] = []

    def fragile(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        if (x[:, 0] > 1e6).any():
            raise RuntimeError("index out of bounds")
        return x @ W

    xs = [np.full((n, 3), float(n), np.float32) for n in (1, 2, 3)]
    xs.insert(1, np.array([[2e6, 0.0, 0.0]], np.float32))

    async def main() -> list[Any]:
        b = _batcher(fragile)
        b.calibrate(0.0, 0.0)
        b.start()
        results = await asyncio.gather(*(b.submit(x) for x in xs), return_exceptions=True)
        assert b._queued_rows == 0 and b.batches_run == 3  # the three good requests alone
        await b.close()
        return results

    results = asyncio.run(main())
    assert calls == [7, 1, 1, 2, 3]  # merged, failed, then each request alone
    assert isinstance(results[1], InferenceError) and "on this request's rows" in str(results[1])
    for i in (0, 2, 3):
        np.testing.assert_array_equal(results[i].probabilities, xs[i] @ W)


def test_without_batching_inline_requests_run_one_by_one() -> None:
    calls: list[tuple[int, int]] = []

    async def main() -> None:
        b = _batcher(_recording(calls), enabled=False)
        b.calibrate(0.0, 0.0)
        b.start()
        await asyncio.gather(*(b.submit(np.ones((n, 3), np.float32)) for n in (1, 2, 3)))
        await b.close()

    asyncio.run(main())
    assert [n for n, _ in calls] == [1, 2, 3]


def _threads_seen(app: Any, names: tuple[str, ...]) -> dict[str, list[int]]:
    seen: dict[str, list[int]] = {n: [] for n in names}
    for name in names:
        mv = app.state.repository.resolve(name)
        original = mv.batcher._run

        def spy(x: np.ndarray, run: Any = original, name: str = name) -> np.ndarray:
            seen[name].append(threading.get_ident())
            return run(x)

        mv.batcher._run = spy
    return seen


def _predict_both(client: TestClient) -> None:
    assert client.post("/predict", json={"model": "bin", "instances": [[1, 2, 3]]}).is_success
    assert client.post("/predict", json={"model": "img", "instances": [[0] * 16]}).is_success
    infer = {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    assert client.post("/v2/models/bin/infer", json=infer).is_success


def test_a_cheap_model_runs_on_the_loop_and_a_slow_one_on_its_thread(
    client: TestClient, app: Any
) -> None:
    assert client.portal is not None
    loop_thread = client.portal.call(threading.get_ident)
    # The tiny test models are cheap (warm-up measures tens of microseconds a run, against a
    # 200 us budget); make img look as slow as a big model (1 s a run).
    bin_batcher = app.state.repository.resolve("bin").batcher
    assert bin_batcher.estimate_s(1) <= bin_batcher.inline_budget_s
    app.state.repository.resolve("img").batcher.calibrate(1.0, 0.0)
    # What bin's runs teach its batcher is not this test's business: a first run stalled for
    # 2 ms (a busy host preempting it) would move the next one to the thread.
    bin_batcher._learn = lambda rows, seconds: None  # type: ignore[method-assign]
    seen = _threads_seen(app, ("bin", "img"))
    _predict_both(client)
    assert seen["bin"] == [loop_thread, loop_thread]
    assert len(seen["img"]) == 1 and loop_thread not in seen["img"]


def test_with_inline_off_onnx_runtime_never_runs_on_the_loop(
    model_repo: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import service.models.repository as repository

    monkeypatch.setattr(repository, "INLINE_BUDGET_S", 0.0)  # as for a GPU model
    with TestClient(create_app(make_settings(model_repo, tmp_path))) as client:
        wait_ready(client)
        assert client.portal is not None
        loop_thread = client.portal.call(threading.get_ident)
        seen = _threads_seen(client.app, ("bin", "img"))
        _predict_both(client)
    ran = seen["bin"] + seen["img"]
    assert len(ran) == 3 and loop_thread not in ran


@pytest.mark.parametrize("slow_s", [0.005])
def test_a_model_slower_than_its_warm_up_moves_off_the_loop(
    client: TestClient, app: Any, slow_s: float
) -> None:
    assert client.portal is not None
    loop_thread = client.portal.call(threading.get_ident)
    mv = app.state.repository.resolve("bin")
    original = mv.batcher._run
    seen: list[int] = []

    def slow(x: np.ndarray) -> np.ndarray:
        seen.append(threading.get_ident())
        time.sleep(slow_s)  # far over what warm-up measured, and over the 200 us budget
        return original(x)

    mv.batcher._run = slow
    for _ in range(3):
        assert client.post("/predict", json={"model": "bin", "instances": [[1, 2, 3]]}).is_success
    assert seen[0] == loop_thread  # predicted cheap from warm-up
    assert loop_thread not in seen[1:]  # measured slow: moved to the model's thread


def test_a_turn_with_more_rows_than_one_batch_runs_several_batches_on_the_loop() -> None:
    calls: list[tuple[int, int]] = []

    async def main() -> int:
        b = _batcher(_recording(calls), max_batch_rows=4)
        b.calibrate(0.0, 0.0)
        b.start()
        outs = await asyncio.gather(*(b.submit(np.full((3, 3), i, np.float32)) for i in range(3)))
        for i, r in enumerate(outs):
            np.testing.assert_array_equal(r.probabilities, np.full((3, 3), i, np.float32) @ W)
        await b.close()
        assert b.inline_runs == 3
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert calls == [(3, loop_thread)] * 3


def test_a_turn_runs_at_most_its_budget_and_the_rest_waits_for_the_next_turn() -> None:
    """Two 0.4 ms runs fit the 1 ms budget of a turn; the third runs on the loop too, but only
    after the loop has had its turn (a callback scheduled meanwhile runs first)."""
    events: list[str] = []
    threads: list[int] = []

    def run(x: np.ndarray) -> np.ndarray:
        events.append(f"run {len(x)}")
        threads.append(threading.get_ident())
        return x @ W

    async def main() -> int:
        b = _batcher(run, max_batch_rows=4)
        b.calibrate(0.0004, 0.0)
        # 0.4 ms a run, whatever the runs measure: learning from a first run stalled past
        # 2.4 ms (a busy host) would predict the second over the budget left.
        b._learn = lambda rows, seconds: None  # type: ignore[method-assign]
        b.start()
        loop = asyncio.get_running_loop()
        runs = [asyncio.ensure_future(b.submit(np.ones((3, 3), np.float32))) for _ in range(3)]
        await asyncio.sleep(0)  # the three submit; the batcher's turn is scheduled
        loop.call_soon(events.append, "the loop's own turn")
        await asyncio.gather(*runs)
        await b.close()
        assert b.inline_runs == 3
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert events == ["run 3", "run 3", "the loop's own turn", "run 3"]
    assert threads == [loop_thread] * 3


def test_a_run_over_the_budget_on_its_own_goes_to_the_thread() -> None:
    calls: list[tuple[int, int]] = []

    async def main() -> int:
        b = _batcher(_recording(calls), max_batch_rows=32)
        b.calibrate(0.0002, 0.0001)  # 3 rows: 0.5 ms; 3 + 3 merged: 0.8 ms; 20 rows: 2.2 ms
        b.start()
        await asyncio.gather(*(b.submit(np.ones((3, 3), np.float32)) for _ in range(2)))
        await b.submit(np.ones((20, 3), np.float32))
        await b.close()
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert calls[0] == (6, loop_thread)
    assert calls[1][0] == 20 and calls[1][1] != loop_thread


def test_a_failed_run_in_a_deferred_turn_fails_its_group_only_and_close_returns() -> None:
    fail_on = {2}
    seen: list[int] = []

    def run(x: np.ndarray) -> np.ndarray:
        seen.append(int(x[0, 0]))
        if int(x[0, 0]) in fail_on:
            raise RuntimeError("boom")
        return x @ W

    async def main() -> list[Any]:
        b = _batcher(run, max_batch_rows=3)
        b.calibrate(0.0004, 0.0)  # two runs a turn: groups 2 and 3 wait for later turns
        b.start()
        xs = [np.full((3, 3), float(i), np.float32) for i in range(4)]
        results = await asyncio.gather(*(b.submit(x) for x in xs), return_exceptions=True)
        await asyncio.wait_for(b.close(), 2)
        assert b._queued_rows == 0 and not b._tick
        return results

    results = asyncio.run(main())
    assert seen == [0, 1, 2, 3]
    assert isinstance(results[2], InferenceError)
    for i in (0, 1, 3):
        np.testing.assert_array_equal(results[i].probabilities, np.full((3, 3), i) @ W)


def test_a_cheap_request_runs_on_the_loop_while_a_slow_one_is_on_the_thread() -> None:
    slow_started = threading.Event()
    release = threading.Event()
    calls: list[tuple[int, int]] = []

    def run(x: np.ndarray) -> np.ndarray:
        calls.append((len(x), threading.get_ident()))
        if len(x) > 4:
            slow_started.set()
            release.wait(5)
        return x @ W

    async def main() -> int:
        b = _batcher(run, max_batch_rows=16)
        b.calibrate(0.0, 0.0002)  # 8 rows: 1.6 ms, the thread; 1 row: 0.2 ms, the loop
        b.start()
        slow = asyncio.ensure_future(b.submit(np.ones((8, 3), np.float32)))
        while not slow_started.is_set():
            await asyncio.sleep(0.001)
        cheap = await asyncio.wait_for(b.submit(np.ones((1, 3), np.float32)), 2)
        np.testing.assert_array_equal(cheap.probabilities, np.ones((1, 3)) @ W)
        release.set()
        await slow
        await b.close()
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert calls[0][0] == 8 and calls[0][1] != loop_thread
    assert calls[1] == (1, loop_thread)
