"""The decision at the threshold, and the per-class counts it feeds, for either positive class."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from service.dataplane.inference import Inference
from service.models.batching import BatchResult
from service.monitoring.metrics import Metrics


def _version(positive_index: int | None, threshold: float | None, probs: np.ndarray) -> Any:
    registry = CollectorRegistry()
    metrics = Metrics(registry)

    async def submit(x: np.ndarray, tag: object = None) -> BatchResult:
        return BatchResult(probs, 0.0, 0.0)

    mv = SimpleNamespace(
        name="m",
        version=1,
        classes=["a", "b"],
        positive_index=positive_index,
        threshold=threshold,
        issued=0,
        metrics=metrics.version_metrics("m", 1, ["a", "b"]),
        batcher=SimpleNamespace(submit=submit),
    )
    return mv, registry


@pytest.mark.parametrize("positive_index", [0, 1])
def test_rows_at_or_over_the_threshold_are_the_positive_class(positive_index: int) -> None:
    pos_scores = np.array([0.1, 0.3, 0.31, 0.9, np.nan], dtype=np.float32)
    probs = np.zeros((5, 2), dtype=np.float32)
    probs[:, positive_index] = pos_scores
    probs[:, 1 - positive_index] = 1 - pos_scores
    mv, registry = _version(positive_index, 0.3, probs)
    decided = asyncio.run(_run(mv, np.zeros((5, 3), np.float32)))
    positive = [False, True, True, True, False]  # a NaN score is never positive
    expected = [positive_index if p else 1 - positive_index for p in positive]
    assert decided.class_index.tolist() == expected
    np.testing.assert_array_equal(decided.score, pos_scores)
    for c, label in enumerate(["a", "b"]):
        got = registry.get_sample_value(
            "verdict_predictions_total", {"model": "m", "version": "1", "label": label}
        )
        assert got == expected.count(c)


def test_class_counts_add_up_over_single_rows_and_held_batches() -> None:
    probs_one = np.array([[0.2, 0.8]], dtype=np.float32)
    mv, registry = _version(None, None, probs_one)
    rng = np.random.default_rng(3)
    expected = [0, 0]
    for n in [1] * 5 + [64] * 70 + [7]:
        p = rng.random(n).astype(np.float32)
        probs = np.stack([p, 1 - p], axis=1)
        mv.batcher.submit = _returning(probs)
        decided = asyncio.run(_run(mv, np.zeros((n, 3), np.float32)))
        for c in decided.class_index.tolist():
            expected[c] += 1
    for c, label in enumerate(["a", "b"]):
        got = registry.get_sample_value(
            "verdict_predictions_total", {"model": "m", "version": "1", "label": label}
        )
        assert got == expected[c]
    assert mv.issued == sum(expected)


async def _run(mv: Any, x: np.ndarray) -> Any:
    inference = Inference(SimpleNamespace(), SimpleNamespace(), max_rows=10_000)  # type: ignore[arg-type]
    return await inference.run(mv, x, with_ids=False)


def _returning(probs: np.ndarray) -> Any:
    async def submit(x: np.ndarray, tag: object = None) -> BatchResult:
        return BatchResult(probs, 0.0, 0.0)

    return submit
