"""Drift bin counts against the manifest's reference edges, by hand."""

from __future__ import annotations

import numpy as np
from feedback_support import BINARY, MULTICLASS, Metrics
from prometheus_client import CollectorRegistry

from service.monitoring.drift import (
    CLASS_FEATURE,
    CONFIDENCE_FEATURE,
    SCORE_FEATURE,
    DriftMonitor,
    bin_index,
    feature_bins,
    monitored_features,
)


def bins(
    registry: CollectorRegistry, feature: str, n: int, model: str = "bc", version: int = 1
) -> list[float]:
    return [
        registry.get_sample_value(
            "verdict_feature_bin_total",
            {"model": model, "version": str(version), "feature": feature, "bin": str(i)},
        )
        or 0.0
        for i in range(n)
    ]


def test_bins_are_left_open_right_closed() -> None:
    edges = np.array([0.0, 1.0])
    values = np.array([-5.0, 0.0, 0.5, 1.0, 1.0001, 9.0])
    assert bin_index(edges, values).tolist() == [0, 0, 1, 1, 2, 2]


def test_bin_counts_by_hand(registry: CollectorRegistry) -> None:
    monitor = DriftMonitor(Metrics(registry), max_features=10)
    assert monitor.register("bc", 1, BINARY) == ["a", "b", "c"]
    # edges: a [0, 1]; b [10]; c [-1, 0, 1]; score [0.25, 0.5, 0.75]
    x = np.array(
        [
            [-1.0, 10.0, -2.0],
            [0.0, 11.0, -1.0],
            [0.5, 5.0, 0.5],
            [2.0, 10.5, 3.0],
        ],
        dtype=np.float32,
    )
    scores = np.array([0.1, 0.25, 0.6, 0.99], dtype=np.float32)
    monitor.observe("bc", 1, x, scores)
    assert bins(registry, "a", 3) == [2, 1, 1]
    assert bins(registry, "b", 2) == [2, 2]
    assert bins(registry, "c", 4) == [2, 0, 1, 1]
    assert bins(registry, SCORE_FEATURE, 4) == [2, 0, 1, 1]
    # a second batch adds to the same children
    monitor.observe("bc", 1, x[:1], scores[:1])
    assert bins(registry, "a", 3) == [3, 1, 1]
    assert bins(registry, SCORE_FEATURE, 4) == [3, 0, 1, 1]
    # no bin beyond B - 1 exists
    labels = {"model": "bc", "version": "1", "feature": "a", "bin": "3"}
    assert registry.get_sample_value("verdict_feature_bin_total", labels) is None


def test_the_feature_cap_keeps_the_first_features_in_manifest_order(
    registry: CollectorRegistry,
) -> None:
    monitor = DriftMonitor(Metrics(registry), max_features=2)
    assert monitor.register("bc", 1, BINARY) == ["a", "b"]
    monitor.observe("bc", 1, np.zeros((5, 3), dtype=np.float32), None)
    assert bins(registry, "a", 3) == [5, 0, 0]
    assert bins(registry, "b", 2) == [5, 0]
    for i in range(4):
        labels = {"model": "bc", "version": "1", "feature": "c", "bin": str(i)}
        assert registry.get_sample_value("verdict_feature_bin_total", labels) is None
    assert monitored_features(BINARY, 0) == []


def test_images_count_only_what_they_have_and_unknown_models_nothing(
    registry: CollectorRegistry,
) -> None:
    monitor = DriftMonitor(Metrics(registry), max_features=10)
    assert monitor.register("digits", 2, MULTICLASS) == []
    monitor.observe("digits", 2, np.zeros((3, 1, 8, 8), dtype=np.float32), None)
    monitor.observe("bc", 1, np.zeros((3, 3), dtype=np.float32), np.zeros(3))
    samples = [
        s
        for metric in registry.collect()
        for s in metric.samples
        if s.name == "verdict_feature_bin_total"
    ]
    assert samples == []
    monitor.register("bc", 1, BINARY)
    monitor.unregister("bc", 1)
    monitor.observe("bc", 1, np.zeros((3, 3), dtype=np.float32), np.zeros(3))
    assert bins(registry, "a", 3) == [0, 0, 0]


def test_register_publishes_the_reference_proportions(registry: CollectorRegistry) -> None:
    DriftMonitor(Metrics(registry), max_features=1).register("bc", 1, BINARY)

    def ratio(feature: str, b: int) -> float | None:
        labels = {"model": "bc", "version": "1", "feature": feature, "bin": str(b)}
        return registry.get_sample_value("verdict_reference_bin_ratio", labels)

    assert [ratio("a", b) for b in range(3)] == [0.3, 0.4, 0.3]
    assert [ratio(SCORE_FEATURE, b) for b in range(4)] == [0.25] * 4
    assert ratio("b", 0) is None  # beyond the cap


