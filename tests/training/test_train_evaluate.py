"""Fit diagnosis on synthetic curves, the cost threshold on a hand-computed case, CV folds."""

from typing import Any

import numpy as np
import pytest

from training.config import validate_config
from training.data import load_dataset, split_dataset
from training.evaluate import GOOD_FIT, NOT_LEARNING, OVER_FITTING, cross_validate, diagnose
from training.export import reference_bins
from training.fit import train_model
from training.threshold import choose_threshold, cross_fitted_rates


def test_diagnosis_not_learning() -> None:
    epochs = list(range(30))
    flat = [0.693 - 0.0001 * e for e in epochs]
    d = diagnose(epochs, flat, [0.70] * 30)
    assert d.diagnosis == NOT_LEARNING


def test_diagnosis_over_fitting_reports_the_turn() -> None:
    epochs = list(range(41))
    train = [1.0 / (1 + e) for e in epochs]
    val = [0.9 - 0.04 * e if e <= 15 else 0.3 + 0.02 * (e - 15) for e in epochs]
    d = diagnose(epochs, train, val)
    assert d.diagnosis == OVER_FITTING
    assert d.best_epoch == 15 and d.turn_epoch == 15
    assert "epoch 15" in d.message


def test_diagnosis_good_fit() -> None:
    epochs = list(range(50))
    train = [0.7 * np.exp(-e / 10) + 0.05 for e in epochs]
    val = [0.7 * np.exp(-e / 10) + 0.08 for e in epochs]
    d = diagnose(epochs, train, val)
    assert d.diagnosis == GOOD_FIT
    assert d.best_epoch == 49
    # A small wobble after the best epoch is still a good fit.
    val2 = [*val[:40], *[val[39] * 1.02] * 10]
    assert diagnose(epochs, train, val2).diagnosis == GOOD_FIT


# Negatives score 0.1, 0.3, 0.6; positives 0.4, 0.8, 0.9. Candidate thresholds:
# 0, 0.2, 0.35, 0.5, 0.7, 0.85, 0.95 with (FP, FN) = (3,0) (2,0) (1,0) (1,1) (0,1) (0,2) (0,3).
SCORES = np.array([0.1, 0.3, 0.6, 0.4, 0.8, 0.9])
LABELS = np.array([0, 0, 0, 1, 1, 1])


def test_threshold_hand_computed_costly_misses() -> None:
    # cost_fn 5: costs 3, 2, 1, 6, 5, 10, 15 -> 0.35 (one false alarm, nothing missed).
    c = choose_threshold(LABELS, SCORES, cost_fp=1, cost_fn=5)
    assert c.threshold == pytest.approx(0.35)
    assert c.method == "min_cost"
    assert c.expected_cost == pytest.approx(1 / 6)
    assert (c.expected_fpr, c.expected_fnr) == (pytest.approx(1 / 3), 0.0)


def test_threshold_hand_computed_cheap_misses_and_constraints() -> None:
    # cost_fn 0.5: costs 3, 2, 1, 1.5, 0.5, 1, 1.5 -> 0.7.
    c = choose_threshold(LABELS, SCORES, cost_fp=1, cost_fn=0.5)
    assert c.threshold == pytest.approx(0.7)
    assert c.expected_fnr == pytest.approx(1 / 3) and c.expected_fpr == 0.0
    # Missing no positive is now required: the best of 0, 0.2, 0.35 is 0.35.
    c = choose_threshold(LABELS, SCORES, cost_fp=1, cost_fn=0.5, max_fnr=0.0)
    assert c.threshold == pytest.approx(0.35)
    assert c.method == "min_cost_subject_to_constraints" and c.feasible
    # FPR <= 0.5 as well leaves 0.35 only; FPR 0 and FNR 0 together are impossible.
    c = choose_threshold(LABELS, SCORES, 1, 0.5, max_fnr=0.0, max_fpr=0.5)
    assert c.threshold == pytest.approx(0.35)
    c = choose_threshold(LABELS, SCORES, 1, 0.5, max_fnr=0.0, max_fpr=0.0)
    assert not c.feasible and c.method == "closest_to_constraints"
    # Closest: violation 1/3 at 0.35 (FPR) and 0.7 (FNR); 0.7 is cheaper.
    assert c.threshold == pytest.approx(0.7)
    assert len(c.curve["threshold"]) == 7


