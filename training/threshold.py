"""The binary decision threshold: least expected cost, subject to the FNR/FPR targets.

A target can be met on the point estimate of the rate or on its one-sided upper confidence
bound (bounds.py); either way the choice reports both, and says plainly when the labelled
cases are too few for the bound to reach a target at any threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .bounds import CONFIDENCE, METHOD, evidence, min_labelled, upper_bounds

TargetsOn = Literal["estimate", "upper_bound"]
_RATES = (
    # key, manifest target, who is counted, what an error is
    ("fnr", "max_fnr", "positives", "missed positive"),
    ("fpr", "max_fpr", "negatives", "false alarm"),
)


@dataclass
class ThresholdChoice:
    """The decision threshold, why, and what it is expected to cost."""

    threshold: float
    method: str
    reason: str
    feasible: bool
    expected_fpr: float
    expected_fnr: float
    expected_cost: float
    curve: dict[str, list[float]]
    meet_targets_on: str = "estimate"
    level: float = CONFIDENCE
    source: str = "out-of-fold"
    evidence: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def met_with_confidence(self) -> bool | None:
        """Whether every target's upper bound meets it (None: no targets)."""
        met = [e["met_with_confidence"] for e in self.evidence.values() if e["target"] is not None]
        return all(met) if met else None

    def rates(self) -> dict[str, Any]:
        """The manifest's `decision` fields beside threshold, method and reason."""
        return {
            "expected_fpr": self.expected_fpr,
            "expected_fnr": self.expected_fnr,
            "expected_cost_per_row": self.expected_cost,
            "constraints_met": self.feasible,
            "expected_fpr_upper": self.evidence["fpr"]["upper"],
            "expected_fnr_upper": self.evidence["fnr"]["upper"],
            "meet_targets_on": self.meet_targets_on,
            "confidence": {"level": self.level, "method": METHOD, "side": "upper"},
            "constraints_met_with_confidence": self.met_with_confidence,
            "warnings": list(self.warnings),
        }

    def evidence_record(self) -> dict[str, Any]:
        """The manifest's `evaluation.threshold_evidence`: counts, estimates and bounds."""
        return {"source": self.source, "level": self.level, "method": METHOD, **self.evidence}


def confusion_at(y_pos: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, int]:
    """tp, fp, tn, fn when a row is positive iff score >= threshold."""
    pred = scores >= threshold
    y_pos = y_pos.astype(bool)
    return {
        "tp": int((pred & y_pos).sum()),
        "fp": int((pred & ~y_pos).sum()),
        "tn": int((~pred & ~y_pos).sum()),
        "fn": int((~pred & y_pos).sum()),
    }


def _too_few(key: str, target: float, n: int, who: str, error: str, level: float) -> str:
    need = min_labelled(target, level)
    what = f"{key.upper()} <= {target:g} with {level:.0%} confidence"
    if need is None:
        return f"{what} cannot be shown: no number of labelled {who} shows a rate of exactly 0"
    return (
        f"too few labelled {who} to show {what} at any threshold: {n} here, and even with "
        f"no {error} at all at least {need} are needed"
    )


