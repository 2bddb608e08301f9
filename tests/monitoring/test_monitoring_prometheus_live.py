"""A real Prometheus scraping a live verdict server: recorded FNR/FPR and the FNR alert."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest

from tests.monitoring.test_monitoring_evidence import lower_bound

OUTCOMES = ("tp", "fp", "tn", "fn")
ROWS_PER_REQUEST = 32
MAX_ROWS = 2000
# The labelling pattern: of the rows the service called positive, 45 are labelled positive
# (tp) and 5 negative (fp); of those it called negative, 15 are labelled positive (fn) and 40
# negative (tn). 60 labelled positives clear the alert's minimum (20 for max_fnr 0.05), and
# 15 misses among them put FNR's lower bound far above the target.
PATTERN = {"tp": 45, "fp": 5, "fn": 15, "tn": 40}


def predict_until_both_decisions(
    base: str, model: str, n_features: int, need: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """POST /predict random rows until `need` positive and `need` negative decisions came back."""
    rng = np.random.default_rng(0)
    positive: list[dict[str, Any]] = []
    negative: list[dict[str, Any]] = []
    sent = 0
    with httpx.Client(base_url=base, timeout=10) as client:
        while (len(positive) < need or len(negative) < need) and sent < MAX_ROWS:
            rows = (rng.normal(size=(ROWS_PER_REQUEST, n_features)) * 2).tolist()
            resp = client.post("/predict", json={"model": model, "instances": rows})
            assert resp.status_code == 200, resp.text
            for row in resp.json()["predictions"]:
                (positive if row["decision"] == "positive" else negative).append(row)
            sent += len(rows)
    assert len(positive) >= need and len(negative) >= need, (
        f"{sent} rows gave {len(positive)} positive and {len(negative)} negative decisions"
    )
    return positive, negative


def test_recorded_fnr_fpr_and_pending_fnr_alert_from_live_feedback(
    live_server: str, prometheus: Callable[[list[str]], Any]
) -> None:
    base = live_server.rstrip("/")
    prom = prometheus([urlparse(base).netloc])
    prom.wait_for_targets_up(1)

    # A binary model with an FNR target, as the service exports it from its manifest.
    targets = prom.wait_for(
        lambda: prom.values('verdict_objective_ratio{objective="max_fnr"}', by="model") or None,
        "verdict_objective_ratio{objective='max_fnr'} from the service",
    )
    model = sorted(targets)[0]
    target = targets[model]
    expected_fnr = PATTERN["fn"] / (PATTERN["fn"] + PATTERN["tp"])
    expected_fpr = PATTERN["fp"] / (PATTERN["fp"] + PATTERN["tn"])
    assert target < expected_fnr, f"{model}: max_fnr {target} too high for this test's pattern"

    # The outcome counters must be there at 0 before any label arrives (docs/monitoring.md,
    # "What the rules need from the exporter"): otherwise increase() cannot see the first
    # labels and the ratios are skewed.
    def initial_outcomes() -> dict[str, float] | None:
        found = prom.values(f'verdict_outcomes_total{{model="{model}"}}', by="outcome")
        return found if set(found) == set(OUTCOMES) else None

    initial = prom.wait_for(
        initial_outcomes,
        f"verdict_outcomes_total{{model={model!r}}} for tp, fp, tn, fn before any feedback",
        timeout_s=5,
    )
    assert initial == dict.fromkeys(OUTCOMES, 0.0)

    metadata = httpx.get(f"{base}/v2/models/{model}", timeout=10).json()
    n_features = int(metadata["inputs"][0]["shape"][-1])
    need = max(PATTERN["tp"] + PATTERN["fp"], PATTERN["fn"] + PATTERN["tn"])
    positive, negative = predict_until_both_decisions(base, model, n_features, need)
    positive_label, negative_label = positive[0]["label"], negative[0]["label"]

    said_positive = positive[: PATTERN["tp"] + PATTERN["fp"]]
    said_negative = negative[: PATTERN["fn"] + PATTERN["tn"]]
    items: list[dict[str, Any]] = []
    for i, row in enumerate(said_positive):
        label = negative_label if i < PATTERN["fp"] else positive_label
        items.append({"prediction_id": row["prediction_id"], "label": label})
    for i, row in enumerate(said_negative):
        label = positive_label if i < PATTERN["fn"] else negative_label
        items.append({"prediction_id": row["prediction_id"], "label": label})
    # Recount from what the service said and what we labelled, independently of PATTERN.
    counted = dict.fromkeys(OUTCOMES, 0)
    decided = {r["prediction_id"]: r["decision"] for r in said_positive + said_negative}
    for item in items:
        said = decided[item["prediction_id"]] == "positive"
        truth = item["label"] == positive_label
        counted[("t" if said == truth else "f") + ("p" if said else "n")] += 1
    assert counted == PATTERN

    resp = httpx.post(f"{base}/feedback", json={"items": items}, timeout=30)
    assert resp.status_code == 200, resp.text
    assert [r["result"] for r in resp.json()["results"]] == ["accepted"] * len(items)

    def scraped_all_labels() -> bool:
        total = prom.values(f'sum by (model) (verdict_outcomes_total{{model="{model}"}})', "model")
        return total.get(model) == len(items)

    prom.wait_for(scraped_all_labels, f"{len(items)} outcomes of {model} in Prometheus")

    def recorded(record: str, expected: float) -> float | None:
        value = prom.values(f'{record}{{model="{model}"}}', by="model").get(model)
        return value if value is not None and value == pytest.approx(expected) else None

    fnr = prom.wait_for(
        lambda: recorded("model:verdict_fnr:ratio_rate1h", expected_fnr),
        f"model:verdict_fnr:ratio_rate1h{{model={model!r}}} == {expected_fnr}",
    )
    fpr = prom.wait_for(
        lambda: recorded("model:verdict_fpr:ratio_rate1h", expected_fpr),
        f"model:verdict_fpr:ratio_rate1h{{model={model!r}}} == {expected_fpr}",
    )
    assert fnr == pytest.approx(expected_fnr, rel=1e-9)
    assert fpr == pytest.approx(expected_fpr, rel=1e-9)

    def fnr_alert() -> dict[str, Any] | None:
        for alert in prom.alerts():
            labels = alert["labels"]
            if labels["alertname"] == "VerdictFNRAboveTarget" and labels["model"] == model:
                return dict(alert)
        return None

    alert = prom.wait_for(fnr_alert, f"VerdictFNRAboveTarget for {model}")
    # `for: 30m`: it stays pending for far longer than this test runs.
    assert alert["state"] == "pending"
    # Its value is the 95% lower bound of the live FNR (the evidence), from the labelled
    # positives Prometheus counted in the 6h window; the service exported the minimum of
    # labelled positives the alert needs (ceil(1 / max_fnr), at least 10).
    positives = prom.values(
        f'model:verdict_labeled_positives:increase6h{{model="{model}"}}', by="model"
    )[model]
    assert positives >= prom.values("model:verdict_fnr_min_labeled:max", by="model")[model]
    exported = prom.values('verdict_objective_min_labeled{objective="max_fnr"}', by="model")
    assert exported[model] == max(10, math.ceil(1 / target))
    bound = lower_bound(expected_fnr * positives, positives)
    assert float(alert["value"]) == pytest.approx(float(bound), rel=1e-9)
    assert target < float(alert["value"]) < expected_fnr


def test_an_image_model_drifts_on_its_predictions_through_prometheus(
    live_server: str, prometheus: Callable[[list[str]], Any]
) -> None:
    """The live image model (3 classes, no tabular feature) gets a PSI per version for its
    predicted classes and top-class confidence, from the reference its manifest carries."""
    base = live_server.rstrip("/")
    prom = prometheus([urlparse(base).netloc])
    prom.wait_for_targets_up(1)
    features = {"__class__", "__confidence__"}

    def counters_at_zero() -> bool:
        found = prom.values(
            'sum by (feature) (verdict_feature_bin_total{model="img",version="1"})', by="feature"
        )
        return features <= set(found)

    # The bins exist before any prediction of this test (increase() needs a first sample);
    # the module's earlier test may have predicted already, which only adds to them.
    prom.wait_for(counters_at_zero, "verdict_feature_bin_total of img's predictions")
    rows = np.random.default_rng(5).normal(size=(64, 16)).tolist()
    with httpx.Client(base_url=base, timeout=10) as client:
        for _ in range(4):
            assert (
                client.post("/predict", json={"model": "img", "instances": rows}).status_code == 200
            )

    def psi() -> dict[str, float] | None:
        found = prom.values(
            'model_version_feature:verdict_psi:rate1h{model="img",version="1"}', by="feature"
        )
        return found if set(found) == features else None

    values = prom.wait_for(psi, "PSI of img's __class__ and __confidence__")
    assert all(v >= 0 for v in values.values())
    shares = prom.values(
        'model_version_feature_bin:verdict_feature_bin:ratio_rate1h{model="img",feature="__class__"}',
        by="bin",
    )
    assert set(shares) == {"0", "1", "2"} and sum(shares.values()) == pytest.approx(1.0)
