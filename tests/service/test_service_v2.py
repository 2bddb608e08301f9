"""Open Inference Protocol v2 over the in-process client: metadata, health, infer, binary data."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from service.models.codecs import NUMERIC_DATATYPES
from service.monitoring.ids import PredictionIds
from tests.conftest import IMG_SHAPE, TEST_KEY, model_weights, reference_probabilities


def _infer_body(x: np.ndarray, datatype: str = "FP32", **extra) -> dict:
    return {
        "inputs": [
            {"name": "input", "shape": list(x.shape), "datatype": datatype, "data": x.tolist()}
        ],
        **extra,
    }


def _error(r, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error", "code"} and r.json()["code"] == code
    return r.json()["error"]


def test_server_metadata_health(client: TestClient) -> None:
    meta = client.get("/v2").json()
    assert meta["name"] == "verdict" and meta["version"]
    assert {"binary_tensor_data", "model_repository"} <= set(meta["extensions"])
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}


def test_model_metadata_and_ready_with_and_without_version(client: TestClient) -> None:
    for path in ("/v2/models/bin", "/v2/models/bin/versions/1"):
        meta = client.get(path).json()
        assert meta["name"] == "bin" and meta["versions"] == ["1"]
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3]}]
        assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}]
        assert meta["parameters"]["providers"] == ["CPUExecutionProvider"]
        assert meta["parameters"]["threshold"] == 0.3
    for path in ("/v2/models/img/ready", "/v2/models/img/versions/1/ready"):
        assert client.get(path).json() == {"name": "img", "ready": True}
    _error(client.get("/v2/models/nope"), 404, "model_not_found")
    _error(client.get("/v2/models/bin/versions/9"), 404, "version_not_found")
    _error(client.get("/v2/models/bin/versions/9/ready"), 404, "version_not_found")
    _error(client.get("/v2/models/nope/ready"), 404, "model_not_found")
    config = client.get("/v2/models/img/versions/1/config").json()
    assert config["input"][0]["dims"] == [-1, 1, 4, 4]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 1000
    _error(client.get("/v2/models/nope/config"), 404, "model_not_found")


@pytest.mark.parametrize("datatype", sorted(NUMERIC_DATATYPES))
def test_infer_accepts_every_numeric_datatype(client: TestClient, datatype: str) -> None:
    x = np.array([[1, 2, 3], [4, 0, 1]], dtype=NUMERIC_DATATYPES[datatype])
    r = client.post("/v2/models/bin/infer", json=_infer_body(x, datatype, id="abc"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "abc" and body["model_name"] == "bin" and body["model_version"] == "1"
    out = body["outputs"][0]
    assert (out["name"], out["datatype"], out["shape"]) == ("probabilities", "FP32", [2, 2])
    w, b = model_weights("bin")
    expected = reference_probabilities(x.astype(np.float32), w, b)
    np.testing.assert_allclose(np.array(out["data"]).reshape(2, 2), expected, atol=1e-6)


def test_infer_flat_or_nested_data_and_versions(client: TestClient) -> None:
    x = np.linspace(-1, 1, 32, dtype=np.float32).reshape(2, *IMG_SHAPE)
    nested = _infer_body(x)
    flat = _infer_body(x)
    flat["inputs"][0]["data"] = x.reshape(-1).tolist()
    a = client.post("/v2/models/img/infer", json=nested).json()
    c = client.post("/v2/models/img/versions/1/infer", json=flat).json()
    assert a["outputs"] == c["outputs"]
    w, b = model_weights("img")
    np.testing.assert_allclose(
        np.array(a["outputs"][0]["data"]).reshape(2, 3), reference_probabilities(x, w, b), atol=1e-6
    )


def test_infer_parameters_requested_outputs_and_prediction_ids(client: TestClient) -> None:
    x = np.array([[1, 2, 3]], np.float32)
    body = _infer_body(
        x,
        parameters={"prediction_ids": True, "custom": "x"},
        outputs=[{"name": "probabilities"}],
    )
    r = client.post("/v2/models/bin/infer", json=body).json()
    ids = r["parameters"]["prediction_ids"]
    ref = PredictionIds(TEST_KEY.encode()).parse(ids[0])
    assert ref is not None and ref.model == "bin"
    bad = _infer_body(x, outputs=[{"name": "logits"}])
    assert "no output 'logits'" in _error(
        client.post("/v2/models/bin/infer", json=bad), 400, "bad_request"
    )


def _binary_request(x: np.ndarray, datatype: str, **extra) -> tuple[bytes, dict[str, str]]:
    raw = x.astype(NUMERIC_DATATYPES[datatype]).tobytes()
    header = {
        "inputs": [
            {
                "name": "input",
                "shape": list(x.shape),
                "datatype": datatype,
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
        **extra,
    }
    head = orjson.dumps(header)
    return head + raw, {
        "Inference-Header-Content-Length": str(len(head)),
        "Content-Type": "application/octet-stream",
    }


@pytest.mark.parametrize("datatype", ["FP32", "FP16", "INT32", "UINT8"])
def test_binary_tensor_data_in_and_out(client: TestClient, datatype: str) -> None:
    x = np.array([[1, 2, 3], [3, 2, 1], [0, 0, 1]])
    body, headers = _binary_request(
        x, datatype, outputs=[{"name": "probabilities", "parameters": {"binary_data": True}}]
    )
    r = client.post("/v2/models/bin/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    n = int(r.headers["Inference-Header-Content-Length"])
    header = orjson.loads(r.content[:n])
    out = header["outputs"][0]
    assert out["parameters"]["binary_data_size"] == 3 * 2 * 4 and "data" not in out
    probs = np.frombuffer(r.content[n:], dtype="<f4").reshape(3, 2)
    w, b = model_weights("bin")
    np.testing.assert_allclose(
        probs, reference_probabilities(x.astype(np.float32), w, b), atol=1e-6
    )


def test_binary_input_json_output(client: TestClient) -> None:
    x = np.array([[1, 2, 3]], np.float32)
    body, headers = _binary_request(x, "FP32", outputs=[{"name": "probabilities"}])
    r = client.post("/v2/models/bin/infer", content=body, headers=headers)
    assert r.headers["content-type"] == "application/json"
    assert len(r.json()["outputs"][0]["data"]) == 2


def test_binary_output_for_every_output_by_request_parameter(client: TestClient) -> None:
    x = np.array([[1, 2, 3]], np.float32)
    r = client.post(
        "/v2/models/bin/infer", json=_infer_body(x, parameters={"binary_data_output": True})
    )
    n = int(r.headers["Inference-Header-Content-Length"])
    assert len(r.content) == n + 8


@pytest.mark.parametrize(
    ("mutate", "status", "code", "needle"),
    [
        (
            lambda b: b["inputs"][0].update(shape=[1, 4], data=[1, 2, 3, 4]),
            400,
            "bad_request",
            "[-1, 3]",
        ),
        (lambda b: b["inputs"][0].update(shape=[2, 3]), 400, "bad_request", "needs 6 values"),
        (lambda b: b["inputs"][0].update(datatype="BYTES"), 400, "bad_request", "FP32"),
        (lambda b: b["inputs"][0].update(datatype="BOOL"), 400, "bad_request", "datatype"),
        (lambda b: b["inputs"][0].update(name="x"), 400, "bad_request", "one input named 'input'"),
        # Every problem with an input tensor is a 400, as the protocol documents.
        (lambda b: b["inputs"][0].update(data=[1, None, 3]), 400, "bad_request", "numbers"),
        (lambda b: b["inputs"][0].update(data=[1, "2", 3]), 400, "bad_request", "numbers"),
        (
            lambda b: b["inputs"][0].update(data=[1, 1e300, 3], datatype="FP64"),
            400,
            "bad_request",
            "non-finite",
        ),
        (
            lambda b: b["inputs"][0].update(data=[1.5, 2, 3], datatype="INT32"),
            400,
            "bad_request",
            "integers",
        ),
        (
            lambda b: b["inputs"][0].update(data=[300, 2, 3], datatype="UINT8"),
            400,
            "bad_request",
            "range",
        ),
        (lambda b: b["inputs"][0].update(shape=[0, 3], data=[]), 400, "bad_request", "empty"),
        (lambda b: b["inputs"][0].update(shape="1,3"), 400, "bad_request", "shape"),
        (lambda b: b["inputs"][0].pop("data"), 400, "bad_request", "data"),
        (lambda b: b.update(inputs=[]), 400, "bad_request", "inputs"),
        (lambda b: b.update(id=5), 400, "bad_request", "id"),
        (lambda b: b.update(outputs={"name": "x"}), 400, "bad_request", "outputs"),
        # A field set to a value of the wrong type is refused, falsy or not.
        (lambda b: b.update(parameters=False), 400, "bad_request", "parameters"),
        (lambda b: b.update(parameters=0), 400, "bad_request", "parameters"),
        (lambda b: b.update(parameters=[]), 400, "bad_request", "parameters"),
        (lambda b: b.update(parameters="x"), 400, "bad_request", "parameters"),
        (lambda b: b.update(id=False), 400, "bad_request", "id"),
        (lambda b: b.update(id=0), 400, "bad_request", "id"),
        (lambda b: b.update(outputs=False), 400, "bad_request", "outputs"),
        (lambda b: b.update(outputs=0), 400, "bad_request", "outputs"),
        (lambda b: b["inputs"][0].update(parameters=[]), 400, "bad_request", "parameters"),
        (
            lambda b: b.update(outputs=[{"name": "probabilities", "parameters": 0}]),
            400,
            "bad_request",
            "parameters",
        ),
        (
            lambda b: b.update(inputs=[b["inputs"][0], b["inputs"][0]]),
            400,
            "bad_request",
            "one input",
        ),
    ],
)
def test_bad_infer_requests(client: TestClient, mutate, status, code, needle) -> None:
    body = _infer_body(np.array([[1, 2, 3]], np.float32))
    mutate(body)
    msg = _error(client.post("/v2/models/bin/infer", json=body), status, code)
    assert needle in msg


def test_null_fields_are_absent_and_empty_outputs_mean_every_output(client: TestClient) -> None:
    x = np.array([[1, 2, 3]], np.float32)
    omitted = client.post("/v2/models/bin/infer", json=_infer_body(x, outputs=None))
    assert omitted.status_code == 200
    assert [o["name"] for o in omitted.json()["outputs"]] == ["probabilities"]
    for nulls in ({"id": None}, {"parameters": None}, {"outputs": None}, {"outputs": []}):
        body = _infer_body(x)
        body.update(nulls)
        r = client.post("/v2/models/bin/infer", json=body)
        assert r.status_code == 200, (nulls, r.text)
        assert r.json()["outputs"] == omitted.json()["outputs"], nulls
    body = _infer_body(x, parameters={"binary_data_output": True})
    body["outputs"] = []
    r = client.post("/v2/models/bin/infer", json=body)
    assert r.status_code == 200 and "Inference-Header-Content-Length" in r.headers


def test_bad_binary_requests(client: TestClient) -> None:
    x = np.array([[1, 2, 3]], np.float32)
    body, headers = _binary_request(x, "FP32")
    for bad_len in ("abc", "-1", str(len(body) + 1)):
        h = dict(headers, **{"Inference-Header-Content-Length": bad_len})
        _error(client.post("/v2/models/bin/infer", content=body, headers=h), 400, "bad_request")
    msg = _error(
        client.post("/v2/models/bin/infer", content=body[:-4], headers=headers), 400, "bad_request"
    )
    assert "shorter than declared" in msg
    msg = _error(
        client.post("/v2/models/bin/infer", content=body + b"\0" * 4, headers=headers),
        400,
        "bad_request",
    )
    assert "add up" in msg
    nan = np.array([[1, np.nan, 3]], np.float32)
    body, headers = _binary_request(nan, "FP32")
    _error(client.post("/v2/models/bin/infer", content=body, headers=headers), 400, "bad_request")
    _error(client.post("/v2/models/nope/infer", json=_infer_body(x)), 404, "model_not_found")
    _error(
        client.post("/v2/models/bin/versions/2/infer", json=_infer_body(x)),
        404,
        "version_not_found",
    )
    _error(client.post("/v2/models/bin/infer", content=b"{"), 400, "bad_request")
    r = client.post(
        "/v2/models/bin/infer",
        content=orjson.dumps(_infer_body(x)),
        headers={"content-type": "text/csv"},
    )
    _error(r, 415, "unsupported_media_type")
