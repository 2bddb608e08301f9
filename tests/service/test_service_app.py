"""The app as a whole: OpenAPI documentation, error mapping, overload and inference faults."""

from __future__ import annotations

import numpy as np
from fastapi.testclient import TestClient

from service.http.app import create_app

PATHS = {
    "/predict": {"post"},
    "/v2": {"get"},
    "/v2/health/live": {"get"},
    "/v2/health/ready": {"get"},
    "/v2/models/{model}": {"get"},
    "/v2/models/{model}/versions/{version}": {"get"},
    "/v2/models/{model}/ready": {"get"},
    "/v2/models/{model}/versions/{version}/ready": {"get"},
    "/v2/models/{model}/config": {"get"},
    "/v2/models/{model}/versions/{version}/config": {"get"},
    "/v2/models/{model}/infer": {"post"},
    "/v2/models/{model}/versions/{version}/infer": {"post"},
    "/v2/repository/index": {"get", "post"},
    "/v2/repository/models/{model}/load": {"post"},
    "/v2/repository/models/{model}/unload": {"post"},
    "/metrics": {"get"},
}


def _has_example(node: object) -> bool:
    if isinstance(node, dict):
        if "example" in node or "examples" in node:
            return True
        return any(_has_example(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_example(v) for v in node)
    return False


def test_openapi_documents_every_endpoint_with_examples(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    components = spec.get("components", {}).get("schemas", {})
    for path, methods in PATHS.items():
        assert path in spec["paths"], path
        assert set(spec["paths"][path]) >= methods, path
        for method in methods:
            op = spec["paths"][path][method]
            assert op.get("summary") and op.get("description"), (path, method)
            refs = [components.get(ref.rsplit("/", 1)[1]) for ref in _refs(op)]
            assert _has_example(op) or any(_has_example(r) for r in refs), (path, method)
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["examples"]
    infer = spec["paths"]["/v2/models/{model}/infer"]["post"]["requestBody"]["content"]
    assert "application/octet-stream" in infer
    assert client.get("/docs").status_code == 200


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        out = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        for v in node.values():
            out += _refs(v)
        return out
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_framework_validation_errors_use_the_error_shape(settings) -> None:
    app = create_app(settings)

    @app.get("/typed/{n}")
    async def typed(n: int) -> dict[str, int]:
        return {"n": n}

    with TestClient(app) as c:
        r = c.get("/typed/abc")
        assert r.status_code == 422
        assert r.json()["code"] == "validation_error" and "n" in r.json()["error"]


def test_overload_is_503_with_retry_after(client: TestClient, app) -> None:
    mv = app.state.repository.resolve("bin")
    mv.batcher._queued_rows = mv.batcher.max_queue_rows  # the queue is full
    try:
        r = client.post("/predict", json={"model": "bin", "instances": [[1, 2, 3]]})
    finally:
        mv.batcher._queued_rows = 0
    assert r.status_code == 503 and r.json()["code"] == "overloaded"
    assert int(r.headers["Retry-After"]) >= 1
    get = app.state.registry.get_sample_value
    labels = {"model": "bin", "version": "1", "outcome": "overloaded", "protocol": "rest"}
    assert get("verdict_inference_requests_total", labels) == 1


def test_an_inference_fault_is_reported_not_hung(client: TestClient, app) -> None:
    mv = app.state.repository.resolve("bin")
    original = mv.batcher._run

    def broken(x: np.ndarray) -> np.ndarray:
        raise RuntimeError("device lost")

    mv.batcher._run = broken
    try:
        r = client.post("/predict", json={"model": "bin", "instances": [[1, 2, 3]]})
    finally:
        mv.batcher._run = original
    assert r.status_code == 500 and r.json()["code"] == "inference_failed"
    assert (
        client.post("/predict", json={"model": "bin", "instances": [[1, 2, 3]]}).status_code == 200
    )


def test_cors_is_off_by_default_and_on_when_configured(model_repo, tmp_path) -> None:
    from tests.conftest import make_settings, wait_ready

    headers = {"Origin": "https://ui.example", "Access-Control-Request-Method": "POST"}
    with TestClient(create_app(make_settings(model_repo, tmp_path))) as c:
        wait_ready(c)
        assert "access-control-allow-origin" not in c.options("/predict", headers=headers).headers
    app = create_app(make_settings(model_repo, tmp_path, cors_origins="https://ui.example"))
    with TestClient(app) as c:
        wait_ready(c)
        r = c.options("/predict", headers=headers)
        assert r.headers["access-control-allow-origin"] == "https://ui.example"


def test_prediction_observers_see_inputs_and_decisions(client: TestClient, app) -> None:
    seen = []
    observers = app.state.dataplane.inference.observers
    observers.append(
        lambda mv, x, classes, scores: seen.append((mv.name, x.shape, classes.tolist()))
    )
    observers.append(lambda *a: 1 / 0)  # a broken observer is logged only
    r = client.post("/predict", json={"model": "bin", "instances": [[1, 2, 3], [0, 0, 0]]})
    assert r.status_code == 200
    assert seen == [("bin", (2, 3), [p["class_index"] for p in r.json()["predictions"]])]


def test_a_refusal_for_overload_carries_the_cors_headers(model_repo, tmp_path) -> None:
    from tests.conftest import make_settings, wait_ready

    settings = make_settings(model_repo, tmp_path, cors_origins="https://ui.example")
    app = create_app(settings)
    with TestClient(app) as c:
        wait_ready(c)
        app.edge.active = app.edge.limit  # as if the limit's worth of POSTs were running
        body = {"model": "bin", "instances": [[1, 2, 3]]}
        r = c.post("/predict", json=body, headers={"Origin": "https://ui.example"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.headers["access-control-allow-origin"] == "https://ui.example"
        other = c.post("/predict", json=body, headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        app.edge.active = 0
        assert c.post("/predict", json=body).status_code == 200