# A multiclass manifest as training writes it now: predicted-class shares and confidence bins.
WITH_REFERENCE = {
    **MULTICLASS,
    "reference": {
        "bins": 10,
        "features": {},
        "score": None,
        "classes": {"proportions": [0.5, 0.25, 0.25]},
        "confidence": {"edges": [0.5, 0.9], "proportions": [0.1, 0.3, 0.6]},
    },
}


def test_multiclass_models_count_predicted_classes_and_confidence(
    registry: CollectorRegistry,
) -> None:
    monitor = DriftMonitor(Metrics(registry), max_features=10)
    assert monitor.register("digits", 2, WITH_REFERENCE) == []
    x = np.zeros((5, 1, 8, 8), dtype=np.float32)
    top = np.array([0.4, 0.5, 0.51, 0.95, 1.0], dtype=np.float32)  # (.., 0.5], (0.5, 0.9], ..
    classes = np.array([2, 0, 0, 1, 0])
    monitor.observe("digits", 2, x, top, classes)
    assert bins(registry, CLASS_FEATURE, 3, "digits", 2) == [3, 1, 1]
    assert bins(registry, CONFIDENCE_FEATURE, 3, "digits", 2) == [2, 1, 2]
    assert bins(registry, SCORE_FEATURE, 3, "digits", 2) == [0, 0, 0]

    def ratio(feature: str, b: int) -> float | None:
        labels = {"model": "digits", "version": "2", "feature": feature, "bin": str(b)}
        return registry.get_sample_value("verdict_reference_bin_ratio", labels)

    assert [ratio(CLASS_FEATURE, b) for b in range(3)] == [0.5, 0.25, 0.25]
    assert [ratio(CONFIDENCE_FEATURE, b) for b in range(3)] == [0.1, 0.3, 0.6]
    # Buffered (small batches, a flush interval) counts the same.
    other = CollectorRegistry()
    deferred = DriftMonitor(Metrics(other), max_features=10, flush_interval_s=3600.0)
    deferred.register("digits", 2, WITH_REFERENCE)
    deferred.observe("digits", 2, x[:2], top[:2], classes[:2])
    deferred.observe("digits", 2, x[2:], top[2:], classes[2:])
    deferred.flush()
    assert bins(other, CLASS_FEATURE, 3, "digits", 2) == [3, 1, 1]
    assert bins(other, CONFIDENCE_FEATURE, 3, "digits", 2) == [2, 1, 2]


def test_a_class_reference_that_does_not_fit_the_classes_is_not_counted(
    registry: CollectorRegistry,
) -> None:
    manifest = {**WITH_REFERENCE, "reference": {**WITH_REFERENCE["reference"]}}
    manifest["reference"]["classes"] = {"proportions": [0.5, 0.5]}  # 2 shares, 3 classes
    monitor = DriftMonitor(Metrics(registry), max_features=10)
    monitor.register("digits", 2, manifest)
    monitor.observe("digits", 2, np.zeros((2, 1, 8, 8), np.float32), np.ones(2), np.zeros(2))
    assert bins(registry, CLASS_FEATURE, 3, "digits", 2) == [0, 0, 0]
    assert bins(registry, CONFIDENCE_FEATURE, 3, "digits", 2) == [0, 0, 2]


def test_two_versions_of_a_model_keep_their_bins_apart(registry: CollectorRegistry) -> None:
    monitor = DriftMonitor(Metrics(registry), max_features=10)
    monitor.register("bc", 1, BINARY)
    monitor.register("bc", 2, {**BINARY, "version": 2})
    x = np.array([[-1.0, 0.0, 0.0]], dtype=np.float32)
    monitor.observe("bc", 1, x, np.array([0.1]))
    monitor.observe("bc", 2, x + 5, np.array([0.9]))
    monitor.observe("bc", 2, x + 5, np.array([0.9]))
    assert bins(registry, "a", 3, version=1) == [1, 0, 0]
    assert bins(registry, "a", 3, version=2) == [0, 0, 2]
    assert bins(registry, SCORE_FEATURE, 4, version=2) == [0, 0, 0, 2]


def test_broadcast_and_searchsorted_binning_agree(registry: CollectorRegistry) -> None:
    monitor = DriftMonitor(Metrics(registry), max_features=10)
    monitor.register("bc", 1, BINARY)
    plan = monitor._plans[("bc", 1)]
    rng = np.random.default_rng(0)
    x = rng.choice([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0, 10.0, 11.0], size=(200, 3))
    x = x.astype(np.float32)
    small = feature_bins(plan, x, broadcast=True)
    large = feature_bins(plan, x, broadcast=False)
    assert np.array_equal(np.bincount(small, minlength=9), np.bincount(large, minlength=9))
    assert np.bincount(small, minlength=9).sum() == 600


