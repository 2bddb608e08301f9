"""Quality numbers on hand-computed cases, and the quality read from the store."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from feedback_support import BINARY, MULTICLASS, NOW, Clock, Metrics, manifest_of
from prometheus_client import CollectorRegistry

from service.dataplane.feedback import FeedbackService
from service.errors import InvalidFeedbackError, ModelNotFoundError
from service.monitoring.ids import PredictionIds
from service.monitoring.quality import confusion_matrix, expected_cost, rates, summarise
from service.monitoring.store import FeedbackStore


def test_binary_summary_by_hand() -> None:
    # actual benign: 5 right, 1 flagged (fp); actual malignant: 3 caught (tp), 1 missed (fn)
    matrix = confusion_matrix([(0, 0, 5), (1, 0, 1), (1, 1, 3), (0, 1, 1)], 2)
    assert matrix == [[5, 1], [1, 3]]
    summary = summarise(matrix, BINARY)
    assert (summary["tp"], summary["fp"], summary["tn"], summary["fn"]) == (3, 1, 5, 1)
    assert summary["labelled"] == 10
    assert summary["accuracy"] == pytest.approx(0.8)
    assert summary["fpr"] == pytest.approx(1 / 6)
    assert summary["fnr"] == pytest.approx(1 / 4)
    assert summary["precision"] == pytest.approx(3 / 4)
    assert summary["recall"] == pytest.approx(3 / 4)
    # One-sided 95% Clopper-Pearson upper bounds (scipy: beta.ppf(0.95, k + 1, n - k)):
    # 1 miss of 4 positives could be a miss rate of up to 75%.
    assert summary["fnr_upper"] == pytest.approx(0.7513953742698181, rel=1e-9)
    assert summary["fpr_upper"] == pytest.approx(0.5818034092520259, rel=1e-9)
    # targets: max_fnr 0.2 (0.25 misses it), max_fpr 0.1 (0.167 misses it)
    assert summary["objectives"]["max_fnr"] == {
        "target": 0.2,
        "value": 0.25,
        "upper": summary["fnr_upper"],
        "met": False,
        "met_with_confidence": False,
    }
    assert summary["objectives"]["max_fpr"]["met"] is False
    # cost: 1 * 1 FP + 20 * 1 FN = 21 over 10 labelled predictions
    assert summary["expected_cost"] == {"total": 21.0, "per_labelled": 2.1}
    assert summary["confusion_matrix"]["labels"] == ["benign", "malignant"]


def test_objectives_met_and_unmeasurable() -> None:
    lenient = {**BINARY, "objectives": {"max_fnr": 0.5, "max_fpr": None}}
    summary = summarise([[5, 1], [1, 3]], lenient)
    # Met on the estimate (0.25 <= 0.5), but 4 positives cannot show it: upper bound 0.75.
    assert summary["objectives"]["max_fnr"]["met"] is True
    assert summary["objectives"]["max_fnr"]["met_with_confidence"] is False
    assert summary["objectives"]["max_fpr"] == {
        "target": None,
        "value": pytest.approx(1 / 6),
        "upper": pytest.approx(0.5818034092520259),
        "met": None,
        "met_with_confidence": None,
    }
    sure = summarise([[500, 1], [0, 400]], lenient)  # no miss among 400 positives
    assert sure["fnr"] == 0 and sure["fnr_upper"] == pytest.approx(1 - 0.05 ** (1 / 400))
    assert sure["objectives"]["max_fnr"]["met_with_confidence"] is True
    empty = summarise([[0, 0], [0, 0]], BINARY)
    assert (empty["fpr"], empty["fnr"], empty["precision"], empty["recall"]) == (None,) * 4
    assert (empty["fpr_upper"], empty["fnr_upper"]) == (None, None)
    assert empty["objectives"]["max_fnr"]["met_with_confidence"] is None
    assert empty["objectives"]["max_fnr"]["met"] is None
    assert empty["expected_cost"] == {"total": 0.0, "per_labelled": None}
    assert rates(0, 0, 0, 0)["fpr"] is None
    assert expected_cost(1, 1, 2, None, 3.0) == {"total": None, "per_labelled": None}


def test_multiclass_rates_one_vs_rest() -> None:
    matrix = [[4, 1, 0], [0, 2, 2], [0, 0, 1]]
    targets = {"max_fnr": 0.4, "max_fpr": 0.5}
    summary = summarise(matrix, {**MULTICLASS, "objectives": targets})
    one = summary["per_class"]["one"]
    # class "one": tp 2, fn 2 (sent to "two"), fp 1 (a zero), tn 5
    assert (one["tp"], one["fn"], one["fp"], one["tn"]) == (2, 2, 1, 5)
    assert one["fnr"] == pytest.approx(0.5)
    assert one["fnr_upper"] == pytest.approx(0.9023885371135856)  # 2 of 4
    assert one["precision"] == pytest.approx(2 / 3)
    assert summary["accuracy"] == pytest.approx(7 / 10)
    # the worst class decides: FNR 0.5 ("one") > 0.4; FPR worst is "two": fp 2, tn 7, 2/9 <= 0.5
    assert summary["objectives"]["max_fnr"]["met"] is False
    assert summary["objectives"]["max_fpr"]["value"] == pytest.approx(2 / 9)
    assert summary["objectives"]["max_fpr"]["met"] is True
    assert summary["expected_cost"]["total"] is None


def _label(
    service: FeedbackService, ids: PredictionIds, predicted: int, actual: int, n: int = 1
) -> None:
    pids = ids.issue_many("bc", 1, [predicted] * n, [0.5] * n, NOW - 7200)
    answers = asyncio.run(service.submit([{"prediction_id": p, "label": actual} for p in pids]))
    assert {a["result"] for a in answers} == {"accepted"}


def test_quality_from_the_store_over_windows(
    store: FeedbackStore, ids: PredictionIds, metrics: Metrics
) -> None:
    clock = Clock(NOW - 2 * 86_400)
    issued: dict[str, Any] = {}
    service = FeedbackService(
        store,
        ids,
        manifest_of,
        metrics,
        clock=clock,
        versions_of=lambda model: [1] if model == "bc" else [],
        predictions_issued=lambda model, version: issued.get(model),
    )
    _label(service, ids, 1, 1, n=2)  # two days ago: 2 tp
    clock.now = NOW - 7_000
    _label(service, ids, 0, 1)  # two hours ago: 1 fn
    clock.now = NOW - 60
    _label(service, ids, 1, 0)  # a minute ago: 1 fp
    _label(service, ids, 0, 0, n=3)  # and 3 tn
    clock.now = NOW
    quality = asyncio.run(service.quality("bc"))
    assert quality["model"] == "bc" and quality["time_basis"] == "received"
    [version] = quality["versions"]
    assert version["version"] == 1 and version["manifest_loaded"] is True
    windows = version["windows"]
    hour, day, ever = windows["last_hour"], windows["last_day"], windows["all_time"]
    assert (hour["tp"], hour["fp"], hour["tn"], hour["fn"]) == (0, 1, 3, 0)
    assert (day["tp"], day["fp"], day["tn"], day["fn"]) == (0, 1, 3, 1)
    assert (ever["tp"], ever["fp"], ever["tn"], ever["fn"]) == (2, 1, 3, 1)
    assert ever["fnr"] == pytest.approx(1 / 3)
    assert ever["expected_cost"]["total"] == 21.0
    assert version["coverage"]["labelled"] == 7 and version["coverage"]["ratio"] is None
    # with a predictions counter: labels of predictions issued since then / that count
    issued["bc"] = (14.0, NOW - 10_000)
    coverage = asyncio.run(service.quality("bc"))["versions"][0]["coverage"]
    assert coverage["predictions_issued"] == 14.0
    assert coverage["ratio"] == pytest.approx(7 / 14)
    assert "other replicas" in coverage["basis"]


def test_quality_of_a_served_model_without_labels_and_of_no_model(
    store: FeedbackStore, ids: PredictionIds, registry: CollectorRegistry
) -> None:
    service = FeedbackService(
        store,
        ids,
        manifest_of,
        Metrics(registry),
        clock=Clock(),
        versions_of=lambda model: [2] if model == "digits" else [],
    )
    quality = asyncio.run(service.quality("digits"))
    ever = quality["versions"][0]["windows"]["all_time"]
    assert ever["labelled"] == 0
    assert ever["confusion_matrix"]["counts"] == [[0, 0, 0]] * 3
    with pytest.raises(ModelNotFoundError):
        asyncio.run(service.quality("nope"))
    with pytest.raises(InvalidFeedbackError):
        asyncio.run(service.quality("digits", time_basis="x; DROP TABLE labels"))


def test_labels_of_a_version_no_longer_served_are_still_reported(
    store: FeedbackStore, ids: PredictionIds, metrics: Metrics
) -> None:
    service = FeedbackService(store, ids, manifest_of, metrics, clock=Clock())
    _label(service, ids, 1, 1)
    gone = FeedbackService(store, ids, lambda model, version: None, metrics, clock=Clock())
    [version] = asyncio.run(gone.quality("bc"))["versions"]
    assert version["manifest_loaded"] is False
    assert version["classes"] == ["0", "1"]
    assert version["windows"]["all_time"]["confusion_matrix"]["counts"] == [[0, 0], [0, 1]]
