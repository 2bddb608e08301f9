"""The gRPC edge in a server thread of the test process: overload and unavailability as
status codes with retry hints, admission, and gRPC and REST requests merged into one run."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from tritonclient.utils import InferenceServerException

from service.http.app import create_app
from tests.conftest import make_settings
from tests.service.grpc_support import ROW, grpc_infer, held_run, in_thread
from tests.service.server_support import ThreadServer


@pytest.fixture
def server(model_repo: Any, tmp_path: Any) -> Iterator[ThreadServer]:
    app = create_app(make_settings(model_repo, tmp_path, max_inflight_requests=2))
    s = ThreadServer(app)
    yield s
    s.stop()


def _refused(port: int) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        grpc_infer(port)
    return info.value


def _trailing(exc: InferenceServerException) -> dict[str, str]:
    return dict(exc.get_response().trailing_metadata() or ())  # type: ignore[attr-defined]


def test_a_full_queue_is_resource_exhausted_with_a_retry_hint(server: ThreadServer) -> None:
    mv = server.app.state.repository.resolve("bin")
    mv.batcher._queued_rows = mv.batcher.max_queue_rows
    try:
        err = _refused(server.grpc_port)
    finally:
        mv.batcher._queued_rows = 0
    assert err.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert err.message().startswith("model bin-1 is overloaded")
    get = server.app.state.registry.get_sample_value
    labels = {"model": "bin", "version": "1", "outcome": "overloaded", "protocol": "grpc"}
    assert get("verdict_inference_requests_total", labels) == 1
    assert get("verdict_inference_requests_total", {**labels, "protocol": "rest"}) == 0


def test_a_model_being_unloaded_is_unavailable_with_a_retry_hint(server: ThreadServer) -> None:
    mv = server.app.state.repository.resolve("bin")
    mv.batcher._closed = True
    try:
        err = _refused(server.grpc_port)
    finally:
        mv.batcher._closed = False
    assert err.status() == "StatusCode.UNAVAILABLE"
    assert err.message() == "model bin-1 is being unloaded"


def test_retry_hint_and_error_code_are_trailing_metadata(server: ThreadServer) -> None:
    import grpc

    from service.grpc.generated import inference_pb2 as pb
    from service.grpc.generated import inference_pb2_grpc as pb_grpc

    mv = server.app.state.repository.resolve("bin")
    mv.batcher._queued_rows = mv.batcher.max_queue_rows
    request = pb.ModelInferRequest(model_name="bin")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 3])
    request.raw_input_contents.append(ROW.tobytes())
    try:
        with (
            grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel,
            pytest.raises(grpc.RpcError) as info,
        ):
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    finally:
        mv.batcher._queued_rows = 0
    trailing = dict(info.value.trailing_metadata() or ())
    assert trailing == {"verdict-error-code": "overloaded", "retry-after": "1"}


def test_inference_past_max_inflight_requests_is_refused(server: ThreadServer) -> None:
    port = server.grpc_port
    with held_run(server) as (running, release):
        first, first_out = in_thread(grpc_infer, port)
        assert running.wait(10)
        second, second_out = in_thread(grpc_infer, port)  # queued behind the held run
        batcher = server.app.state.repository.resolve("bin").batcher
        for _ in range(1000):  # until the second waits behind the held run: two in flight
            if batcher._queue:
                break
            time.sleep(0.005)
        err = _refused(port)
        assert err.message() == "the server is handling 2 requests already; retry shortly"
        assert err.status() == "StatusCode.RESOURCE_EXHAUSTED"
        release.set()
        first.join(10)
        second.join(10)
    assert [o.as_numpy("probabilities").shape for o in first_out + second_out] == [(1, 2)] * 2
    # Health and metadata are not inference: never refused.
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200


def test_a_grpc_and_a_rest_request_merge_into_one_model_run(server: ThreadServer) -> None:
    batcher = server.app.state.repository.resolve("bin").batcher
    body = {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    with held_run(server) as (running, release):
        first, _ = in_thread(grpc_infer, server.grpc_port)
        assert running.wait(10)
        runs_before = batcher.batches_run
        rest, rest_out = in_thread(
            lambda: httpx.post(f"{server.url}/v2/models/bin/infer", json=body, timeout=10)
        )
        grpc_call, grpc_out = in_thread(grpc_infer, server.grpc_port)
        for _ in range(1000):  # both wait in the queue behind the held run
            if len(batcher._queue) == 2:
                break
            time.sleep(0.005)
        assert len(batcher._queue) == 2
        release.set()
        for thread in (first, rest, grpc_call):
            thread.join(10)
    assert rest_out[0].status_code == 200
    assert grpc_out[0].as_numpy("probabilities").shape == (1, 2)
    assert batcher.batches_run - runs_before == 2  # the held run, then one for both
