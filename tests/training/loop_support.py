"""The loop tests' server (one champion, capture of every row, an admin key) and their live
traffic: predictions in requests of 50 rows, and their labels sent back in batches, as
production would send them."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx

from service.http.app import create_app
from tests.conftest import make_settings
from tests.service.server_support import ThreadServer

ADMIN_KEY = "loop-admin"


def loop_server(tmp_path: Path, model: str, champion: Path) -> ThreadServer:
    """A real server whose repository holds `champion` as version 1 of `model`, capturing
    every row it predicts; stop it with `.stop()`."""
    shutil.copytree(champion, tmp_path / "models" / model / "1")
    settings = make_settings(
        tmp_path / "models",
        tmp_path,
        capture_rates=f"{model}=1",
        capture_max_rows_per_s=10_000,
        admin_api_key=ADMIN_KEY,
        promotion_min_labels=100,
    )
    return ThreadServer(create_app(settings))


def predict_live(
    client: httpx.Client, model: str, rows: list[Any], version: int = 1
) -> list[dict[str, Any]]:
    """The predictions of `rows` (as /predict takes them), in requests of 50 rows, oldest
    first; every one answered by `version`, the primary."""
    predictions = []
    for start in range(0, len(rows), 50):
        body = {"model": model, "instances": rows[start : start + 50]}
        answer = client.post("/predict", json=body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["version"] == version
        predictions += answer.json()["predictions"]
    return predictions


def label_live(client: httpx.Client, predictions: list[dict[str, Any]], labels: list[str]) -> None:
    """Ground truth for those predictions, sent back as it would arrive: in batches of 100."""
    items = [
        {"prediction_id": p["prediction_id"], "label": label}
        for p, label in zip(predictions, labels, strict=True)
    ]
    for start in range(0, len(items), 100):
        batch = items[start : start + 100]
        assert client.post("/feedback", json={"items": batch}).json()["accepted"] == len(batch)
