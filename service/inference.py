"""The predict path shared by /predict and v2 infer: batch, count, decide labels."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from service.batching import ALONE, BatchResult
from service.errors import InferenceError, OverloadedError
from service.metrics import observe_many
from service.repository import ModelVersion

log = logging.getLogger(__name__)

# Called after each successful prediction with (version, inputs, class indices, scores);
# the drift monitor hangs here. Must be cheap and never raise.
Observer = Callable[[ModelVersion, np.ndarray, np.ndarray, np.ndarray], None]


@dataclass(slots=True)
class Decided:
    """Probabilities and what they decide, per row."""

    probabilities: np.ndarray
    class_index: np.ndarray
    score: np.ndarray
    result: BatchResult


async def infer(mv: ModelVersion, x: np.ndarray, observers: list[Observer]) -> Decided:
    """Run a validated batch through the model version's batcher and decide each row.

    A lone request's rows run at once (`Batcher.run_now`): the call then returns without
    waiting on the loop. What is counted of a prediction (metrics, the observers) is counted
    on the next callback of the loop, after the caller has written the answer.
    """
    m = mv.metrics
    batcher = mv.batcher
    try:
        result = batcher.run_now(x) if ALONE.get() else None
        if result is None:
            result = await batcher.submit(x)
    except OverloadedError:
        raise
    except InferenceError:
        m.error.inc()
        raise
    probs = result.probabilities
    if mv.positive_index is not None and mv.threshold is not None:
        pos = mv.positive_index
        score = probs[:, pos]
        hit = score >= mv.threshold  # the positive class (a NaN score never is)
        class_index = (hit if pos == 1 else ~hit).astype(np.intp)
    else:
        class_index = probs.argmax(axis=1)
        score = probs.max(axis=1)
    asyncio.get_running_loop().call_soon(_count, mv, x, class_index, score, observers)
    return Decided(probs, class_index, score, result)


def _count(
    mv: ModelVersion,
    x: np.ndarray,
    class_index: np.ndarray,
    score: np.ndarray,
    observers: list[Observer],
) -> None:
    """Count one answered batch: metrics, then each observer (drift)."""
    m = mv.metrics
    if mv.positive_index is not None and mv.threshold is not None:
        observe_many(m.score, score)
    m.ok.inc()
    mv.issued += len(class_index)
    if len(class_index) == 1:
        m.predictions.add_one(int(class_index[0]))
    else:
        m.predictions.add_many(class_index)
    for observe in observers:
        try:
            observe(mv, x, class_index, score)
        except Exception:
            log.exception("prediction observer failed")
