"""One model run over merged requests: each request's rows, splitting the output, failing
its requests, and running them one by one when a merged run failed (see models.batching)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter

import numpy as np

from service.errors import InferenceError, OverloadedError, ShuttingDownError


@dataclass(slots=True)
class BatchResult:
    """The rows of one request, how long they queued and computed, the rows of the run they
    were part of, and the tags of every request merged into that run (traces link them)."""

    probabilities: np.ndarray
    queue_s: float
    compute_s: float
    run_rows: int = 0
    tags: tuple[object, ...] = ()


class Pending:
    """A request waiting for its run: its rows, the future its answer goes to, and the tag it
    was submitted with."""

    __slots__ = ("enqueued", "future", "rows", "tag", "x")

    def __init__(
        self, x: np.ndarray, future: asyncio.Future[BatchResult], tag: object = None
    ) -> None:
        self.x = x
        self.rows = len(x)
        self.future = future
        self.tag = tag
        self.enqueued = perf_counter()


def timed_run(
    run: Callable[[np.ndarray], np.ndarray], xs: list[np.ndarray]
) -> tuple[np.ndarray, float, float]:
    """One run over the rows of every request in `xs`: (output, start, seconds)."""
    start = perf_counter()
    out = run(xs[0] if len(xs) == 1 else np.concatenate(xs))
    return out, start, perf_counter() - start


Outcome = tuple[np.ndarray, float, float] | Exception


def run_each(run: Callable[[np.ndarray], np.ndarray], xs: list[np.ndarray]) -> list[Outcome]:
    """Each request's rows run alone (after their merged run failed): (output, start,
    seconds), or the exception its run raised."""
    outcomes: list[Outcome] = []
    for x in xs:
        try:
            outcomes.append(timed_run(run, [x]))
        except Exception as exc:
            outcomes.append(exc)
    return outcomes


def hand_out(
    batch: list[Pending], out: np.ndarray, start: float, compute_s: float
) -> list[BatchResult]:
    """Give each request of a merged run its own rows of the output, in order."""
    results = []
    offset = 0
    rows = len(out)
    tags = tuple(p.tag for p in batch)
    for p in batch:
        result = BatchResult(
            out[offset : offset + p.rows], start - p.enqueued, compute_s, rows, tags
        )
        offset += p.rows
        results.append(result)
        if not p.future.done():
            p.future.set_result(result)
    return results


def fail(waiting: list[Pending], error: Exception) -> None:
    """Fail every request that still waits."""
    for p in waiting:
        if not p.future.done():
            p.future.set_exception(error)


def rows_of(group: list[Pending]) -> int:
    """Rows in a group of requests."""
    return group[0].rows if len(group) == 1 else sum(p.rows for p in group)


def as_inference_error(name: str, exc: Exception) -> Exception:
    """The error a request gets for a failed run (VerdictErrors pass through)."""
    if isinstance(exc, InferenceError | OverloadedError | ShuttingDownError):
        return exc
    return InferenceError(
        f"inference failed on {name}: {type(exc).__name__} (the model run failed on this "
        "request's rows)"
    )


def failed_alone(name: str, exc: Exception) -> InferenceError:
    """The error of a request whose rows failed when run alone, after their merged run failed:
    500 `inference_failed`, since the rows passed every check of the model's input and the
    model itself failed on them."""
    return InferenceError(
        f"inference failed on {name}: {type(exc).__name__} (the model run failed on this "
        "request's rows, run alone after the batch they were merged into failed; the other "
        "requests of that batch were answered)"
    )
