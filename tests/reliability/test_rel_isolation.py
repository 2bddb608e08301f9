"""Failure isolation under load: a model whose run fails on some inputs, merged with good
requests by a live server, fails only the requests whose own rows fail."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import (
    LiveServer,
    add_reference_sample,
    make_manifest,
    reference_probabilities,
    write_version,
)
from tests.reliability.rel_support import live_env

CLIENTS = 12
REQUESTS_PER_CLIENT = 40
BAD_EVERY = 7  # every 7th request of a client carries a row the model fails on
TRIGGER = 1e6  # the model fails on a batch where some row's first feature exceeds this
BALLAST = 256  # side of the matrices the model multiplies on every run, whatever its rows


def fragile_onnx(seed: int = 0) -> tuple[bytes, np.ndarray, np.ndarray]:
    """softmax(x @ W + b), plus a Gather whose index is out of range when any row of the
    batch has x[:, 0] > TRIGGER: ONNX Runtime fails the whole run (a value check that one
    request trips), and it adds 0 to the logits otherwise.

    Each run also multiplies two BALLAST-sized matrices (a few milliseconds, tied to the
    input so that it is not folded away, its result times 0): runs that slow are not made
    on the event loop, so requests queue behind a running batch and are merged on any host,
    fast or slow, rather than only when their arrivals happen to meet."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.normal(size=(3, 2)).astype(np.float32)
    b = rng.normal(size=(2,)).astype(np.float32)
    # Orthogonal, so that its powers stay finite (inf * 0 would be NaN).
    q = np.linalg.qr(rng.normal(size=(BALLAST, BALLAST)))[0].astype(np.float32)
    consts = [
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(b, "b"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array(TRIGGER, np.float32), "trigger"),
        numpy_helper.from_array(np.array(100.0, np.float32), "far"),
        numpy_helper.from_array(np.array(0.0, np.float32), "nothing"),
        numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "table"),
        numpy_helper.from_array(q, "Q"),
    ]
    nodes = [
        helper.make_node("MatMul", ["input", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["logits"]),
        helper.make_node("Slice", ["input", "zero", "one", "one"], ["first"]),
        helper.make_node("Greater", ["first", "trigger"], ["over"]),
        helper.make_node("Cast", ["over"], ["overf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMax", ["overf"], ["anyf"], keepdims=0),
        helper.make_node("Mul", ["anyf", "far"], ["indexf"]),
        helper.make_node("Cast", ["indexf"], ["index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "index"], ["picked"]),
        helper.make_node("Mul", ["picked", "nothing"], ["zeroed"]),
        helper.make_node("ReduceSum", ["input"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "nothing"], ["total0"]),
        helper.make_node("Add", ["Q", "total0"], ["q0"]),
        helper.make_node("MatMul", ["q0", "Q"], ["q1"]),
        helper.make_node("MatMul", ["q1", "Q"], ["q2"]),
        helper.make_node("ReduceSum", ["q2"], ["weight"], keepdims=0),
        helper.make_node("Mul", ["weight", "nothing"], ["ballast"]),
        helper.make_node("Add", ["zeroed", "ballast"], ["extra"]),
        helper.make_node("Add", ["logits", "extra"], ["checked"]),
        helper.make_node("Softmax", ["checked"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "fragile",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2])],
        consts,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString(), w, b


def test_the_fragile_model_fails_only_on_batches_holding_a_trigger_row() -> None:
    import onnxruntime as ort

    graph, w, b = fragile_onnx()
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    good = np.array([[0.5, 1.0, -1.0], [3.0, 0.0, 2.0]], np.float32)
    out = session.run(None, {"input": good})[0]
    np.testing.assert_allclose(out, reference_probabilities(good, w, b), atol=1e-6)
    with pytest.raises(Exception, match="out of"):
        session.run(None, {"input": np.vstack([good, [[2 * TRIGGER, 0, 0]]]).astype(np.float32)})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, Any]]:
    root = tmp_path_factory.mktemp("isolation") / "models"
    graph, w, b = fragile_onnx()
    manifest = make_manifest(
        "fragile",
        1,
        graph,
        task="binary",
        in_dims=(3,),
        classes=["no", "yes"],
        feature_names=["a", "b", "c"],
        threshold=0.5,
        positive_class="yes",
    )
    add_reference_sample(write_version(root, "fragile", 1, graph, manifest), w, b)
    srv = LiveServer(live_env(root, max_batch_rows=64, max_queue_delay_ms=2))
    srv.wait_ready()
    yield srv, (w, b)
    srv.stop()


def test_under_load_only_the_requests_that_fail_alone_get_the_error(
    server: tuple[LiveServer, Any],
) -> None:
    srv, (w, b) = server
    results: list[tuple[bool, np.ndarray, int, dict[str, Any]]] = []
    lock = threading.Lock()
    start = threading.Barrier(CLIENTS)

    def client(k: int) -> None:
        rng = np.random.default_rng(k)
        with httpx.Client(base_url=srv.url, timeout=30) as http:
            start.wait()
            for i in range(REQUESTS_PER_CLIENT):
                rows = rng.normal(size=(int(rng.integers(1, 4)), 3)).astype(np.float32)
                bad = i % BAD_EVERY == k % BAD_EVERY
                if bad:
                    rows[-1, 0] = 2 * TRIGGER
                r = http.post("/predict", json={"model": "fragile", "instances": rows.tolist()})
                with lock:
                    results.append((bad, rows, r.status_code, r.json()))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == CLIENTS * REQUESTS_PER_CLIENT
    bad_count = 0
    for bad, rows, status, body in results:
        if bad:
            bad_count += 1
            assert status == 500 and body["code"] == "inference_failed", body
            assert "on this request's rows" in body["error"]
            continue
        assert status == 200, body
        got = np.array(
            [[p["probabilities"]["no"], p["probabilities"]["yes"]] for p in body["predictions"]]
        )
        np.testing.assert_allclose(got, reference_probabilities(rows, w, b), atol=1e-5)
    log = srv.output()
    merged = [int(n) for n in re.findall(r"a merged run of (\d+) requests", log)]
    # Bad requests were merged with good ones under load (else this test shows nothing).
    assert merged and max(merged) > 1, log[-2000:]
    metrics = httpx.get(f"{srv.url}/metrics").text
    errors = _sample(metrics, 'verdict_inference_requests_total{model="fragile",outcome="error"')
    ok = _sample(metrics, 'verdict_inference_requests_total{model="fragile",outcome="ok"')
    assert errors == bad_count and ok == len(results) - bad_count


def _sample(text: str, prefix: str) -> float:
    """The value of the one series whose text starts with `prefix` (labels in sorted order)."""
    name, _, labels = prefix.partition("{")
    want = dict(re.findall(r'(\w+)="([^"]*)"', labels))
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(have.get(k) == v for k, v in want.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no series {prefix} in /metrics")