def test_reference_bins_shape_and_ties() -> None:
    rng = np.random.default_rng(0)
    r = reference_bins(rng.normal(size=500), 10)
    assert len(r["edges"]) == 9 and len(r["proportions"]) == 10
    assert all(a < b for a, b in zip(r["edges"], r["edges"][1:], strict=False))
    assert sum(r["proportions"]) == pytest.approx(1.0)
    assert all(abs(p - 0.1) < 0.01 for p in r["proportions"])
    tied = reference_bins(np.array([0.0] * 80 + [1.0, 2.0, 3.0] * 5), 5)
    assert len(tied["edges"]) == 4
    assert all(a < b for a, b in zip(tied["edges"], tied["edges"][1:], strict=False))
    assert sum(tied["proportions"]) == pytest.approx(1.0)
    assert tied["proportions"][0] == pytest.approx(80 / 95)  # bin 0 is (-inf, 0]


def test_cv_fits_the_scaler_inside_each_fold() -> None:
    cfg = validate_config(
        {
            "name": "cv",
            "data": {"name": "iris"},
            "model": {"hidden": [8]},
            "train": {"epochs": 3, "progress": "none"},
            "cv": {"folds": 3},
        }
    )
    ds = load_dataset(cfg.data)
    split = split_dataset(ds.y, cfg.data, cfg.seed)
    dev = np.sort(np.concatenate([split.train, split.val]))
    seen: list[dict[str, Any]] = []

    def spy(cfg_: Any, ds_: Any, tr: np.ndarray, va: np.ndarray, *a: Any) -> Any:
        model = train_model(cfg_, ds_, tr, va, *a)
        seen.append({"train": tr, "val": va, "mean": model.scaler.mean})
        return model

    cv = cross_validate(cfg, ds, dev, None, spy, log=lambda _: None)
    assert len(cv.folds) == 3 and len(seen) == 3
    tested: set[int] = set()
    for s, fold in zip(seen, cv.folds, strict=True):
        used = set(s["train"]) | set(s["val"])
        assert used <= set(dev)
        fold_test = set(dev) - used
        assert len(fold_test) == fold["rows"]
        assert not fold_test & tested
        tested |= fold_test
        np.testing.assert_allclose(s["mean"], ds.x[s["train"]].mean(axis=0), rtol=1e-5)
    assert tested == set(dev)
    for key in ("accuracy_mean", "accuracy_std", "macro_f1_mean", "log_loss_mean"):
        assert cv.summary[key] is not None
    assert cv.summary["roc_auc_mean"] is None  # multiclass
    assert np.allclose(cv.oof_proba.sum(axis=1), 1.0, atol=1e-5)


def test_cross_fitted_threshold_rates() -> None:
    # Two folds with the same layout: each fold's threshold comes from the other, 0.35
    # (hand-computed above), which on the other fold again misses nothing, one false alarm.
    scores = np.concatenate([SCORES, SCORES])
    labels = np.concatenate([LABELS, LABELS])
    folds = np.array([1] * 6 + [2] * 6)
    r = cross_fitted_rates(labels, scores, folds, cost_fp=1, cost_fn=5)
    assert r["thresholds"] == [pytest.approx(0.35)] * 2
    assert r["confusion"] == {"tp": 6, "fp": 2, "tn": 4, "fn": 0}
    assert r["fnr"] == 0.0 and r["fpr"] == pytest.approx(2 / 6)
    assert r["cost_per_row"] == pytest.approx(2 / 12)
