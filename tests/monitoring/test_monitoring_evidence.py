"""The evidence the FNR/FPR target alerts need: the lower confidence bound of the recording
rules (Wilson's score bound with continuity correction), checked against the promtool cases
and for how often it raises an alert on a model that exactly meets its target."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.stats import binom

from service.monitoring.quality import alert_min_labelled

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "rules" / "verdict.rules.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "tests" / "verdict.rules.test.yml"
Z = 1.6448536269514722  # one-sided 95%
TARGETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
# Worst share of windows that raise the alert when the true rate equals the target, over
# every n from the minimum up (the exact Clopper-Pearson bound, which PromQL cannot compute,
# would hold 5%; the plain ratio against the target raised it in up to half the windows).
WORST_FALSE_ALARMS = 0.065


def lower_bound(k: np.ndarray | float, n: float) -> np.ndarray:
    """The recording rules' model:verdict_{fnr,fpr}_lower:ratio_rate<w>, in numpy."""
    k = np.asarray(k, dtype=np.float64)
    p = k / n
    z2 = Z * Z
    root = np.sqrt(np.maximum(z2 - 2 - 1 / n + 4 * p * (n * (1 - p) + 1), 0.0))
    value = (2 * n * p + z2 - 1 - Z * root) / (2 * (n + z2))
    return np.where(k > 0, np.maximum(value, 0.0), 0.0)


def false_alarms(target: float, n: int) -> float:
    """P(lower bound > target) when k ~ Binomial(n, target)."""
    k = np.arange(n + 1)
    return float(binom.pmf(k[lower_bound(k, n) > target], n, target).sum())


def test_the_rules_use_the_bound_of_this_module() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rules = {r["record"]: r["expr"] for g in groups for r in g["rules"] if "record" in r}
    for rate, n in (("fnr", "positives"), ("fpr", "negatives")):
        for window in ("6h", "24h"):
            expr = rules[f"model:verdict_{rate}_lower:ratio_rate{window}"]
            assert f"model:verdict_labeled_{n}:increase{window}" in expr
            numbers = {float(x) for x in re.findall(r"\d+\.\d+", expr)}
            assert numbers == {Z, round(Z * Z, 15), round(Z * Z - 1, 15), round(Z * Z - 2, 15)}


# (series in the promtool cases, errors, labelled rows) behind each hand-computed bound there
PROMTOOL_CASES = {
    'model:verdict_fnr_lower:ratio_rate6h{model="bc"}': (90, 450),
    'model:verdict_fnr_lower:ratio_rate6h{model="unlucky"}': (2, 62),
    'model:verdict_fnr_lower:ratio_rate6h{model="slow"}': (3, 60),
    'model:verdict_fnr_lower:ratio_rate24h{model="slow"}': (12, 240),
}


def test_the_promtool_cases_hold_the_bounds_computed_here() -> None:
    found = {}
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("promql_expr_test", []):
            m = re.fullmatch(r"abs\((\S+) - ([0-9.e-]+)\) < bool 1e-9", check["expr"])
            if m and m.group(1) in PROMTOOL_CASES:
                found[m.group(1)] = float(m.group(2))
    assert set(found) == set(PROMTOOL_CASES)
    for series, (k, n) in PROMTOOL_CASES.items():
        assert found[series] == pytest.approx(float(lower_bound(k, n)), rel=1e-12), series


def test_the_bound_is_zero_without_errors_and_grows_with_them() -> None:
    assert float(lower_bound(0, 500)) == 0.0
    bounds = lower_bound(np.arange(0, 30), 300)
    assert (np.diff(bounds) > 0).all()
    assert (bounds < np.arange(0, 30) / 300 + 1e-12).all()  # below the estimate


@pytest.mark.parametrize("target", TARGETS)
def test_a_model_on_its_target_rarely_raises_the_alert(target: float) -> None:
    start = alert_min_labelled(target)
    worst = max(false_alarms(target, n) for n in range(start, start + 1000))
    assert worst <= WORST_FALSE_ALARMS
    # What the rule replaced: the ratio above the target with the same minimum of labels.
    k = np.arange(start * 4 + 1)
    plain = binom.pmf(k[k / (start * 4) > target], start * 4, target).sum()
    assert plain > 0.25


def test_a_real_breach_is_caught() -> None:
    def detected(target: float, rate: float, n: int) -> float:
        k = np.arange(n + 1)
        return float(binom.pmf(k[lower_bound(k, n) > target], n, rate).sum())

    # docs/monitoring.md quotes these: FNR 6% against a 2% target.
    assert detected(0.02, 0.06, 60) == pytest.approx(0.489, abs=0.001)
    assert detected(0.02, 0.06, 240) == pytest.approx(0.954, abs=0.001)
    assert detected(0.02, 0.2, 50) > 0.99


def test_the_minimum_of_labels_is_the_rules_fallback() -> None:
    for target in TARGETS:
        assert alert_min_labelled(target) == max(10, math.ceil(1 / target))
    assert alert_min_labelled(0.02) == 50 and alert_min_labelled(0.3) == 10
    assert alert_min_labelled(0.0) == 10
