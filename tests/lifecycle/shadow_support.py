"""Two versions of a binary model for the shadow tests: the primary decides on feature
`alpha`, the challenger on `beta`; on the shifted traffic made here the truth follows `beta`,
so the challenger is measurably cheaper."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_until, write_binary

MODEL = "risk"
ADMIN_KEY = "admin-s3cret"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def write_on_feature(root: Path, version: int, feature: int, name: str = MODEL) -> Path:
    """A version whose spam score is sigmoid(4 * x[feature]) (threshold 0.5)."""
    w = np.zeros((3, 2), dtype=np.float32)
    w[feature, 1] = 4.0
    b = np.zeros(2, dtype=np.float32)
    return write_binary(root, version, name=name, threshold=0.5, weights=(w, b))


def write_pair(root: Path, name: str = MODEL) -> Path:
    """v1 (primary, decides on alpha) and v2 (challenger, decides on beta)."""
    write_on_feature(root, 1, 0, name)
    write_on_feature(root, 2, 1, name)
    return root


def shifted_rows(n: int, seed: int = 0) -> tuple[list[list[float]], list[str]]:
    """Rows of the shifted traffic and their truth: spam exactly when beta > 0 (alpha is
    noise), with beta kept away from 0 so the challenger's decisions are clear-cut."""
    rng = np.random.default_rng(seed)
    alpha = rng.normal(size=n)
    beta = rng.choice([-1.0, 1.0], size=n) * rng.uniform(0.3, 2.0, size=n)
    gamma = rng.normal(size=n)
    rows = np.stack([alpha, beta, gamma], axis=1).round(4).tolist()
    return rows, ["spam" if v > 0 else "ham" for v in beta]


def label_shadowed_rows(
    serving: Any, labelling: Any, rows: list[list[float]], truth: list[str]
) -> None:
    """Predict `rows` on `serving` (answered by v1), wait until `labelling` sees the shadow's
    decision of every row, then label them all there: one label scores both versions."""
    r = serving.post("/predict", json={"model": MODEL, "instances": rows})
    assert r.status_code == 200 and r.json()["version"] == 1, r.text
    answers = r.json()["predictions"]
    wait_until(
        lambda: (
            labelling.get(f"/models/{MODEL}/shadow").json().get("shadow_decisions", 0) >= len(rows)
        ),
        20.0,
        "the shadow's decision of every row",
    )
    items = [
        {"prediction_id": a["prediction_id"], "label": t}
        for a, t in zip(answers, truth, strict=True)
    ]
    assert labelling.post("/feedback", json={"items": items}).json()["accepted"] == len(rows)


def shadow_outcomes(metrics_text: str, model: str) -> dict[tuple[str, str, str], float]:
    """verdict_shadow_outcomes_total of a model in a /metrics text, by (version, role,
    outcome)."""
    return {
        (s.labels["version"], s.labels["role"], s.labels["outcome"]): s.value
        for family in text_string_to_metric_families(metrics_text)
        if family.name == "verdict_shadow_outcomes"
        for s in family.samples
        if s.name == "verdict_shadow_outcomes_total" and s.labels["model"] == model
    }
