"""observe_many: a batch of scores lands in the same buckets and sum as one observe per value."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from service.monitoring.buffers import observe_many
from service.monitoring.request_metrics import SCORE_BUCKETS


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


def test_a_buffered_histogram_counts_no_bucket_for_nan() -> None:
    from prometheus_client import CollectorRegistry, Histogram

    from service.monitoring.buffers import BufferedHistogram

    registry = CollectorRegistry()
    child = Histogram("h", "h", buckets=(0.5, 1.0), registry=registry)
    buffered = BufferedHistogram(child)
    buffered.observe_many(np.array([0.2, float("nan"), 0.7], dtype=np.float32))
    buffered.observe(float("nan"))
    buffered.observe(0.5)
    buffered.flush()
    assert registry.get_sample_value("h_bucket", {"le": "0.5"}) == 2
    assert registry.get_sample_value("h_bucket", {"le": "1.0"}) == 3
    assert registry.get_sample_value("h_count") == 3


def test_a_retired_versions_buffers_are_flushed_and_dropped() -> None:
    from prometheus_client import CollectorRegistry

    from service.monitoring.metrics import Metrics

    registry = CollectorRegistry()
    metrics = Metrics(registry)
    before = len(metrics._buffers)
    vm = metrics.version_metrics("m", 1, ["a", "b"])
    assert len(metrics._buffers) == before + 14  # 13 series (4 outcomes x 2 protocols) + classes
    vm.requests["grpc"].ok.inc(3)
    metrics.forget(vm)
    assert len(metrics._buffers) == before
    labels = {"model": "m", "version": "1", "outcome": "ok", "protocol": "grpc"}
    assert registry.get_sample_value("verdict_inference_requests_total", labels) == 3


def test_held_batches_count_exactly_when_the_hold_fills_and_at_every_flush() -> None:
    from service.monitoring.buffers import BufferedHistogram

    rng = np.random.default_rng(1)
    one, many = CollectorRegistry(), CollectorRegistry()
    h1 = Histogram("s", "s", buckets=SCORE_BUCKETS, registry=one)
    buffered = BufferedHistogram(Histogram("s", "s", buckets=SCORE_BUCKETS, registry=many))
    sizes = [64] * 70 + [3, 1, 500]  # 4 480 values in 64s: past the 4 096 held once, then more
    for n in sizes:
        values = rng.random(n).astype(np.float32)
        for v in values.tolist():
            h1.observe(v)
        buffered.observe_many(values)
        if n == 64 and buffered.held_rows == 0:
            assert buffered.counts != [0] * len(buffered.counts)  # counted when the hold filled
    assert buffered.held_rows > 0  # the tail is still held until the flush
    buffered.flush()
    assert buffered.held_rows == 0
    assert _exposition(one) == _exposition(many)


def test_forgetting_a_version_counts_what_its_buffers_still_hold() -> None:
    from service.monitoring.metrics import Metrics

    registry = CollectorRegistry()
    metrics = Metrics(registry)
    vm = metrics.version_metrics("m", 1, ["a", "b"])
    vm.score.observe_many(np.array([0.1, 0.9, 0.95], dtype=np.float32))
    vm.predictions.add_many(np.array([0, 1, 1]))
    vm.predictions.add_one(1)
    assert vm.score.held_rows == 3 and vm.predictions.held_rows == 3
    metrics.forget(vm)
    labels = {"model": "m", "version": "1"}
    assert registry.get_sample_value("verdict_prediction_score_count", labels) == 3
    got = [
        registry.get_sample_value("verdict_predictions_total", {**labels, "label": c})
        for c in ("a", "b")
    ]
    assert got == [1, 3]


def test_a_histogram_without_the_written_attributes_is_observed_directly() -> None:
    """prometheus_client has no public API to add counts per bucket; should a release rename
    what the buffer writes, every value goes to the public `observe` instead, exactly."""
    from service.monitoring.buffers import DirectHistogram, histogram_buffer

    registry = CollectorRegistry()
    real = Histogram("h", "h", buckets=SCORE_BUCKETS, registry=registry)
    assert not isinstance(histogram_buffer(real), DirectHistogram)  # this release fits

    class PublicOnly:  # what a child looks like through its public API alone
        def __init__(self, child: object) -> None:
            self.observe = child.observe  # type: ignore[attr-defined]

    expected_registry = CollectorRegistry()
    expected = Histogram("h", "h", buckets=SCORE_BUCKETS, registry=expected_registry)
    buffer = histogram_buffer(PublicOnly(real))
    assert isinstance(buffer, DirectHistogram)
    values = np.random.default_rng(1).random(100).astype(np.float32)
    buffer.observe_many(values)
    buffer.observe(0.5)
    buffer.flush()
    for v in [*values.tolist(), 0.5]:
        expected.observe(v)
    assert _exposition(registry) == _exposition(expected_registry)
