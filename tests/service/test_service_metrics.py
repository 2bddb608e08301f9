"""Metrics: values after traffic, configuration series from the manifest, bounded labels."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from service.monitoring.metrics import Metrics

BOUNDED_LABELS = {
    "model",
    "version",
    "stage",
    "outcome",
    "provider",
    "threshold",
    "label",
    "route",
    "method",
    "code",
    "result",
    "predicted",
    "actual",
    "objective",
    "feature",
    "role",
    "bin",
    "le",
    "check",
    "protocol",
}
NAMES = {
    "http_duration": "verdict_http_request_duration_seconds",
    "grpc_duration": "verdict_grpc_request_duration_seconds",
    "inference_duration": "verdict_inference_duration_seconds",
    "batch_size": "verdict_batch_size",
    "queue_depth": "verdict_queue_depth",
    "inference_requests": "verdict_inference_requests",
    "model_info": "verdict_model_info",
    "predictions": "verdict_predictions",
    "prediction_score": "verdict_prediction_score",
    "feedback_items": "verdict_feedback_items",
    "labeled_predictions": "verdict_labeled_predictions",
    "outcomes": "verdict_outcomes",
    "label_delay": "verdict_label_delay_seconds",
    "objective_ratio": "verdict_objective_ratio",
    "outcome_cost": "verdict_outcome_cost",
    "feature_bin": "verdict_feature_bin",
    "reference_bin_ratio": "verdict_reference_bin_ratio",
    "model_refusals": "verdict_model_refusals",
    "conformance_diff": "verdict_conformance_max_abs_diff",
}


def test_every_design_metric_is_an_attribute() -> None:
    m = Metrics(CollectorRegistry())
    for attr, name in NAMES.items():
        assert getattr(m, attr)._name == name
    assert m.http_duration._upper_bounds[0] == 0.00025
    assert m.inference_duration._upper_bounds[-2] >= 2.5


def test_values_after_traffic(client: TestClient, app) -> None:
    reg = app.state.registry
    get = reg.get_sample_value
    rows = [[1, 2, 3], [-3, -2, -1], [0, 0, 0], [5, 5, 5]]
    r = client.post("/predict", json={"model": "bin", "instances": rows})
    preds = r.json()["predictions"]
    spam = sum(p["label"] == "spam" for p in preds)
    client.post("/predict", json={"model": "bin", "instances": [[1, 2]]})
    client.post(
        "/v2/models/bin/infer",
        json={
            "inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]
        },
    )
    mv = {"model": "bin", "version": "1"}
    rest = {**mv, "protocol": "rest"}
    assert get("verdict_inference_requests_total", {**rest, "outcome": "ok"}) == 2
    assert get("verdict_inference_requests_total", {**rest, "outcome": "invalid"}) == 1
    assert get("verdict_inference_requests_total", {**mv, "outcome": "ok", "protocol": "grpc"}) == 0
    assert get("verdict_predictions_total", {**mv, "label": "spam"}) == spam + (
        preds[0]["label"] == "spam"
    )
    assert get("verdict_predictions_total", {**mv, "label": "ham"}) == 5 - get(
        "verdict_predictions_total", {**mv, "label": "spam"}
    )
    assert get("verdict_prediction_score_count", mv) == 5
    assert get("verdict_inference_duration_seconds_count", {**mv, "stage": "queue"}) == 2
    assert get("verdict_inference_duration_seconds_count", {**mv, "stage": "compute"}) == 2
    assert get("verdict_batch_size_sum", mv) == 5
    assert get("verdict_queue_depth", mv) == 0
    info = {**mv, "provider": "CPUExecutionProvider", "threshold": "0.3"}
    assert get("verdict_model_info", info) == 1
    assert (
        get(
            "verdict_model_info",
            {"model": "img", "version": "1", "provider": "CPUExecutionProvider", "threshold": ""},
        )
        == 1
    )
    assert get("verdict_objective_ratio", {"model": "bin", "objective": "max_fnr"}) == 0.05
    assert get("verdict_objective_ratio", {"model": "bin", "objective": "max_fpr"}) is None
    assert get("verdict_outcome_cost", {"model": "bin", "outcome": "fn"}) == 20
    assert get("verdict_outcome_cost", {"model": "bin", "outcome": "fp"}) == 1
    ref = {**mv, "feature": "alpha", "bin": "1"}
    assert get("verdict_reference_bin_ratio", ref) == 0.3
    route = {"route": "/v2/models/{model}/infer", "method": "POST", "code": "200"}
    assert get("verdict_http_request_duration_seconds_count", route) == 1
    predict_422 = {"route": "/predict", "method": "POST", "code": "422"}
    assert get("verdict_http_request_duration_seconds_count", predict_422) == 1
    client.get("/some/random/path/abc123")
    assert (
        get(
            "verdict_http_request_duration_seconds_count",
            {"route": "unmatched", "method": "GET", "code": "404"},
        )
        == 1
    )


def test_no_label_can_hold_an_id_or_a_raw_value(client: TestClient, app) -> None:
    r = client.post("/predict", json={"model": "bin", "instances": [[123.456, 2, 3]]})
    pid = r.json()["predictions"][0]["prediction_id"]
    client.get("/v2/models/bin/versions/1")
    client.get(f"/v2/models/{pid}")
    for family in app.state.registry.collect():
        for sample in family.samples:
            assert set(sample.labels) <= BOUNDED_LABELS, (sample.name, sample.labels)
            for value in sample.labels.values():
                assert pid not in value and "123.456" not in value
                assert not value.startswith("p1.")
    text = client.get("/metrics").text
    assert pid not in text and "123.456" not in text
    assert 'route="/v2/models/{model}/versions/{version}"' in text
