"""Confidence bounds on error rates, and the threshold that meets a target on its bound."""

import math

import numpy as np
import pytest

from training.bounds import min_labelled, upper_bound, upper_bounds
from training.threshold import choose_threshold


def _binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed exactly (independent of scipy)."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))


def test_clopper_pearson_known_values() -> None:
    # No errors: 1 - alpha ** (1 / n) in closed form ("rule of three": about 3 / n).
    assert upper_bound(0, 10) == pytest.approx(1 - 0.05**0.1, abs=1e-12)
    assert upper_bound(0, 10) == pytest.approx(0.2589, abs=1e-4)
    assert upper_bound(0, 300) == pytest.approx(0.00994, abs=1e-5)
    # Tabulated one-sided 95% bounds (= the upper end of the two-sided 90% interval).
    assert upper_bound(1, 20) == pytest.approx(0.2161, abs=1e-4)
    assert upper_bound(5, 10) == pytest.approx(0.7776, abs=1e-4)
    assert upper_bound(3, 170, 0.99) > upper_bound(3, 170) > upper_bound(3, 170, 0.9)
    assert upper_bound(10, 10) == 1.0 and upper_bound(0, 0) == 1.0
    with pytest.raises(ValueError):
        upper_bound(3, 2)


@pytest.mark.parametrize(("k", "n"), [(0, 42), (2, 42), (3, 170), (12, 455), (40, 60)])
def test_the_bound_is_where_k_or_fewer_errors_become_5_percent_likely(k: int, n: int) -> None:
    u = upper_bound(k, n)
    assert _binom_cdf(k, n, u) == pytest.approx(0.05, abs=1e-9)
    assert k / n < u < 1
    assert upper_bounds(np.array([k, n]), n).tolist() == pytest.approx([u, 1.0])


@pytest.mark.parametrize(("target", "need"), [(0.02, 149), (0.05, 59), (0.1, 29), (0.01, 299)])
def test_fewest_labelled_cases_that_can_show_a_target(target: float, need: int) -> None:
    assert min_labelled(target) == need
    assert upper_bound(0, need) <= target < upper_bound(0, need - 1)
    assert min_labelled(0.0) is None and min_labelled(1.0) == 0


def _scores(n_pos: int, n_neg: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]
    s = np.r_[rng.beta(5, 2, n_pos), rng.beta(2, 5, n_neg)]
    return y, s


def test_upper_bound_rule_holds_the_target_on_the_bound() -> None:
    y, s = _scores(400, 400)
    # Misses cost little, so each rule allows as many misses as its test of the target lets.
    est = choose_threshold(y, s, cost_fp=1, cost_fn=0.5, max_fnr=0.05)
    sure = choose_threshold(y, s, 1, 0.5, max_fnr=0.05, meet_targets_on="upper_bound")
    assert est.feasible and sure.feasible
    assert est.evidence["fnr"]["met"] and not est.evidence["fnr"]["met_with_confidence"]
    assert sure.evidence["fnr"]["met_with_confidence"] and sure.met_with_confidence
    assert sure.threshold < est.threshold and sure.expected_fnr < est.expected_fnr
    assert "(95% upper bound)" in sure.reason and "upper bound" not in est.reason
    # Checked without scipy: k misses among 400 show FNR <= 5% iff P(X <= k | 5%) <= 0.05,
    # so the rule is "the cheapest threshold with at most k_max misses".
    k_max = max(k for k in range(400) if _binom_cdf(k, 400, 0.05) <= 0.05)
    ts = np.asarray(sure.curve["threshold"])
    misses = np.array([(s[y] < t).sum() for t in ts])
    cost = np.array([(s[~y] >= t).sum() + 0.5 * (s[y] < t).sum() for t in ts])
    allowed = np.flatnonzero(misses <= k_max)
    assert sure.threshold == ts[allowed[np.argmin(cost[allowed])]]
    assert sure.evidence["fnr"]["errors"] <= k_max < est.evidence["fnr"]["errors"] <= 20
    # The estimate rule says what it leaves unshown.
    assert any("not shown with 95% confidence" in w for w in est.warnings)
    assert sure.warnings == []
    # The curve carries both, for the plot.
    i = sure.curve["threshold"].index(sure.threshold)
    assert sure.curve["fnr_upper"][i] == sure.evidence["fnr"]["upper"] <= 0.05


def test_too_few_positives_is_said_plainly_and_falls_back_to_the_estimate() -> None:
    y, s = _scores(42, 72)
    est = choose_threshold(y, s, 1, 20, max_fnr=0.02)
    sure = choose_threshold(y, s, 1, 20, max_fnr=0.02, meet_targets_on="upper_bound")
    for c in (est, sure):
        assert c.evidence["fnr"]["enough_data"] is False
        assert c.evidence["fnr"]["min_labelled"] == 149
        assert (
            "too few labelled positives to show FNR <= 0.02 with 95% confidence at any "
            "threshold: 42 here, and even with no missed positive at all at least 149 are "
            "needed"
        ) in c.warnings
    assert sure.threshold == est.threshold and "upper bound" not in sure.reason
    assert sure.met_with_confidence is False


def test_too_few_negatives_for_an_fpr_target_and_a_target_of_zero() -> None:
    y, s = _scores(80, 30)
    c = choose_threshold(y, s, 1, 1, max_fpr=0.05, meet_targets_on="upper_bound")
    assert any("too few labelled negatives" in w and "at least 59" in w for w in c.warnings)
    assert c.evidence["fpr"]["min_labelled"] == 59 and c.evidence["fnr"]["target"] is None
    zero = choose_threshold(y, s, 1, 1, max_fnr=0.0)
    assert any("no number of labelled positives" in w for w in zero.warnings)


def test_no_target_reports_bounds_without_judging_them() -> None:
    y, s = _scores(50, 50)
    c = choose_threshold(y, s, 1, 1)
    assert c.met_with_confidence is None and c.warnings == []
    r = c.rates()
    assert r["constraints_met_with_confidence"] is None
    assert r["expected_fnr_upper"] == upper_bound(c.evidence["fnr"]["errors"], 50)
