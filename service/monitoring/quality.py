"""Quality from labelled counts: confusion matrix, error rates, objectives, expected cost."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

OBJECTIVES = ("max_fnr", "max_fpr")
# The fewest labelled rows of the class (positives for FNR, negatives for FPR) a window needs
# before an alert on the target may fire, at the least (docs/monitoring.md).
ALERT_MIN_LABELLED_FLOOR = 10


def alert_min_labelled(target: float) -> int:
    """The fewest labelled rows of the class before an alert on `target` may fire: the
    smallest count in which one error alone does not exceed the target (ceil(1 / target)),
    and never fewer than ALERT_MIN_LABELLED_FLOOR."""
    if target <= 0:
        return ALERT_MIN_LABELLED_FLOOR
    return max(ALERT_MIN_LABELLED_FLOOR, math.ceil(1 / target - 1e-9))


def confusion_matrix(cells: Iterable[tuple[int, int, int]], n_classes: int) -> list[list[int]]:
    """Rows are the actual class, columns the predicted one, from (predicted, actual, count)."""
    matrix = [[0] * n_classes for _ in range(n_classes)]
    for predicted, actual, count in cells:
        matrix[actual][predicted] += count
    return matrix


def ratio(numerator: float, denominator: float) -> float | None:
    """numerator / denominator, or None when there is nothing to divide by."""
    return numerator / denominator if denominator else None


def one_vs_rest(matrix: list[list[int]], k: int) -> dict[str, int]:
    """tp, fp, tn, fn for class k against every other class."""
    total = sum(map(sum, matrix))
    tp = matrix[k][k]
    fn = sum(matrix[k]) - tp
    fp = sum(row[k] for row in matrix) - tp
    return {"tp": tp, "fp": fp, "tn": total - tp - fp - fn, "fn": fn}


def rates(tp: int, fp: int, tn: int, fn: int) -> dict[str, float | None]:
    """FPR, FNR, precision and recall; None where the denominator is zero."""
    return {
        "fpr": ratio(fp, fp + tn),
        "fnr": ratio(fn, fn + tp),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
    }


def objectives_met(
    observed: Mapping[str, float | None], targets: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """For each target (max_fnr, max_fpr): the target, the observed rate and whether it holds.

    `met` is None when the target is unset or nothing has been labelled that could measure it.
    """
    out: dict[str, dict[str, Any]] = {}
    for name in OBJECTIVES:
        target = targets.get(name)
        value = observed.get(name.removeprefix("max_"))
        met = None if target is None or value is None else value <= float(target)
        out[name] = {"target": target, "value": value, "met": met}
    return out


def expected_cost(
    fp: int, fn: int, labelled: int, cost_fp: float | None, cost_fn: float | None
) -> dict[str, float | None]:
    """cost_fp * FP + cost_fn * FN, in total and per labelled prediction (None when unset)."""
    if cost_fp is None or cost_fn is None:
        return {"total": None, "per_labelled": None}
    total = float(cost_fp) * fp + float(cost_fn) * fn
    return {"total": total, "per_labelled": ratio(total, labelled)}


def summarise(matrix: list[list[int]], manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Everything people want to read about one model version from its confusion matrix.

    Binary models are measured against the positive class from the manifest. Multiclass
    models get one-vs-rest rates per class, and their objectives are checked against the
    worst class; they have no expected cost (an error there is both an FP and an FN).
    """
    classes: list[str] = list(manifest["output"]["classes"])
    targets = manifest.get("objectives") or {}
    costs = manifest.get("costs") or {}
    labelled = sum(map(sum, matrix))
    correct = sum(matrix[i][i] for i in range(len(matrix)))
    summary: dict[str, Any] = {
        "labelled": labelled,
        "accuracy": ratio(correct, labelled),
        "confusion_matrix": {
            "rows": "actual",
            "columns": "predicted",
            "labels": classes,
            "counts": matrix,
        },
    }
    positive = manifest["output"].get("positive_class")
    if manifest.get("task") == "binary" and positive in classes:
        counts = one_vs_rest(matrix, classes.index(positive))
        observed = rates(**counts)
        summary.update(counts)
        summary.update(observed)
        summary["objectives"] = objectives_met(observed, targets)
        summary["expected_cost"] = expected_cost(
            counts["fp"], counts["fn"], labelled, costs.get("cost_fp"), costs.get("cost_fn")
        )
        return summary
    per_class = {}
    for k, name in enumerate(classes):
        counts = one_vs_rest(matrix, k)
        per_class[name] = {**counts, **rates(**counts)}
    summary["per_class"] = per_class
    worst = {
        key: max((v for c in per_class.values() if (v := c[key]) is not None), default=None)
        for key in ("fpr", "fnr")
    }
    summary["objectives"] = objectives_met(worst, targets)
    summary["expected_cost"] = {"total": None, "per_labelled": None}
    return summary
