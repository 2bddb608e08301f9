"""Shared pieces of the feedback tests: manifests, the metric families, a settable clock."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

KEY = b"feedback-test-key-0123456789abcdef"
NOW = 1_800_000_000.0

BINARY: dict[str, Any] = {
    "name": "bc",
    "version": 1,
    "task": "binary",
    "input": {
        "name": "input",
        "shape": [-1, 3],
        "dtype": "float32",
        "kind": "tabular",
        "feature_names": ["a", "b", "c"],
    },
    "output": {
        "name": "probabilities",
        "classes": ["benign", "malignant"],
        "positive_class": "malignant",
    },
    "decision": {"threshold": 0.3},
    "objectives": {"max_fnr": 0.2, "max_fpr": 0.1},
    "costs": {"cost_fp": 1.0, "cost_fn": 20.0},
    "reference": {
        "bins": 3,
        "features": {
            "a": {"edges": [0.0, 1.0], "proportions": [0.3, 0.4, 0.3]},
            "b": {"edges": [10.0], "proportions": [0.5, 0.5]},
            "c": {"edges": [-1.0, 0.0, 1.0], "proportions": [0.25, 0.25, 0.25, 0.25]},
        },
        "score": {"edges": [0.25, 0.5, 0.75], "proportions": [0.25, 0.25, 0.25, 0.25]},
    },
}

MULTICLASS: dict[str, Any] = {
    "name": "digits",
    "version": 2,
    "task": "multiclass",
    "input": {
        "name": "input",
        "shape": [-1, 1, 8, 8],
        "dtype": "float32",
        "kind": "image",
        "feature_names": None,
    },
    "output": {"name": "probabilities", "classes": ["zero", "one", "two"], "positive_class": None},
    "decision": {"threshold": None},
    "objectives": {"max_fnr": None, "max_fpr": None},
    "costs": {"cost_fp": None, "cost_fn": None},
    "reference": {"bins": 10, "features": {}, "score": None},
}

MANIFESTS = {("bc", 1): BINARY, ("digits", 2): MULTICLASS}


def manifest_of(model: str, version: int) -> dict[str, Any] | None:
    return MANIFESTS.get((model, version))


class Metrics:
    """The metric families of service.metrics that the feedback side uses, on one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.feedback_items = Counter(
            "verdict_feedback_items",
            "Feedback items by result",
            ["model", "result"],
            registry=registry,
        )
        self.labeled_predictions = Counter(
            "verdict_labeled_predictions",
            "Labelled predictions",
            ["model", "version", "predicted", "actual"],
            registry=registry,
        )
        self.outcomes = Counter(
            "verdict_outcomes",
            "Binary outcomes",
            ["model", "version", "outcome"],
            registry=registry,
        )
        self.label_delay = Histogram(
            "verdict_label_delay_seconds",
            "Label delay",
            ["model"],
            registry=registry,
            buckets=(1.0, 60.0, 3600.0, 86400.0),
        )
        self.feature_bin = Counter(
            "verdict_feature_bin",
            "Inputs per reference bin",
            ["model", "version", "feature", "bin"],
            registry=registry,
        )
        self.reference_bin_ratio = Gauge(
            "verdict_reference_bin_ratio",
            "Reference share of each bin",
            ["model", "version", "feature", "bin"],
            registry=registry,
        )


class Clock:
    """A settable clock."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def feedback_app(service: Any, tmp: Any) -> Any:
    """A real verdict app (no models) whose feedback side is `service`, as every other route
    sees it: through the edge and the data plane."""
    from service.http.app import create_app
    from service.settings import Settings

    settings = Settings(
        model_repository=str(tmp / "no-models"),
        feedback_db=str(tmp / "unused" / "feedback.sqlite3"),
        prediction_id_key=KEY.decode(),
    )
    app = create_app(settings)
    app.state.feedback = service
    app.state.dataplane.feedback = service
    return app
