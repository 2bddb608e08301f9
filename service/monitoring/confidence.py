"""How sure a count of errors lets us be: the one-sided Clopper-Pearson upper bound of a rate.

The same bound training writes into the manifest (training/bounds.py, with scipy); the
service has no scipy, so this is a small copy on the regularised incomplete beta function,
and tests/feedback/test_confidence.py pins it to training's values. The upper bound is the
error rate p at which seeing `k` or fewer errors among `n` labelled cases has probability
1 - level: a rate the data cannot rule out.
"""

from __future__ import annotations

import math

LEVEL = 0.95
METHOD = "clopper-pearson"
_MAX_TERMS = 100_000
_EPS = 1e-15
_TINY = 1e-300


def _continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, _MAX_TERMS):
        m2 = 2 * m
        for aa in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + aa / c
            c = c if abs(c) > _TINY else _TINY
            step = d * c
            h *= step
        if abs(step - 1.0) < _EPS:
            break
    return h


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def beta_cdf(x: float, a: float, b: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(a * math.log(x) + b * math.log1p(-x) - _log_beta(a, b))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _continued_fraction(a, b, x) / a
    return 1.0 - front * _continued_fraction(b, a, 1.0 - x) / b


def upper_bound(k: int, n: int, level: float = LEVEL) -> float:
    """One-sided `level` Clopper-Pearson upper bound of a rate seen as k errors in n cases.

    1 when n is 0 (nothing is known) or every case was an error; with k = 0 it is
    1 - (1 - level) ** (1 / n), about 3 / n at 95%.
    """
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n; got k={k}, n={n}")
    if n == 0 or k == n:
        return 1.0
    if k == 0:
        return -math.expm1(math.log1p(-level) / n)
    a, b = k + 1.0, float(n - k)
    # The bound is the `level` quantile of Beta(k + 1, n - k): Newton steps on the CDF,
    # kept inside a bracket that bisection shrinks whenever a step would leave it.
    lo, hi = 0.0, 1.0
    p = min(max((k + 1.0) / (n + 1.0), 1e-12), 1 - 1e-12)
    log_norm = _log_beta(a, b)
    for _ in range(200):
        f = beta_cdf(p, a, b) - level
        if f > 0:
            hi = p
        else:
            lo = p
        density = math.exp((a - 1) * math.log(p) + (b - 1) * math.log1p(-p) - log_norm)
        step = p - f / density if density > 0 else -1.0
        nxt = step if lo < step < hi else (lo + hi) / 2
        if abs(nxt - p) <= 1e-15 * max(p, 1e-300) or hi - lo <= 1e-16:
            return nxt
        p = nxt
    return p
