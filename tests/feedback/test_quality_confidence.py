"""The quality endpoint's confidence bounds: the service's Clopper-Pearson copy against
training's (scipy), and GET /models/{name}/quality on the bundled model next to the
manifest's training-time figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.http.app import create_app
from service.monitoring.confidence import beta_cdf, upper_bound
from tests.conftest import make_settings, wait_ready
from training.bounds import upper_bound as training_upper_bound

MODELS = Path(__file__).resolve().parents[2] / "models"


def test_the_service_bound_is_training_bound() -> None:
    """service/monitoring/confidence.py is a scipy-free copy of training/bounds.py."""
    cases = [(k, n) for n in range(0, 60) for k in range(n + 1)]
    rng = np.random.default_rng(0)
    for n in rng.integers(60, 100_000, size=150):
        cases += [(k, int(n)) for k in {0, 1, 2, 3, int(n) // 50, int(rng.integers(0, n)), int(n)}]
    for k, n in cases:
        assert upper_bound(k, n) == pytest.approx(training_upper_bound(k, n), rel=1e-9), (k, n)
    # The manifest's figures: 3 misses of 170 out-of-fold malignant, 2 of 42 held-out.
    assert upper_bound(3, 170) == pytest.approx(0.044975562393134036, rel=1e-12)
    assert upper_bound(2, 42) == pytest.approx(0.1424144765631462, rel=1e-12)
    assert upper_bound(0, 20, level=0.9) == pytest.approx(training_upper_bound(0, 20, 0.9))
    with pytest.raises(ValueError):
        upper_bound(3, 2)


def test_the_incomplete_beta_function_by_hand() -> None:
    # I_x(1, 1) = x; I_x(2, 1) = x^2; I_x(1, b) = 1 - (1 - x)^b
    for x in (0.0, 0.1, 0.5, 0.93, 1.0):
        assert beta_cdf(x, 1, 1) == pytest.approx(x)
        assert beta_cdf(x, 2, 1) == pytest.approx(x * x)
        assert beta_cdf(x, 1, 7) == pytest.approx(1 - (1 - x) ** 7)


def test_quality_of_the_bundled_model_shows_live_and_training_bounds(tmp_path: Path) -> None:
    folder = MODELS / "breast-cancer" / "1"
    manifest = json.loads((folder / "manifest.json").read_text())
    rows = json.loads((folder / "reference_sample.json").read_text())["inputs"]
    app = create_app(make_settings(MODELS, tmp_path))
    with TestClient(app) as client:
        wait_ready(client)
        predictions = client.post(
            "/predict", json={"model": "breast-cancer", "instances": rows}
        ).json()["predictions"]
        positives = [p for p in predictions if p["decision"] == "positive"]
        negatives = [p for p in predictions if p["decision"] == "negative"]
        assert len(positives) >= 5 and len(negatives) >= 5
        # Every label agrees with the decision, except one negative decision that was in
        # truth malignant: one miss (fn).
        items = [{"prediction_id": p["prediction_id"], "label": p["label"]} for p in predictions]
        items[predictions.index(negatives[0])]["label"] = "malignant"
        assert client.post("/feedback", json={"items": items}).status_code == 200
        quality = client.get("/models/breast-cancer/quality").json()
    assert quality["confidence"] == {"level": 0.95, "method": "clopper-pearson", "side": "upper"}
    (version,) = quality["versions"]
    live = version["windows"]["all_time"]
    caught = len(positives)
    assert (live["fn"], live["tp"]) == (1, caught)
    assert live["fnr"] == pytest.approx(1 / (caught + 1))
    assert live["fnr_upper"] == pytest.approx(training_upper_bound(1, caught + 1), rel=1e-9)
    assert live["fpr"] == 0 and live["fpr_upper"] == pytest.approx(
        training_upper_bound(0, len(negatives) - 1), rel=1e-9
    )
    # A handful of labels cannot show FNR <= 2% whatever they say.
    assert live["objectives"]["max_fnr"]["met_with_confidence"] is False
    training = version["training"]
    decision = manifest["decision"]
    assert training["source"] == "out-of-fold"
    assert training["confidence"] == decision["confidence"]
    assert training["fnr"] == {
        "estimate": decision["expected_fnr"],
        "upper": decision["expected_fnr_upper"],
        "errors": 3,
        "labelled": 170,
        "holdout": manifest["evaluation"]["holdout"]["fnr"],
        "holdout_upper": manifest["evaluation"]["holdout"]["fnr_upper"],
    }
    assert training["fnr"]["estimate"] <= 0.02 < training["fnr"]["upper"]
    assert training["fpr"]["upper"] == decision["expected_fpr_upper"]
