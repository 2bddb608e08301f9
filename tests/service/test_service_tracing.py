"""OpenTelemetry traces: a real server (verdict's own HTTP server and the gRPC server, in a
thread of the test process) recording into the SDK's in-memory exporter; a server process
exporting over OTLP/HTTP to a receiver in the test; off by default."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from service.http.app import create_app
from service.monitoring import tracing
from tests.conftest import TEST_KEY, LiveServer, make_settings
from tests.service.grpc_support import grpc_infer, held_run, in_thread
from tests.service.server_support import ThreadServer

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
PARENT_ID = 0xB7AD6B7169203331
TRACEPARENT = f"00-{TRACE_ID:032x}-{PARENT_ID:016x}-01"
INFER = {"inputs": [{"name": "input", "shape": [2, 3], "datatype": "FP32", "data": [1.0] * 6}]}
CHILDREN = {"decode", "queue wait", "model run", "encode"}


@pytest.fixture
def traced(model_repo: Path, tmp_path: Path) -> Iterator[tuple[ThreadServer, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    server = ThreadServer(create_app(make_settings(model_repo, tmp_path), tracer_provider=provider))
    yield server, exporter
    server.stop()


def _wait_for(exporter: InMemorySpanExporter, name: str, count: int = 1) -> list[ReadableSpan]:
    """The finished spans named `name` (a server span ends after its answer is written)."""
    deadline = time.monotonic() + 10
    while True:
        found = [s for s in exporter.get_finished_spans() if s.name == name]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.01)


def _children(exporter: InMemorySpanExporter, parent: ReadableSpan) -> dict[str, ReadableSpan]:
    assert parent.context is not None
    return {
        s.name: s
        for s in exporter.get_finished_spans()
        if s.parent is not None and s.parent.span_id == parent.context.span_id
    }


def _check_request_span(span: ReadableSpan, exporter: InMemorySpanExporter, rows: int) -> None:
    """Continues the caller's trace; decode, queue wait, model run and encode are its
    children, in order, within it; model, version and rows are its attributes."""
    assert span.kind is SpanKind.SERVER and span.context is not None
    assert span.context.trace_id == TRACE_ID
    assert span.parent is not None and span.parent.span_id == PARENT_ID and span.parent.is_remote
    attrs = span.attributes or {}
    assert (attrs["verdict.model"], attrs["verdict.model_version"], attrs["verdict.rows"]) == (
        "bin",
        1,
        rows,
    )
    children = _children(exporter, span)
    assert set(children) == CHILDREN
    order = [children[n] for n in ("decode", "queue wait", "model run", "encode")]
    assert all(c.context is not None and c.context.trace_id == TRACE_ID for c in order)
    starts = [c.start_time or 0 for c in order]
    assert starts == sorted(starts)
    assert (span.start_time or 0) <= starts[0] and (order[-1].end_time or 0) <= (span.end_time or 0)
    run = children["model run"].attributes or {}
    assert run["verdict.batch.rows"] >= rows and run["verdict.batch.requests"] >= 1


def test_a_rest_request_continues_the_callers_trace(traced: Any) -> None:
    server, exporter = traced
    r = httpx.post(
        f"{server.url}/v2/models/bin/infer", json=INFER, headers={"traceparent": TRACEPARENT}
    )
    assert r.status_code == 200
    (span,) = _wait_for(exporter, "POST /v2/models/{model}/infer")
    _check_request_span(span, exporter, rows=2)
    attrs = span.attributes or {}
    assert attrs["http.response.status_code"] == 200 and attrs["http.route"].endswith("/infer")
    assert attrs["verdict.request_id"] == r.headers["x-request-id"]
    assert span.status.status_code is StatusCode.UNSET


def test_a_grpc_request_continues_the_callers_trace(traced: Any) -> None:
    server, exporter = traced
    import numpy as np

    grpc_infer(server.grpc_port, np.ones((3, 3), np.float32), traceparent=TRACEPARENT)
    (span,) = _wait_for(exporter, "inference.GRPCInferenceService/ModelInfer")
    _check_request_span(span, exporter, rows=3)
    attrs = span.attributes or {}
    assert attrs["rpc.system"] == "grpc" and attrs["rpc.method"] == "ModelInfer"
    assert attrs["rpc.grpc.status_code"] == 0


def test_bad_input_is_a_client_error_not_a_failed_span(traced: Any) -> None:
    server, exporter = traced
    bad = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1.0] * 4}]}
    assert httpx.post(f"{server.url}/v2/models/bin/infer", json=bad).status_code == 400
    (span,) = _wait_for(exporter, "POST /v2/models/{model}/infer")
    assert (span.attributes or {})["http.response.status_code"] == 400
    assert span.status.status_code is StatusCode.UNSET
    assert span.parent is None  # no traceparent: a trace of its own
    assert set(_children(exporter, span)) == {"decode"}


def test_requests_merged_into_one_run_link_to_each_other(traced: Any) -> None:
    server, exporter = traced
    batcher = server.app.state.repository.resolve("bin").batcher
    with held_run(server) as (running, release):
        first, _ = in_thread(grpc_infer, server.grpc_port)
        assert running.wait(10)
        rest, _ = in_thread(lambda: httpx.post(f"{server.url}/v2/models/bin/infer", json=INFER))
        grpc_call, _ = in_thread(grpc_infer, server.grpc_port)
        for _ in range(1000):
            if len(batcher._queue) == 2:
                break
            time.sleep(0.005)
        assert len(batcher._queue) == 2
        release.set()
        for thread in (first, rest, grpc_call):
            thread.join(10)
    (rest_span,) = _wait_for(exporter, "POST /v2/models/{model}/infer")
    grpc_spans = _wait_for(exporter, "inference.GRPCInferenceService/ModelInfer", 2)
    runs = {
        s.name: s
        for s in grpc_spans
        if (_children(exporter, s)["model run"].attributes or {})["verdict.batch.requests"] == 2
    }
    (grpc_span,) = runs.values()
    rest_run = _children(exporter, rest_span)["model run"]
    grpc_run = _children(exporter, grpc_span)["model run"]
    assert (rest_run.attributes or {})["verdict.batch.rows"] == 3  # 2 REST rows + 1 gRPC row
    assert [link.context for link in rest_run.links] == [grpc_span.context]
    assert [link.context for link in grpc_run.links] == [rest_span.context]
    # One run: the same start, up to the clock readings of each request's submission (the
    # wall clock, then the monotonic one a few instructions later): a thread switch or a
    # preemption of the loop between the two shows here, 5 ms (the GIL's switch interval) or
    # more on a busy host, hence the 50 ms.
    assert abs((rest_run.start_time or 0) - (grpc_run.start_time or 0)) < 50_000_000


def test_traces_are_off_unless_the_environment_asks(
    model_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    app = create_app(make_settings(model_repo, tmp_path))
    assert app.state.tracing is None and app.edge.tracing is None
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    assert tracing.provider_from_env({}) is None
    assert tracing.provider_from_env({**endpoint, "OTEL_SDK_DISABLED": "true"}) is None
    assert tracing.provider_from_env({**endpoint, "OTEL_TRACES_EXPORTER": "none"}) is None
    provider = tracing.provider_from_env(endpoint)
    assert provider is not None
    assert provider.resource.attributes["service.name"] == "verdict"
    provider.shutdown()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "scoring")
    named = tracing.provider_from_env({"OTEL_TRACES_EXPORTER": "console"})
    assert named is not None and named.resource.attributes["service.name"] == "scoring"
    named.shutdown()
    with pytest.raises(tracing.TracingConfigError, match="zipkin"):
        tracing.provider_from_env({"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(tracing.TracingConfigError, match="http/json"):
        tracing.provider_from_env({**endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


def test_exporter_follows_the_otlp_protocol_variables() -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

    assert isinstance(tracing._exporter("otlp", {}), Http)
    assert isinstance(tracing._exporter("otlp", {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}), Grpc)
    both = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
    }
    assert isinstance(tracing._exporter("otlp", both), Http)


class _Receiver(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP trace receiver: keeps every exported span."""

    spans: ClassVar[list[Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                _Receiver.spans += [(resource_spans.resource, s) for s in scope_spans.spans]
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_a_server_process_exports_over_otlp_when_the_environment_says_so(
    live_repo: Path, tmp_path: Path
) -> None:
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    _Receiver.spans = []
    server = LiveServer(
        {
            "VERDICT_MODEL_REPOSITORY": str(live_repo),
            "VERDICT_FEEDBACK_DB": str(tmp_path / "feedback.sqlite3"),
            "VERDICT_PREDICTION_ID_KEY": TEST_KEY,
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.server_address[1]}",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            "OTEL_SERVICE_NAME": "verdict-under-test",
        }
    )
    try:
        server.wait_ready()
        r = httpx.post(
            f"{server.url}/predict",
            json={"model": "bin", "instances": [[1, 2, 3]]},
            headers={"traceparent": TRACEPARENT},
        )
        assert r.status_code == 200
        deadline = time.monotonic() + 10
        while not any(s.name == "POST /predict" for _, s in _Receiver.spans):
            assert time.monotonic() < deadline, "no span arrived over OTLP"
            time.sleep(0.02)
    finally:
        server.stop()
        receiver.shutdown()
    ((resource, span),) = [(r, s) for r, s in _Receiver.spans if s.name == "POST /predict"]
    assert span.trace_id == TRACE_ID.to_bytes(16, "big")
    assert span.parent_span_id == PARENT_ID.to_bytes(8, "big")
    names = {a.key: a.value.string_value for a in resource.attributes}
    assert names["service.name"] == "verdict-under-test"
    children = {s.name for _, s in _Receiver.spans if s.parent_span_id == span.span_id}
    assert children == CHILDREN
