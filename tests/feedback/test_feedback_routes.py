"""POST /feedback and GET /models/{name}/quality through a real FastAPI app and TestClient."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from feedback_support import NOW, Clock, Metrics, feedback_app, manifest_of
from prometheus_client import CollectorRegistry

from service.dataplane.feedback import FeedbackService
from service.monitoring.ids import PredictionIds
from service.monitoring.store import FeedbackStore


@pytest.fixture
def client(
    db_path: str, ids: PredictionIds, registry: CollectorRegistry, tmp_path: Path
) -> Iterator[TestClient]:
    store = FeedbackStore(db_path, busy_timeout_s=0.05)
    service = FeedbackService(
        store,
        ids,
        manifest_of,
        Metrics(registry),
        clock=Clock(),
        max_items=5,
        versions_of=lambda model: [1] if model == "bc" else [],
    )
    app = feedback_app(service, tmp_path)
    with TestClient(app) as test_client:
        yield test_client
    store.close()


def test_post_feedback_answers_per_item(
    client: TestClient, ids: PredictionIds, registry: CollectorRegistry
) -> None:
    a, b = ids.issue_many("bc", 1, [1, 0], [0.9, 0.1], NOW - 10)
    response = client.post(
        "/feedback",
        json={
            "items": [
                {"prediction_id": a, "label": "malignant", "observed_at": "2027-01-15T08:00:00Z"},
                {"prediction_id": b, "label": 1},
                {"prediction_id": "p1.forged.id", "label": 1},
                {"prediction_id": b, "label": "dog"},
            ]
        },
    )
    assert response.status_code == 200
    body = response.json()
    assert [r["result"] for r in body["results"]] == ["accepted", "accepted", "unknown", "invalid"]
    assert body["results"][0] == {"prediction_id": a, "result": "accepted"}
    assert (body["accepted"], body["unknown"], body["invalid"], body["duplicate"]) == (2, 1, 1, 0)
    # a bare list works too; sending again is a duplicate
    again = client.post("/feedback", json=[{"prediction_id": a, "label": "malignant"}])
    assert again.status_code == 200 and again.json()["duplicate"] == 1
    assert (
        registry.get_sample_value(
            "verdict_outcomes_total", {"model": "bc", "version": "1", "outcome": "tp"}
        )
        == 1
    )


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b'{"items": {"prediction_id": "x"}}', 422, "invalid_feedback"),
        (b'{"items": []}', 422, "invalid_feedback"),
        (b"[" + b",".join([b"{}"] * 6) + b"]", 422, "too_many_items"),
    ],
)
def test_unusable_bodies_get_the_error_shape(
    client: TestClient, body: bytes, status: int, code: str
) -> None:
    response = client.post("/feedback", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status
    assert set(response.json()) == {"error", "code"}
    assert response.json()["code"] == code


def test_a_locked_store_answers_503_with_retry_after(
    client: TestClient, ids: PredictionIds, db_path: str
) -> None:
    [pid] = ids.issue_many("bc", 1, [1], [0.9], NOW)
    client.post(
        "/feedback", json=[{"prediction_id": ids.issue("bc", 1, 0, 0.1, NOW), "label": 0}]
    )  # the schema exists
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        response = client.post("/feedback", json=[{"prediction_id": pid, "label": 1}])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert response.status_code == 503
    assert response.headers["retry-after"].isdigit()
    assert response.json()["code"] == "store_unavailable"
    retry = client.post("/feedback", json=[{"prediction_id": pid, "label": 1}])
    assert retry.json()["results"][0]["result"] == "accepted"


def test_get_quality(client: TestClient, ids: PredictionIds) -> None:
    pids = ids.issue_many("bc", 1, [1, 1, 0], [0.9, 0.8, 0.2], NOW - 10)
    client.post(
        "/feedback",
        json=[
            {"prediction_id": p, "label": label} for p, label in zip(pids, [1, 0, 1], strict=True)
        ],
    )
    response = client.get("/models/bc/quality")
    assert response.status_code == 200
    ever = response.json()["versions"][0]["windows"]["all_time"]
    assert (ever["tp"], ever["fp"], ever["fn"], ever["tn"]) == (1, 1, 1, 0)
    assert ever["expected_cost"] == {"total": 21.0, "per_labelled": 7.0}
    assert ever["objectives"]["max_fnr"]["met"] is False
    missing = client.get("/models/nope/quality")
    assert missing.status_code == 404 and missing.json()["code"] == "model_not_found"
    bad = client.get("/models/bc/quality", params={"time_basis": "tomorrow"})
    assert bad.status_code == 422 and set(bad.json()) == {"error", "code"}
    observed = client.get("/models/bc/quality", params={"time_basis": "observed"})
    assert observed.json()["time_basis"] == "observed"