def choose_threshold(
    y_pos: np.ndarray,
    scores: np.ndarray,
    cost_fp: float,
    cost_fn: float,
    max_fnr: float | None = None,
    max_fpr: float | None = None,
    source: str = "out-of-fold",
    *,
    meet_targets_on: TargetsOn = "estimate",
    level: float = CONFIDENCE,
) -> ThresholdChoice:
    """The threshold with the least expected cost per row, subject to max FNR / max FPR.

    Candidates are 0, the midpoints between neighbouring distinct scores and a point above
    the top score, so each distinct split of the rows is tried once with a margin either side.
    Ties go to the lower threshold (fewer missed positives). With `meet_targets_on` =
    "upper_bound" a target holds when the rate's one-sided `level` upper bound meets it; a
    target that the labelled cases are too few to show at any threshold falls back to the
    estimate, with a warning. When no candidate meets the targets, the one that misses them by
    the least is taken and `feasible` is False.
    """
    y_pos = np.asarray(y_pos).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) == 0 or len(scores) != len(y_pos):
        raise ValueError("choose_threshold needs equally long, non-empty labels and scores")
    s = np.unique(scores)
    top = 1.0 if s[-1] >= 1.0 else (s[-1] + 1.0) / 2
    cands = np.concatenate([[0.0], (s[:-1] + s[1:]) / 2, [top]])
    cands = np.unique(np.clip(cands, 0.0, 1.0))
    pos_sorted = np.sort(scores[y_pos])
    neg_sorted = np.sort(scores[~y_pos])
    n, n_pos, n_neg = len(scores), len(pos_sorted), len(neg_sorted)
    counts = {
        "fnr": np.searchsorted(pos_sorted, cands, side="left"),  # positives scored below t
        "fpr": n_neg - np.searchsorted(neg_sorted, cands, side="left"),  # negatives at/above t
    }
    labelled = {"fnr": n_pos, "fpr": n_neg}
    est = {k: counts[k] / labelled[k] if labelled[k] else np.zeros(len(cands)) for k in counts}
    upper = {k: upper_bounds(counts[k], labelled[k], level) for k in counts}
    cost = (cost_fp * counts["fpr"] + cost_fn * counts["fnr"]) / n
    targets = {"fnr": max_fnr, "fpr": max_fpr}
    violation = np.zeros(len(cands))
    limits: list[str] = []
    warnings: list[str] = []
    for key, _, who, error in _RATES:
        target = targets[key]
        if target is None:
            continue
        need = min_labelled(target, level)
        enough = need is not None and labelled[key] >= need
        if not enough:
            warnings.append(_too_few(key, target, labelled[key], who, error, level))
        on_bound = meet_targets_on == "upper_bound" and enough
        rate = upper[key] if on_bound else est[key]
        violation = np.maximum(violation, rate - target)
        limits.append(
            f"{key.upper()} <= {target:g}" + (f" ({level:.0%} upper bound)" if on_bound else "")
        )
    ok = violation <= 1e-12
    if ok.any():
        i = int(np.flatnonzero(ok)[np.argmin(cost[ok])])
        feasible = True
    else:
        near = np.flatnonzero(violation <= violation.min() + 1e-12)
        i = int(near[np.argmin(cost[near])])
        feasible = False
    objective = f"{cost_fp:g}*FP + {cost_fn:g}*FN on {source} scores ({n} rows)"
    if not limits:
        method, reason = "min_cost", f"minimises {objective}"
    elif feasible:
        method = "min_cost_subject_to_constraints"
        reason = f"minimises {objective} subject to {' and '.join(limits)}"
    else:
        method = "closest_to_constraints"
        reason = (
            f"no threshold meets {' and '.join(limits)} on {source} scores; this one misses "
            f"them by the least ({violation[i]:.4f}) and then minimises {objective}"
        )
    found = {
        key: evidence(int(counts[key][i]), labelled[key], targets[key], level) for key, *_ in _RATES
    }
    for key, *_ in _RATES:
        e = found[key]
        if e["met"] and not e["met_with_confidence"] and e["enough_data"]:
            warnings.append(
                f"{key.upper()} {e['estimate']:.4f} meets {e['target']:g} on the estimate, but its "
                f"{level:.0%} upper bound is {e['upper']:.4f}: the target is not shown with "
                f"{level:.0%} confidence (decision.meet_targets_on: upper_bound requires it)"
            )
    return ThresholdChoice(
        threshold=float(cands[i]),
        method=method,
        reason=reason,
        feasible=feasible,
        expected_fpr=float(est["fpr"][i]),
        expected_fnr=float(est["fnr"][i]),
        expected_cost=float(cost[i]),
        curve={
            "threshold": [float(v) for v in cands],
            "cost": [float(v) for v in cost],
            "fpr": [float(v) for v in est["fpr"]],
            "fnr": [float(v) for v in est["fnr"]],
            "fpr_upper": [float(v) for v in upper["fpr"]],
            "fnr_upper": [float(v) for v in upper["fnr"]],
        },
        meet_targets_on=meet_targets_on,
        level=level,
        source=source,
        evidence=found,
        warnings=warnings,
    )


def cross_fitted_rates(
    y_pos: np.ndarray,
    scores: np.ndarray,
    fold_ids: np.ndarray,
    cost_fp: float,
    cost_fn: float,
    max_fnr: float | None = None,
    max_fpr: float | None = None,
    *,
    meet_targets_on: TargetsOn = "estimate",
    level: float = CONFIDENCE,
) -> dict[str, Any]:
    """FPR and FNR of the threshold *procedure* on rows it did not see.

    For each fold, the threshold is chosen on the other folds' out-of-fold scores and applied
    to this fold's; the counts add up over folds. The in-sample FNR at the chosen threshold
    meets max_fnr by construction; this one shows how well that carries over to new rows.
    """
    y_pos = np.asarray(y_pos).astype(bool)
    total = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
    thresholds = []
    for k in np.unique(fold_ids):
        rest, this = fold_ids != k, fold_ids == k
        c = choose_threshold(
            y_pos[rest],
            scores[rest],
            cost_fp,
            cost_fn,
            max_fnr,
            max_fpr,
            meet_targets_on=meet_targets_on,
            level=level,
        )
        thresholds.append(c.threshold)
        for key, v in confusion_at(y_pos[this], scores[this], c.threshold).items():
            total[key] += v
    neg, pos = total["fp"] + total["tn"], total["fn"] + total["tp"]
    return {
        "fpr": total["fp"] / neg if neg else 0.0,
        "fnr": total["fn"] / pos if pos else 0.0,
        "cost_per_row": (cost_fp * total["fp"] + cost_fn * total["fn"]) / len(scores),
        "confusion": total,
        "thresholds": thresholds,
    }
