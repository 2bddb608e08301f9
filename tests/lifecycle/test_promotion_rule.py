"""The promotion rule on hand-computed cases: paired cost differences, the one-sided bound,
the minimum of labels, and the figures of each role."""

from __future__ import annotations

import math

import pytest

from service.dataplane.lifecycle import key_identity
from service.monitoring.comparison import compare
from service.monitoring.decisions import PairCell

MANIFEST = {
    "task": "binary",
    "output": {"classes": ["ham", "spam"], "positive_class": "spam"},
    "costs": {"cost_fp": 1.0, "cost_fn": 20.0},
}


def test_a_shadow_that_catches_what_the_primary_misses_is_promotable() -> None:
    # 10 positives the primary missed (cost 20 each) and the shadow caught; 90 rows both right.
    cells = [PairCell(0, 1, 1, 10), PairCell(1, 1, 1, 40), PairCell(0, 0, 0, 50)]
    figures = compare(1, 2, cells, MANIFEST, confidence=0.95, min_labels=100)
    mean = -20 * 10 / 100
    var = (10 * (-20 - mean) ** 2 + 90 * (0 - mean) ** 2) / 99
    upper = mean + 1.6448536269514722 * math.sqrt(var / 100)
    diff = figures["cost_difference"]
    assert diff["mean"] == pytest.approx(mean)
    assert diff["upper"] == pytest.approx(upper)
    assert upper == pytest.approx(-1.00811, abs=1e-4)
    assert figures["promotable"] and figures["reasons"] == []
    p, s = figures["primary"], figures["shadow"]
    assert (p["tp"], p["fn"], p["fp"], p["tn"]) == (40, 10, 0, 50)
    assert (s["tp"], s["fn"], s["fp"], s["tn"]) == (50, 0, 0, 50)
    assert p["fnr"] == pytest.approx(0.2) and s["fnr"] == 0.0
    assert p["cost_per_row"] == pytest.approx(2.0) and s["cost_per_row"] == 0.0


def test_too_few_labels_or_a_bound_not_below_zero_refuse() -> None:
    cells = [PairCell(0, 1, 1, 10), PairCell(1, 1, 1, 40), PairCell(0, 0, 0, 50)]
    refused = compare(1, 2, cells, MANIFEST, confidence=0.95, min_labels=101)
    assert not refused["promotable"]
    assert refused["reasons"] == ["100 labelled rows decided by both versions; at least 101 needed"]
    # The same advantage on few rows is not enough at a high confidence.
    few = [PairCell(0, 1, 1, 1), PairCell(0, 0, 0, 4)]
    figures = compare(1, 2, few, MANIFEST, confidence=0.99, min_labels=2)
    assert figures["cost_difference"]["upper"] > 0 and not figures["promotable"]
    # Equal versions: the bound is 0, not below it.
    same = [PairCell(1, 1, 1, 30), PairCell(0, 0, 0, 30)]
    assert not compare(1, 2, same, MANIFEST, 0.95, 2)["promotable"]
    # A shadow with more false positives than the primary's misses cost.
    worse = [PairCell(0, 1, 0, 300), PairCell(1, 1, 1, 10), PairCell(0, 0, 1, 1)]
    assert compare(1, 2, worse, MANIFEST, 0.95, 2)["cost_difference"]["mean"] > 0
    # Nothing labelled yet.
    empty = compare(1, 2, [], MANIFEST, 0.95, 2)
    assert empty["paired_labels"] == 0 and empty["cost_difference"]["upper"] is None
    assert len(empty["reasons"]) == 2


def test_a_multiclass_error_costs_one() -> None:
    manifest = {"task": "multiclass", "output": {"classes": ["a", "b", "c"]}}
    cells = [PairCell(0, 2, 2, 5), PairCell(1, 1, 1, 5)]
    figures = compare(1, 2, cells, manifest, 0.95, 2)
    assert figures["primary"]["errors"] == 5 and figures["shadow"]["errors"] == 0
    assert figures["primary"]["cost_per_row"] == 0.5
    assert figures["costs"] == {"error": 1.0}


def test_the_key_identity_never_shows_the_key() -> None:
    who = key_identity("s3cret")
    assert who.startswith("admin-key:") and "s3cret" not in who and len(who) == 22
