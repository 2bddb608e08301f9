"""The predict path shared by /predict and v2 infer: batch, count, decide labels."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from service.batching import BatchResult
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
    """Run a validated batch through the model version's batcher and decide each row."""
    m = mv.metrics
    try:
        result = await mv.batcher.submit(x)
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
        observe_many(m.score, score)
    else:
        class_index = probs.argmax(axis=1)
        score = probs.max(axis=1)
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
    return Decided(probs, class_index, score, result)
