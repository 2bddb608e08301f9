"""The promotion rule's figures: a primary and a shadow compared on the labelled rows both
decided, by the cost of their errors, with a one-sided confidence bound on the difference
(docs/lifecycle.md, "The rule")."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist
from typing import Any

from service.monitoring.decisions import PairCell
from service.monitoring.quality import ratio

METHOD = "paired mean difference of cost per row, one-sided normal bound"


def _row_cost(
    predicted: int, actual: int, positive: int | None, costs: Mapping[str, float]
) -> float:
    if predicted == actual:
        return 0.0
    if positive is None:  # multiclass: every error costs one
        return 1.0
    return costs["cost_fp"] if predicted == positive else costs["cost_fn"]


def _role_figures(
    version: int,
    cells: Sequence[tuple[int, int, int]],
    positive: int | None,
    costs: Mapping[str, float],
) -> dict[str, Any]:
    """Outcomes, FNR, FPR and cost per row of one role from (predicted, actual, count)."""
    n = sum(c for _, _, c in cells)
    total_cost = sum(_row_cost(p, a, positive, costs) * c for p, a, c in cells)
    out: dict[str, Any] = {"version": version, "labelled": n}
    if positive is not None:
        counts = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
        for p, a, c in cells:
            said, was = p == positive, a == positive
            counts[("t" if said == was else "f") + ("p" if said else "n")] += c
        out.update(counts)
        out["fnr"] = ratio(counts["fn"], counts["fn"] + counts["tp"])
        out["fpr"] = ratio(counts["fp"], counts["fp"] + counts["tn"])
    else:
        out["errors"] = sum(c for p, a, c in cells if p != a)
    out["cost_per_row"] = ratio(total_cost, n)
    return out


def compare(
    primary: int,
    shadow: int,
    cells: Sequence[PairCell],
    manifest: Mapping[str, Any],
    confidence: float,
    min_labels: int,
) -> dict[str, Any]:
    """The figures a promotion rests on, from the labelled rows both versions decided, with
    the costs of the primary's manifest (binary; a multiclass error costs 1), and the
    decision the rule makes on them."""
    classes = list(manifest["output"]["classes"])
    positive_class = manifest["output"].get("positive_class")
    positive = (
        classes.index(positive_class)
        if manifest.get("task") == "binary" and positive_class in classes
        else None
    )
    raw = manifest.get("costs") or {}
    costs = {
        "cost_fp": float(raw.get("cost_fp") or 1.0),
        "cost_fn": float(raw.get("cost_fn") or 1.0),
    }
    n = sum(c.count for c in cells)
    diffs = [
        (
            _row_cost(c.shadow_predicted, c.actual, positive, costs)
            - _row_cost(c.primary_predicted, c.actual, positive, costs),
            c.count,
        )
        for c in cells
    ]
    mean = sum(d * k for d, k in diffs) / n if n else None
    upper = lower = None
    if n >= 2 and mean is not None:
        var = sum(k * (d - mean) ** 2 for d, k in diffs) / (n - 1)
        z = NormalDist().inv_cdf(confidence)
        half = z * math.sqrt(var / n)
        upper, lower = mean + half, mean - half
    reasons = []
    if n < min_labels:
        reasons.append(f"{n} labelled rows decided by both versions; at least {min_labels} needed")
    if upper is None or upper >= 0:
        shown = "unknown" if upper is None else f"{upper:.4g}"
        reasons.append(
            f"the shadow's cost per row is not lower with {confidence:.0%} confidence "
            f"(upper bound of shadow - primary: {shown}, which must be below 0)"
        )
    return {
        "primary": _role_figures(
            primary, [(c.primary_predicted, c.actual, c.count) for c in cells], positive, costs
        ),
        "shadow": _role_figures(
            shadow, [(c.shadow_predicted, c.actual, c.count) for c in cells], positive, costs
        ),
        "paired_labels": n,
        "costs": costs if positive is not None else {"error": 1.0},
        "cost_difference": {
            "mean": mean,
            "upper": upper,
            "lower": lower,
            "confidence": confidence,
            "method": METHOD,
        },
        "min_labels": min_labels,
        "promotable": not reasons,
        "reasons": reasons,
    }
