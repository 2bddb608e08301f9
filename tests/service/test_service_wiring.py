"""The app factory wires feedback, quality, drift and model cards into the real app."""

from pathlib import Path
from typing import Any

import numpy as np


def test_card_page_is_served_by_the_real_app(model_repo: Path, client: Any) -> None:
    (model_repo / "bin" / "1" / "MODEL_CARD.md").write_text(
        "# Card for bin\n\nIntended use: <tests>\n"
    )
    page = client.get("/models/bin/card")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "Card for bin" in page.text and "&lt;tests&gt;" in page.text
    missing = client.get("/models/nope/card")
    assert missing.status_code == 404 and set(missing.json()) == {"error", "code"}


def test_feedback_round_trip_updates_outcomes_and_quality(client: Any, app: Any) -> None:
    rows = [[0.0, 0.0, 0.0], [5.0, 5.0, 5.0], [-5.0, -5.0, -5.0]]
    answer = client.post("/predict", json={"model": "bin", "instances": rows}).json()
    preds = answer["predictions"]
    classes = list(preds[0]["probabilities"])
    # Label every prediction with the class it was NOT given: every one is an error.
    items = [
        {"prediction_id": p["prediction_id"], "label": next(c for c in classes if c != p["label"])}
        for p in preds
    ]
    first = client.post("/feedback", json={"items": items}).json()
    assert [r["result"] for r in first["results"]] == ["accepted"] * 3
    again = client.post("/feedback", json={"items": items}).json()
    assert [r["result"] for r in again["results"]] == ["duplicate"] * 3
    reg = app.state.registry
    errors = sum(
        reg.get_sample_value(
            "verdict_outcomes_total", {"model": "bin", "version": "1", "outcome": o}
        )
        or 0.0
        for o in ("fp", "fn")
    )
    right = sum(
        reg.get_sample_value(
            "verdict_outcomes_total", {"model": "bin", "version": "1", "outcome": o}
        )
        or 0.0
        for o in ("tp", "tn")
    )
    assert (errors, right) == (3.0, 0.0)
    quality = client.get("/models/bin/quality")
    assert quality.status_code == 200
    assert "all" in str(quality.json())


def test_drift_counts_every_predicted_row(client: Any, app: Any) -> None:
    client.post("/predict", json={"model": "bin", "instances": [[1.0, 2.0, 3.0]] * 4})
    text = client.get("/metrics").text
    lines = [
        ln
        for ln in text.splitlines()
        if ln.startswith("verdict_feature_bin_total{") and 'model="bin"' in ln
    ]
    assert lines, "drift counters missing"
    per_feature: dict[str, float] = {}
    for ln in lines:
        feature = ln.split('feature="', 1)[1].split('"', 1)[0]
        per_feature[feature] = per_feature.get(feature, 0.0) + float(ln.rsplit(" ", 1)[1])
    assert all(v == 4.0 for v in per_feature.values()), per_feature


def test_an_image_model_drifts_on_its_predicted_classes_and_confidence(
    client: Any, app: Any
) -> None:
    rows = np.random.default_rng(3).normal(size=(6, 16)).tolist()
    answer = client.post("/predict", json={"model": "img", "instances": rows}).json()
    classes = [p["class_index"] for p in answer["predictions"]]
    top = [max(p["probabilities"].values()) for p in answer["predictions"]]
    app.state.drift.flush()
    reg = app.state.registry

    def count(feature: str, bin_: int) -> float:
        labels = {"model": "img", "version": "1", "feature": feature, "bin": str(bin_)}
        return reg.get_sample_value("verdict_feature_bin_total", labels) or 0.0

    assert [count("__class__", c) for c in range(3)] == [classes.count(c) for c in range(3)]
    expected = [sum(t <= 0.5 for t in top), sum(0.5 < t <= 0.9 for t in top)]
    expected.append(len(top) - sum(expected))
    assert [count("__confidence__", b) for b in range(3)] == expected


def test_card_of_an_unreadable_folder_is_a_404_not_a_500(model_repo: Path, client: Any) -> None:
    card = model_repo / "bin" / "1" / "MODEL_CARD.md"
    card.mkdir()  # a folder where the card file should be: reading it raises OSError
    page = client.get("/models/bin/card")
    assert page.status_code == 404 and set(page.json()) == {"error", "code"}
