"""Quality from labelled counts: confusion matrix, error rates and their upper confidence
bounds, objectives, expected cost, and the manifest's training-time figures."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from service.monitoring.confidence import LEVEL, METHOD, upper_bound

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


CONFIDENCE = {"level": LEVEL, "method": METHOD, "side": "upper"}


def rates(tp: int, fp: int, tn: int, fn: int) -> dict[str, float | None]:
    """FPR, FNR, precision and recall; None where the denominator is zero. FPR and FNR come
    with their one-sided 95% upper confidence bounds (`fpr_upper`, `fnr_upper`; None where
    nothing could measure them)."""
    return {
        "fpr": ratio(fp, fp + tn),
        "fpr_upper": upper_bound(fp, fp + tn) if fp + tn else None,
        "fnr": ratio(fn, fn + tp),
        "fnr_upper": upper_bound(fn, fn + tp) if fn + tp else None,
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
    }


def objectives_met(
    observed: Mapping[str, float | None], targets: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """For each target (max_fnr, max_fpr): the target, the observed rate and its upper bound,
    whether the rate meets the target (`met`) and whether its upper bound does
    (`met_with_confidence`: the labels show the target is met, at 95%).

    Both are None when the target is unset or nothing has been labelled that could measure it.
    """
    out: dict[str, dict[str, Any]] = {}
    for name in OBJECTIVES:
        target = targets.get(name)
        rate = name.removeprefix("max_")
        value, upper = observed.get(rate), observed.get(f"{rate}_upper")
        met = None if target is None or value is None else value <= float(target)
        sure = None if target is None or upper is None else upper <= float(target)
        out[name] = {
            "target": target,
            "value": value,
            "upper": upper,
            "met": met,
            "met_with_confidence": sure,
        }
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
        for key in ("fpr", "fnr", "fpr_upper", "fnr_upper")
    }
    summary["objectives"] = objectives_met(worst, targets)
    summary["expected_cost"] = {"total": None, "per_labelled": None}
    return summary


def training_figures(manifest: Mapping[str, Any]) -> dict[str, Any] | None:
    """What training measured for a binary model's FNR and FPR at its threshold: the estimate
    and its one-sided upper bound on the scores the threshold was chosen on (out-of-fold),
    with the counts behind them, and the same on the held-out rows (docs/manifest.md). None
    for other models; None values where a manifest predates a field."""
    if manifest.get("task") != "binary":
        return None
    decision = manifest.get("decision") or {}
    evaluation = manifest.get("evaluation") or {}
    evidence = evaluation.get("threshold_evidence") or {}
    holdout = evaluation.get("holdout") or {}
    out: dict[str, Any] = {
        "source": evidence.get("source"),
        "confidence": decision.get("confidence"),
    }
    for rate in ("fnr", "fpr"):
        counts = evidence.get(rate) or {}
        out[rate] = {
            "estimate": decision.get(f"expected_{rate}"),
            "upper": decision.get(f"expected_{rate}_upper"),
            "errors": counts.get("errors"),
            "labelled": counts.get("labelled"),
            "holdout": holdout.get(rate),
            "holdout_upper": holdout.get(f"{rate}_upper"),
        }
    return out
