"""Confidence bounds on error rates: how sure a count of mistakes lets us be.

The one-sided upper bound is Clopper–Pearson's (the exact binomial bound): the error rate
p at which seeing `k` or fewer errors among `n` labelled cases has probability 1 - level.
Its coverage is at least the stated level for every n and p, which matters exactly where
these models live: few errors among a few dozen or hundred labelled cases. Wilson's
interval, used for the card's two-sided held-out intervals, is closer to nominal on
average but can cover less than it says near 0 errors, so it does not back a promise.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import beta

CONFIDENCE = 0.95
METHOD = "clopper-pearson"


def upper_bound(k: int, n: int, level: float = CONFIDENCE) -> float:
    """One-sided `level` Clopper–Pearson upper bound of a rate seen as k errors in n cases.

    1 when n is 0 (nothing is known) or every case was an error. With k = 0 it is
    1 - (1 - level) ** (1 / n), about 3 / n at 95% (the "rule of three").
    """
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n; got k={k}, n={n}")
    if n == 0 or k == n:
        return 1.0
    return float(beta.ppf(level, k + 1, n - k))


def upper_bounds(k: np.ndarray, n: int, level: float = CONFIDENCE) -> np.ndarray:
    """upper_bound for an array of error counts out of the same n."""
    k = np.asarray(k, dtype=np.float64)
    if n == 0:
        return np.ones_like(k)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = beta.ppf(level, k + 1, np.maximum(n - k, 1e-300))
    return np.where(k >= n, 1.0, out)


def min_labelled(target: float, level: float = CONFIDENCE) -> int | None:
    """The fewest labelled cases with which a rate can be shown <= target at this level.

    That needs no error at all among them: the smallest n with upper_bound(0, n) <= target.
    None when the target is 0 (no count of cases shows a rate of exactly 0).
    """
    if target <= 0:
        return None
    if target >= 1:
        return 0
    n = max(1, math.ceil(math.log(1 - level) / math.log(1 - target)))
    # The closed form can be off by one in floating point; settle it on the bound itself.
    while upper_bound(0, n, level) > target:
        n += 1
    while n > 1 and upper_bound(0, n - 1, level) <= target:
        n -= 1
    return n


def evidence(errors: int, labelled: int, target: float | None, level: float) -> dict[str, Any]:
    """A rate's estimate and upper bound, and whether they (and the data) meet a target."""
    estimate = errors / labelled if labelled else None
    upper = upper_bound(errors, labelled, level)
    need = min_labelled(target, level) if target is not None else None
    return {
        "errors": errors,
        "labelled": labelled,
        "estimate": estimate,
        "upper": upper,
        "target": target,
        "met": None if target is None or estimate is None else estimate <= target,
        "met_with_confidence": None if target is None else upper <= target,
        "min_labelled": need,
        "enough_data": None if target is None else need is not None and labelled >= need,
    }


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Two-sided 95% Wilson score interval of a proportion k/n."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
