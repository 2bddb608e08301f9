"""observe_many: a batch of scores lands in the same buckets and sum as one observe per value."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from service.metrics import SCORE_BUCKETS, observe_many


def _exposition(registry: CollectorRegistry) -> list[str]:
    return [
        line for line in generate_latest(registry).decode().splitlines() if "created" not in line
    ]


def test_batches_match_one_observe_per_value() -> None:
    values = np.random.default_rng(0).random(500).astype(np.float32)
    values[:6] = [0.0, 0.05, 0.1, 0.95, 1.0, 0.5]  # values on bucket bounds go to that bucket
    one, many = CollectorRegistry(), CollectorRegistry()
    h1 = Histogram("s", "s", ["m"], buckets=SCORE_BUCKETS, registry=one).labels("a")
    h2 = Histogram("s", "s", ["m"], buckets=SCORE_BUCKETS, registry=many).labels("a")
    for v in values.tolist():
        h1.observe(v)
    for lo, hi in ((0, 1), (1, 64), (64, 500)):
        observe_many(h2, values[lo:hi])
    assert _exposition(one) == _exposition(many)
