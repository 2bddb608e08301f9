"""The micro-batcher: exact split of merged batches, bounded queue, failures kept per request."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest

from service.errors import InferenceError, OverloadedError
from service.models.batching import Batcher


def _model(calls: list[int]):
    w = np.arange(6, dtype=np.float32).reshape(3, 2)

    def run(x: np.ndarray) -> np.ndarray:
        assert threading.current_thread() is not threading.main_thread()
        calls.append(len(x))
        return x @ w

    return run, w


def _batcher(run, **kw) -> Batcher:
    opts: dict[str, Any] = {"max_batch_rows": 16, "max_queue_delay_ms": 5.0, "max_queue_rows": 1000}
    opts.update(kw)
    return Batcher(run, name="t-1", **opts)


def test_concurrent_mixed_sizes_are_merged_and_split_exactly() -> None:
    calls: list[int] = []
    run, w = _model(calls)
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(int(n), 3)).astype(np.float32) for n in rng.integers(1, 6, size=30)]

    async def main() -> list[np.ndarray]:
        b = _batcher(run)
        b.start()
        results = await asyncio.gather(*(b.submit(x) for x in xs))
        await b.close()
        return [r.probabilities for r in results]

    outs = asyncio.run(main())
    for x, out in zip(xs, outs, strict=True):
        # Not bit for bit: BLAS may round a row differently in a batch of another size.
        np.testing.assert_allclose(out, x @ w, rtol=1e-6, atol=1e-6)
    # Merged: fewer runs than requests, each within the row limit, every row computed once.
    assert len(calls) < len(xs)
    assert max(calls) <= 16
    assert sum(calls) == sum(len(x) for x in xs)


def test_a_request_larger_than_the_batch_limit_runs_alone() -> None:
    calls: list[int] = []
    run, w = _model(calls)
    big = np.ones((40, 3), dtype=np.float32)
    small = np.full((2, 3), 2.0, dtype=np.float32)

    async def main():
        b = _batcher(run, max_batch_rows=8)
        b.start()
        r = await asyncio.gather(b.submit(small), b.submit(big), b.submit(small))
        await b.close()
        return r

    r = asyncio.run(main())
    assert 40 in calls
    np.testing.assert_array_equal(r[1].probabilities, big @ w)
    np.testing.assert_array_equal(r[2].probabilities, small @ w)


def test_full_queue_answers_overloaded_at_once() -> None:
    gate = threading.Event()

    def slow(x: np.ndarray) -> np.ndarray:
        gate.wait(5)
        return x

    async def main():
        b = _batcher(slow, max_queue_rows=4)
        b.start()
        first = asyncio.create_task(b.submit(np.ones((3, 3), np.float32)))
        await asyncio.sleep(0.01)
        with pytest.raises(OverloadedError) as exc:
            await b.submit(np.ones((2, 3), np.float32))
        assert exc.value.retry_after_s
        gate.set()
        await first
        ok = await b.submit(np.ones((2, 3), np.float32))  # the queue drained: admitted again
        await b.close()
        return ok

    assert asyncio.run(main()).probabilities.shape == (2, 3)


def test_a_model_that_fails_on_every_request_fails_each_and_the_next_batch_works() -> None:
    fail = {"on": True}

    def flaky(x: np.ndarray) -> np.ndarray:
        if fail["on"]:
            raise RuntimeError("boom")
        return x

    async def main():
        b = _batcher(flaky)
        b.start()
        results = await asyncio.wait_for(
            asyncio.gather(
                *(b.submit(np.ones((1, 3), np.float32)) for _ in range(5)),
                return_exceptions=True,
            ),
            timeout=5,
        )
        fail["on"] = False
        after = await b.submit(np.ones((1, 3), np.float32))
        await b.close()
        return results, after

    results, after = asyncio.run(main())
    assert all(isinstance(r, InferenceError) for r in results)
    assert after.probabilities.shape == (1, 3)


def test_a_failed_merged_batch_answers_the_good_requests_and_fails_only_the_bad_one() -> None:
    calls: list[int] = []
    gate = threading.Event()

    def fragile(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        gate.wait(5)  # the first (lone) run holds the thread while the others queue up
        if (x[:, 0] > 1e6).any():
            raise RuntimeError("index out of bounds")
        return x @ W3

    good = [np.full((n, 3), float(n), np.float32) for n in (1, 2, 3, 2)]
    bad = np.array([[2e6, 0.0, 0.0]], np.float32)

    async def main() -> list[Any]:
        b = _batcher(fragile)
        b.start()
        first = asyncio.create_task(b.submit(good[0]))
        await asyncio.sleep(0.02)
        rest = [asyncio.create_task(b.submit(x)) for x in (good[1], bad, good[2], good[3])]
        await asyncio.sleep(0.02)
        gate.set()
        results = await asyncio.wait_for(
            asyncio.gather(first, *rest, return_exceptions=True), timeout=5
        )
        assert b._queued_rows == 0
        await b.close()
        return results

    results = asyncio.run(main())
    # The lone first run, one merged run of the four queued requests (8 rows) that failed,
    # then each of them alone.
    assert calls == [1, 8, 2, 1, 3, 2]
    error = results[2]
    assert isinstance(error, InferenceError) and error.status_code == 500
    assert "RuntimeError (the model run failed on this request's rows, run alone" in error.message
    for i, x in zip((0, 1, 3, 4), good, strict=True):
        np.testing.assert_array_equal(results[i].probabilities, x @ W3)


W3 = np.arange(6, dtype=np.float32).reshape(3, 2)


def test_batching_off_runs_each_request_alone() -> None:
    calls: list[int] = []
    run, w = _model(calls)
    xs = [np.full((n, 3), n, dtype=np.float32) for n in (1, 2, 3, 4)]

    async def main():
        b = _batcher(run, enabled=False)
        b.start()
        r = await asyncio.gather(*(b.submit(x) for x in xs))
        await b.close()
        return r

    results = asyncio.run(main())
    assert sorted(calls) == [1, 2, 3, 4]
    for x, r in zip(xs, results, strict=True):
        np.testing.assert_array_equal(r.probabilities, x @ w)


def test_closed_batcher_finishes_queued_work_and_refuses_new() -> None:
    calls: list[int] = []
    run, _ = _model(calls)

    async def main():
        b = _batcher(run)
        b.start()
        pending = [asyncio.create_task(b.submit(np.ones((1, 3), np.float32))) for _ in range(3)]
        await asyncio.sleep(0)
        await b.close()
        done = await asyncio.gather(*pending)
        with pytest.raises(Exception, match="unloaded"):
            await b.submit(np.ones((1, 3), np.float32))
        return done

    assert len(asyncio.run(main())) == 3


def test_a_broken_dispatcher_fails_waiters_instead_of_hanging() -> None:
    calls: list[int] = []
    run, _ = _model(calls)

    async def main():
        b = _batcher(run)
        b.start()

        def broken_take():
            raise RuntimeError("bug")

        b._take = broken_take  # type: ignore[method-assign]
        results = await asyncio.wait_for(
            asyncio.gather(
                *(b.submit(np.ones((1, 3), np.float32)) for _ in range(4)),
                return_exceptions=True,
            ),
            timeout=5,
        )
        del b._take  # the dispatcher keeps running with the real method again
        after = await asyncio.wait_for(
            asyncio.gather(*(b.submit(np.ones((1, 3), np.float32)) for _ in range(3))), 5
        )
        await b.close()
        return results, after

    results, after = asyncio.run(main())
    # The first request ran at once on the idle path; the queued ones got the error.
    assert sum(isinstance(r, InferenceError) for r in results) == 3
    assert len(after) == 3
