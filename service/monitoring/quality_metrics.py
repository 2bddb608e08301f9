"""The series of ground truth and drift: feedback items, labelled predictions, binary
outcomes, label delay, and served rows per reference bin.

The names and labels are the contract of docs/architecture.md.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

MINUTE, HOUR, DAY, WEEK = 60.0, 3600.0, 86400.0, 604800.0
LABEL_DELAY_BUCKETS = (
    1.0,
    10.0,
    MINUTE,
    10 * MINUTE,
    HOUR,
    6 * HOUR,
    DAY,
    3 * DAY,
    WEEK,
    2 * WEEK,
    4 * WEEK,
)
BINARY_OUTCOMES = ("tp", "fp", "tn", "fn")


class QualityMetrics:
    """How right the served models are: what the labels that arrived say, and how the served
    rows fall in the reference bins (drift)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.feedback_items = Counter(
            "verdict_feedback_items",
            "Feedback items by result (accepted, duplicate, conflict, unknown, invalid).",
            ["model", "result"],
            registry=r,
        )
        self.labeled_predictions = Counter(
            "verdict_labeled_predictions",
            "Predictions whose ground truth arrived, by predicted and actual label.",
            ["model", "version", "predicted", "actual"],
            registry=r,
        )
        self.outcomes = Counter(
            "verdict_outcomes",
            "Binary outcomes of labelled predictions (tp, fp, tn, fn).",
            ["model", "version", "outcome"],
            registry=r,
        )
        self.label_delay = Histogram(
            "verdict_label_delay_seconds",
            "Time from prediction to its ground truth.",
            ["model"],
            buckets=LABEL_DELAY_BUCKETS,
            registry=r,
        )
        self.feature_bin = Counter(
            "verdict_feature_bin",
            "Served rows per reference bin of an input feature, the score, the predicted class "
            "or the top-class confidence (drift).",
            ["model", "version", "feature", "bin"],
            registry=r,
        )

    def start_outcomes(self, model: str, version: int) -> None:
        """Start a binary version's outcome counters at 0, so the first labels show up as an
        increase."""
        for outcome in BINARY_OUTCOMES:
            self.outcomes.labels(model, str(version), outcome)
