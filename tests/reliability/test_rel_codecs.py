"""Property tests of the codecs through the app: each kind of bad input gets its documented 4xx.

docs/serving.md: 400 `bad_request` (malformed JSON or protocol fields, wrong input name, shape
or datatype, binary sizes that do not add up), 422 `invalid_input` (rows that do not fit:
count, names, non-finite values), 415 `unsupported_media_type`, 413 `payload_too_large`.
tests/service/test_service_fuzz.py checks "never a 5xx" on random bodies; these tests pin the
exact answer for each class of input.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import orjson
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from service.http.rest import HEADER_LENGTH
from service.models.codecs import NUMERIC_DATATYPES

FIXTURE = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
DATATYPES = sorted(NUMERIC_DATATYPES)
shapes = st.lists(st.integers(0, 5), min_size=0, max_size=4)
JSON_TYPE = {"Content-Type": "application/json"}


def _code(r: Any) -> tuple[int, str]:
    doc = r.json()
    assert set(doc) == {"error", "code"}, doc
    return r.status_code, doc["code"]


def _binary_infer(
    client: TestClient, shape: list[int], datatype: str, raw: bytes, declared: int
) -> Any:
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": shape,
                    "datatype": datatype,
                    "parameters": {"binary_data_size": declared},
                }
            ]
        }
    )
    return client.post(
        "/v2/models/bin/infer",
        content=header + raw,
        headers={HEADER_LENGTH: str(len(header)), "Content-Type": "application/octet-stream"},
    )


@FIXTURE
@given(shape=shapes, datatype=st.sampled_from(DATATYPES), delta=st.integers(-9, 9))
def test_binary_data_whose_size_does_not_match_gets_400(
    client: TestClient, shape: list[int], datatype: str, delta: int
) -> None:
    assume(delta != 0)
    need = math.prod(shape) * NUMERIC_DATATYPES[datatype].itemsize
    assume(need + delta >= 0)
    raw = b"\x01" * max(0, need + delta)
    # Declared right but sent wrong, or declared wrong: both are the client's fault.
    for declared in (need, need + delta):
        r = _binary_infer(client, shape, datatype, raw, declared)
        assert _code(r) == (400, "bad_request"), r.text


@FIXTURE
@given(shape=shapes, datatype=st.sampled_from(DATATYPES), seed=st.integers(0, 2**16))
def test_binary_tensors_of_any_shape_and_datatype_are_served_or_refused_with_400(
    client: TestClient, shape: list[int], datatype: str, seed: int
) -> None:
    dtype = NUMERIC_DATATYPES[datatype]
    values = np.random.default_rng(seed).integers(0, 100, size=math.prod(shape))
    raw = values.astype(dtype).tobytes()
    r = _binary_infer(client, shape, datatype, raw, len(raw))
    fits = len(shape) == 2 and shape[1] == 3 and shape[0] >= 1
    if fits:
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["shape"] == [shape[0], 2]
    else:
        assert _code(r) == (400, "bad_request"), r.text


@FIXTURE
@given(
    n=st.integers(1, 6),
    where=st.integers(0, 17),
    bad=st.sampled_from([math.nan, math.inf, -math.inf, 1e39, -3.5e38]),
    datatype=st.sampled_from(["FP32", "FP64"]),
)
def test_non_finite_or_float32_overflowing_values_are_refused(
    client: TestClient, n: int, where: int, bad: float, datatype: str
) -> None:
    x = np.zeros((n, 3), dtype=np.float64)
    x.flat[where % x.size] = bad
    with np.errstate(over="ignore"):  # 1e39 overflows float32 on purpose
        raw = x.astype(NUMERIC_DATATYPES[datatype]).tobytes()
    r = _binary_infer(client, [n, 3], datatype, raw, len(raw))
    assert _code(r) == (400, "bad_request"), r.text  # infer: 400, as the protocol documents
    # The same values as /predict JSON: huge numbers are 422; NaN/Infinity are not JSON (400).
    if math.isfinite(bad):
        rows = x.tolist()
        r = client.post("/predict", json={"model": "bin", "instances": rows})
        assert _code(r) == (422, "invalid_input"), r.text


@FIXTURE
@given(n=st.integers(1, 40), sign=st.sampled_from([1.0, -1.0]))
def test_rows_of_the_largest_float32_values_are_served(
    client: TestClient, n: int, sign: float
) -> None:
    """Finite values at the edge of float32 are valid input, however many add up."""
    edge = float(np.finfo(np.float32).max) * sign
    r = client.post("/predict", json={"model": "bin", "instances": [[edge] * 3] * n})
    assert r.status_code == 200, r.text


def _nest(depth: int, width: int, leaf: float) -> Any:
    value: Any = leaf
    for _ in range(depth):
        value = [value] * width
    return value


@FIXTURE
@given(depth=st.integers(0, 5), width=st.integers(0, 5), n=st.integers(0, 4))
def test_predict_rows_of_any_nesting_are_served_or_refused_with_422(
    client: TestClient, depth: int, width: int, n: int
) -> None:
    instances = [_nest(depth, width, 0.5)] * n
    for model, accepted in (
        ("bin", [(3,)]),
        ("img", [(16,), (4, 4), (1, 4, 4)]),
    ):
        r = client.post("/predict", json={"model": model, "instances": instances})
        shape = np.asarray(instances).shape[1:] if n else None
        if n and depth >= 1 and width >= 1 and shape in accepted:
            assert r.status_code == 200, r.text
            assert len(r.json()["predictions"]) == n
        else:
            assert _code(r) == (422, "invalid_input"), (model, instances, r.text)


@FIXTURE
@given(text=st.text(max_size=40))
def test_malformed_json_gets_400_everywhere(client: TestClient, text: str) -> None:
    try:
        json.loads(text)
        assume(False)
    except ValueError:
        pass
    body = text.encode()
    assert _code(client.post("/predict", content=body, headers=JSON_TYPE))[0] == 400
    r = client.post("/v2/models/bin/infer", content=body, headers=JSON_TYPE)
    assert _code(r) == (400, "bad_request")
    r = client.post("/feedback", content=body, headers=JSON_TYPE)
    assert _code(r) == (400, "invalid_json")


content_types = st.one_of(
    st.sampled_from(["text/plain", "application/xml", "multipart/form-data; boundary=x",
                     "application/x-www-form-urlencoded", "image/png", "application/jsonx"]),
    st.from_regex(r"[a-z]{1,8}/[a-z]{1,8}", fullmatch=True),
)  # fmt: skip


@FIXTURE
@given(ctype=content_types)
def test_wrong_content_types_get_415(client: TestClient, ctype: str) -> None:
    assume(ctype not in ("application/json", "application/octet-stream"))
    body = json.dumps({"model": "bin", "instances": [[1, 2, 3]]})
    headers = {"Content-Type": ctype}
    for path in ("/predict", "/feedback"):
        r = client.post(path, content=body, headers=headers)
        assert _code(r) == (415, "unsupported_media_type"), (path, r.text)
    r = client.post("/v2/models/bin/infer", content=body, headers=headers)
    assert _code(r) == (415, "unsupported_media_type")


def test_empty_batches_get_their_documented_answers(client: TestClient) -> None:
    r = client.post("/predict", json={"model": "bin", "instances": []})
    assert _code(r) == (422, "invalid_input")
    body = {"inputs": [{"name": "input", "shape": [0, 3], "datatype": "FP32", "data": []}]}
    r = client.post("/v2/models/bin/infer", json=body)
    assert _code(r) == (400, "bad_request")
    r = client.post("/feedback", json={"items": []})
    assert _code(r) == (422, "invalid_feedback")
    r = client.post("/predict", content=b"", headers=JSON_TYPE)
    assert _code(r) == (400, "bad_request")


@FIXTURE
@given(digits=st.integers(40, 400))  # past float32 (3.4e38)
def test_huge_json_numbers_are_refused_not_crashed_on(client: TestClient, digits: int) -> None:
    huge = "9" * digits
    r = client.post(
        "/predict", content=f'{{"model": "bin", "instances": [[{huge}, 1, 2]]}}', headers=JSON_TYPE
    )
    # Past float32 range (or past what the parser takes) it is refused, never served or 5xx.
    assert _code(r) in {(422, "invalid_input"), (400, "bad_request")}, r.text
    body = {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "INT64", "data": [1, 2]}]}
    text = json.dumps(body).replace("[1, 2]", f"[{huge}, 1, 2]")
    r = client.post("/v2/models/bin/infer", content=text, headers=JSON_TYPE)
    assert r.status_code in (400, 422) and _code(r)[1] in ("bad_request", "invalid_input")


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=6,
)


@FIXTURE
@given(datatype=json_values)
def test_a_datatype_of_any_json_type_gets_400(client: TestClient, datatype: Any) -> None:
    # Found by the schema fuzzing: a list as datatype was looked up in a dict (500).
    assume(datatype not in DATATYPES)
    body = {"inputs": [{"name": "input", "shape": [1, 3], "datatype": datatype, "data": [1, 2, 3]}]}
    r = client.post("/v2/models/bin/infer", json=body)
    assert _code(r) == (400, "bad_request"), r.text


def test_observed_at_past_float_range_is_invalid_not_a_crash() -> None:
    from service.dataplane.feedback import parse_time

    assert parse_time(10**400) is None
    assert parse_time(-(10**400)) is None


def test_unicode_digits_in_versions_are_404_or_422_not_500(
    client: TestClient, model_repo: Any
) -> None:
    # Found by the schema fuzzing: "¹".isdigit() is True but int("¹") raises.
    (model_repo / "bin" / "\u00b9").mkdir()  # a folder the repository scan must skip
    for version in ("\u00b9", "\u0663", "\uff11"):
        r = client.get(f"/v2/models/bin/versions/{version}")
        assert _code(r)[0] == 404, r.text
        r = client.post(f"/v2/models/bin/versions/{version}/infer", json={"inputs": []})
        assert r.status_code in (400, 404), r.text
        r = client.get("/models/bin/card", params={"version": version})
        assert r.status_code in (400, 404) and "error" in r.json(), r.text
    assert client.app.state.repository.scan()["bin"] == [1]  # type: ignore[attr-defined]
    assert client.get("/v2/health/ready").status_code == 200
