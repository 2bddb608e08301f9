"""Whatever the body, bad input never produces a 5xx."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.logs import JsonFormatter, configure_logging

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=5),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)
predict_bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["bin", "img", "nope", 3, None]),
        "version": st.one_of(st.integers(-2, 3), st.text(max_size=3), st.none()),
        "instances": values,
    },
)
infer_bodies = st.fixed_dictionaries(
    {
        "inputs": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "name": st.sampled_from(["input", "x", 1]),
                    "shape": st.one_of(st.lists(st.integers(-1, 4), max_size=4), values),
                    "datatype": st.sampled_from(["FP32", "INT8", "UINT64", "FP16", "BYTES", "X"]),
                    "data": values,
                    "parameters": st.one_of(
                        values, st.fixed_dictionaries({"binary_data_size": st.integers(-1, 64)})
                    ),
                },
            ),
            max_size=2,
        )
    },
    optional={"id": values, "outputs": values, "parameters": values},
)


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=predict_bodies)
def test_predict_never_answers_5xx_to_bad_input(client: TestClient, body: dict) -> None:
    r = client.post("/predict", content=json.dumps(body))
    assert r.status_code < 500, r.text
    if r.status_code != 200:
        assert set(r.json()) == {"error", "code"}


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=infer_bodies, model=st.sampled_from(["bin", "img"]))
def test_infer_never_answers_5xx_to_bad_input(client: TestClient, body: dict, model: str) -> None:
    r = client.post(f"/v2/models/{model}/infer", content=json.dumps(body))
    assert r.status_code < 500, r.text
    if r.status_code != 200:
        assert set(r.json()) == {"error", "code"}


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=st.binary(max_size=64), header=st.one_of(st.none(), st.integers(-2, 80).map(str)))
def test_raw_bytes_never_answer_5xx(client: TestClient, raw: bytes, header: str | None) -> None:
    headers = {} if header is None else {"Inference-Header-Content-Length": header}
    assert client.post("/v2/models/bin/infer", content=raw, headers=headers).status_code < 500
    assert client.post("/predict", content=raw).status_code < 500


def test_json_logs_are_one_object_per_line() -> None:
    import logging

    record = logging.LogRecord("service.x", logging.INFO, __file__, 1, "loaded %s", ("bin",), None)
    doc = json.loads(JsonFormatter().format(record))
    assert doc["message"] == "loaded bin" and doc["level"] == "INFO"
    config = configure_logging(True)
    assert config["formatters"]["default"]["()"].endswith("JsonFormatter")