def test_a_flush_interval_holds_counts_until_flushed(registry: CollectorRegistry) -> None:
    monitor = DriftMonitor(Metrics(registry), max_features=1, flush_interval_s=3600.0)
    monitor.register("bc", 1, BINARY)
    x = np.array([[0.5, 0.0, 0.0], [2.0, 0.0, 0.0]], dtype=np.float32)
    monitor.observe("bc", 1, x, np.array([0.1, 0.9]))
    monitor.observe("bc", 1, x, np.array([0.1, 0.9]))
    assert bins(registry, "a", 3) == [0, 0, 0]
    monitor.flush()
    assert bins(registry, "a", 3) == [0, 2, 2]
    assert bins(registry, SCORE_FEATURE, 4) == [2, 0, 0, 2]
    monitor.flush()  # nothing pending: nothing added twice
    assert bins(registry, "a", 3) == [0, 2, 2]
    monitor.observe("bc", 1, x[:1], None)
    monitor.unregister("bc", 1)  # unregistering flushes what is pending
    assert bins(registry, "a", 3) == [0, 3, 2]


def test_buffered_small_and_binned_large_batches_count_the_same(
    registry: CollectorRegistry,
) -> None:
    rng = np.random.default_rng(1)
    x = rng.choice([-1.0, 0.5, 1.0, 2.0, 10.0], size=(600, 3)).astype(np.float32)
    scores = rng.random(600)
    direct = DriftMonitor(Metrics(registry), max_features=3)
    direct.register("bc", 1, BINARY)
    other = CollectorRegistry()
    deferred = DriftMonitor(Metrics(other), max_features=3, flush_interval_s=3600.0)
    deferred.register("bc", 1, BINARY)
    for lo, hi in ((0, 1), (1, 65), (65, 400), (400, 600)):  # buffered and direct batches
        direct.observe("bc", 1, x[lo:hi], scores[lo:hi])
        deferred.observe("bc", 1, x[lo:hi], scores[lo:hi])
    deferred.flush()
    for feature in ("a", SCORE_FEATURE):
        assert bins(other, feature, 3) == bins(registry, feature, 3)
    assert sum(bins(other, "a", 3)) == 600


def test_the_rate_cap_samples_rows_uniformly_whatever_the_request_size(
    registry: CollectorRegistry, monkeypatch
) -> None:
    import service.monitoring.drift as drift_module

    now = [1000.5]
    monkeypatch.setattr(drift_module.time, "monotonic", lambda: now[0])
    monitor = DriftMonitor(Metrics(registry), max_features=10, max_rows_per_s=5000, seed=7)
    monitor.register("bc", 1, BINARY)

    def serve(rows: int, score: float) -> None:
        x = np.zeros((rows, 3), dtype=np.float32)
        monitor.observe("bc", 1, x, np.full(rows, score, dtype=np.float32))

    # Below the cap, every row counts.
    for _ in range(40):
        serve(100, 0.9)  # score bin 3
    assert bins(registry, SCORE_FEATURE, 4)[3] == 4000 and monitor.skipped_rows("bc", 1) == 0
    # A second at 20 000 rows/s, then one more: from then on each request has a 25% chance.
    now[0] += 1.0
    for _ in range(20):
        serve(1000, 0.9)
    now[0] += 1.0
    for _ in range(200):  # 10 000 rows in requests of 50 (score bin 2) ...
        serve(50, 0.6)
        for _ in range(50):  # ... and 10 000 in requests of 1 (score bin 0)
            serve(1, 0.1)
    small, _, large, _ = bins(registry, SCORE_FEATURE, 4)
    assert 0.2 < small / 10_000 < 0.3
    assert 0.15 < large / 10_000 < 0.35  # 200 requests: a wider spread, the same mean
    assert sum(bins(registry, "a", 3)) == sum(bins(registry, SCORE_FEATURE, 4))


def test_without_a_cap_every_row_is_binned(registry: CollectorRegistry) -> None:
    monitor = DriftMonitor(Metrics(registry), max_features=10, max_rows_per_s=0)
    monitor.register("bc", 1, BINARY)
    for _ in range(50):
        monitor.observe("bc", 1, np.zeros((4, 3), np.float32), np.full(4, 0.6, np.float32))
    assert sum(bins(registry, SCORE_FEATURE, 4)) == 200
    assert monitor.skipped_rows("bc", 1) == 0
