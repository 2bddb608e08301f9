"""verdict's HTTP/1.1 server (service.http.server) with the edge behind it, on 127.0.0.1.

The server runs in a thread of this process (`ThreadServer`), so tests can see inside;
raw sockets send what HTTP clients hide; stock clients (urllib, requests, httpx) read
what they would.
"""

from __future__ import annotations

import json
import logging
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests

from tests.conftest import make_settings, wait_until, write_binary, write_image
from tests.service.server_support import (
    INFER,
    PREDICT,
    Reader,
    ThreadServer,
    connect,
    request,
)

READ_TIMEOUT_S = 1.0
MAX_BODY = 4096


def _server(tmp: Path, **overrides: Any) -> ThreadServer:
    from service.http.app import create_app

    write_binary(tmp / "models")
    write_image(tmp / "models")
    options = {"read_timeout_s": READ_TIMEOUT_S, "max_body_bytes": MAX_BODY, **overrides}
    return ThreadServer(create_app(make_settings(tmp / "models", tmp, **options)))


def _all_closed(server: ThreadServer) -> bool:
    """The server has seen every connection close and finished every request."""
    return not server.server.connections and server.app.edge.active == 0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    srv = _server(tmp_path_factory.mktemp("server"))
    yield srv
    srv.stop()


def test_every_request_goes_through_the_edge_never_the_asgi_face(
    server: ThreadServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import service.http.app as app_module

    async def asgi(*args: Any) -> None:
        raise AssertionError("a request went through the ASGI face")

    monkeypatch.setattr(app_module, "asgi_request", asgi)
    with httpx.Client(base_url=server.url) as http:
        r = http.post("/predict", content=PREDICT, headers={"X-Request-ID": "edge-1"})
        assert r.status_code == 200, r.text
        assert r.headers["x-request-id"] == "edge-1"
        assert r.headers["content-type"] == "application/json"
        assert len(r.json()["predictions"]) == 1
        for path in (
            "/v2/models/bin/infer",
            "/v2/models/bin/versions/1/infer",
            "/v2/models/bi%6E/infer",  # percent-encoded: the same route
        ):
            r = http.post(path, content=INFER)
            assert r.status_code == 200, (path, r.text)
            assert r.json()["model_name"] == "bin"
        for path in ("/v2/models/bin", "/v2/health/ready", "/metrics", "/openapi.json"):
            assert http.get(path).status_code == 200, path


def test_pipelined_requests_are_answered_in_order(server: ThreadServer) -> None:
    feedback = json.dumps({"items": []}).encode()
    sent = [
        (request("POST", "/predict", PREDICT, X_Request_ID="r0"), 200),
        (request("GET", "/v2/health/ready", X_Request_ID="r1"), 200),
        (request("POST", "/v2/models/bin/infer", INFER, X_Request_ID="r2"), 200),
        (request("POST", "/predict", b"{nope", X_Request_ID="r3"), 400),
        (request("POST", "/feedback", feedback, X_Request_ID="r4"), 422),
        (request("POST", "/v2/models/nope/infer", INFER, X_Request_ID="r5"), 404),
        (request("GET", "/nowhere", X_Request_ID="r6"), 404),
        (request("GET", "/predict", X_Request_ID="r7"), 405),
        (request("POST", "/predict", PREDICT, X_Request_ID="r8"), 200),
    ]
    with connect(server) as sock:
        sock.sendall(b"".join(data for data, _ in sent))  # all at once, before any answer
        reader = Reader(sock)
        got = [reader.response() for _ in sent]
    assert [h["x-request-id"] for _, h, _ in got] == [f"r{i}" for i in range(len(sent))]
    assert [status for status, _, _ in got] == [status for _, status in sent]
    for status, _, body in got:
        if status >= 400:
            assert set(json.loads(body)) == {"error", "code"}


def test_a_head_request_is_answered_with_headers_only(server: ThreadServer) -> None:
    with connect(server) as sock:
        reader = Reader(sock)
        sock.sendall(request("HEAD", "/v2/health/ready") + request("GET", "/v2/health/live"))
        reader.sock.settimeout(5)
        while b"live" not in reader.buf:
            assert reader._more()
        head, _, rest = reader.buf.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 ") and b"content-length: " in head
        assert rest.startswith(b"HTTP/1.1 200")  # no body between the two answers


def test_many_requests_on_one_connection_alternate_both_ways(server: ThreadServer) -> None:
    with connect(server) as sock:
        reader = Reader(sock)
        for i in range(60):
            if i % 3 == 0:
                sock.sendall(request("GET", "/v2/health/live"))
            else:
                sock.sendall(request("POST", "/predict", PREDICT))
            status, headers, body = reader.response()
            assert status == 200, body
            assert "date" in headers and headers["x-request-id"]


@pytest.mark.parametrize(
    "head",
    ["POST /predict HTTP/1.0\r\n", "POST /predict HTTP/1.1\r\nConnection: close\r\n"],
    ids=["http-1.0", "connection-close"],
)
def test_the_connection_closes_after_the_answer_when_asked(server: ThreadServer, head: str) -> None:
    data = f"{head}Host: x\r\nContent-Length: {len(PREDICT)}\r\n\r\n".encode() + PREDICT
    with connect(server) as sock:
        sock.sendall(data)
        reader = Reader(sock)
        status, headers, _ = reader.response()
        assert status == 200
        assert headers.get("connection") == "close"
        assert reader.closed()


def test_expect_100_continue_is_answered(server: ThreadServer) -> None:
    with connect(server) as sock:
        head = request("POST", "/predict", b"", Expect="100-continue")
        sock.sendall(head.replace(b"Content-Length: 0", f"Content-Length: {len(PREDICT)}".encode()))
        reader = Reader(sock)
        status, _, _ = reader.response()
        assert status == 100
        sock.sendall(PREDICT)
        status, _, body = reader.response()
        assert status == 200, body
    # Refused before the body: the final answer instead of 100, and the body is not awaited.
    with connect(server) as sock:
        head = request("POST", "/predict", b"", Expect="100-continue")
        sock.sendall(head.replace(b"Content-Length: 0", b"Content-Length: 999999"))
        reader = Reader(sock, timeout_s=READ_TIMEOUT_S / 2)
        status, _, body = reader.response()
        assert status == 413 and json.loads(body)["code"] == "payload_too_large"
        assert reader.closed()


def test_chunked_and_slow_bodies_are_read_whole(server: ThreadServer) -> None:
    with connect(server) as sock:
        reader = Reader(sock)
        head = b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        sock.sendall(head)
        for part in (PREDICT[:10], PREDICT[10:]):
            time.sleep(0.05)
            sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        sock.sendall(b"0\r\n\r\n")
        status, _, body = reader.response()
        assert status == 200, body
        # Content-Length, the body in three pieces with pauses shorter than the deadline.
        sock.sendall(request("POST", "/predict", PREDICT)[: -len(PREDICT)])
        for part in (PREDICT[:5], PREDICT[5:20], PREDICT[20:]):
            time.sleep(0.1)
            sock.sendall(part)
        status, _, body = reader.response()
        assert status == 200, body
        assert len(json.loads(body)["predictions"]) == 1


def test_a_stalled_body_gets_408_and_the_connection_closes(server: ThreadServer) -> None:
    with connect(server) as sock:
        sock.sendall(request("POST", "/predict", PREDICT, X_Request_ID="slow")[:-5])
        reader = Reader(sock)
        status, headers, body = reader.response()  # after read_timeout_s
        assert status == 408 and headers["x-request-id"] == "slow"
        assert json.loads(body)["code"] == "request_timeout"
        assert reader.closed()
    assert httpx.post(f"{server.url}/predict", content=PREDICT).status_code == 200


@pytest.mark.parametrize(
    "head",
    [b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Len", b"GET /v2/hea", b"P"],
    ids=["mid-headers", "mid-request-line", "one-byte"],
)
def test_stalled_headers_get_408_and_the_connection_closes(
    server: ThreadServer, head: bytes
) -> None:
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(head)
        reader = Reader(sock)
        status, _, body = reader.response()
        assert status == 408 and json.loads(body)["code"] == "request_timeout"
        assert time.monotonic() - started >= READ_TIMEOUT_S * 0.9
        assert reader.closed()


def test_a_stalled_body_behind_another_request_gets_408_too(server: ThreadServer) -> None:
    with connect(server) as sock:
        first = request("POST", "/predict", PREDICT, X_Request_ID="first")
        stalled = request("POST", "/predict", PREDICT, X_Request_ID="stalled")[:-5]
        sock.sendall(first + stalled)  # the second waits behind the first, then stalls
        reader = Reader(sock)
        assert reader.response()[0] == 200
        status, headers, _ = reader.response()
        assert status == 408 and headers["x-request-id"] == "stalled"
        assert reader.closed()
    assert server.app.edge.active == 0


def test_over_the_limit_bodies_get_413_and_the_connection_goes_on(server: ThreadServer) -> None:
    big = b"[" + b"1," * 4000 + b"1]"
    with connect(server) as sock:
        reader = Reader(sock)
        # Declared too big: refused before the body; the body sent anyway is read and dropped.
        sock.sendall(request("POST", "/predict", big))
        status, _, body = reader.response()
        assert status == 413 and json.loads(body)["code"] == "payload_too_large"
        # Chunked, found too big only while it streams.
        sock.sendall(b"POST /v2/models/bin/infer HTTP/1.1\r\nHost: x\r\n")
        sock.sendall(b"Transfer-Encoding: chunked\r\n\r\n")
        sock.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(big), big))
        status, _, body = reader.response()
        assert status == 413
        # The same connection still answers.
        sock.sendall(request("POST", "/predict", PREDICT))
        assert reader.response()[0] == 200


def test_stock_clients_read_the_413_of_a_large_body_they_send_whole(server: ThreadServer) -> None:
    """urllib, requests and httpx send the whole body before they read: the server reads and
    drops it after its early 413, so they read the answer instead of a reset connection."""
    big = b"[" + b"1," * (1 << 20) + b"1]"  # 2 MB, far past the socket buffers
    headers = {"Content-Type": "application/json"}
    req = urllib.request.Request(f"{server.url}/predict", data=big, headers=headers)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=10)
    assert refused.value.code == 413
    assert json.loads(refused.value.read())["code"] == "payload_too_large"
    r = requests.post(f"{server.url}/predict", data=big, headers=headers, timeout=10)
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large"
    r2 = httpx.post(f"{server.url}/predict", content=big, headers=headers, timeout=10)
    assert r2.status_code == 413 and r2.json()["code"] == "payload_too_large"


def test_malformed_or_oversized_heads_get_the_error_shape_and_a_close(server: ThreadServer) -> None:
    cases = [
        (b"NOT HTTP AT ALL\r\n\r\n", 400, "bad_request"),
        (b"GET /v2 HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400, "bad_request"),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 431, "headers_too_large"),
        (
            b"GET /v2 HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200)) + b"\r\n",
            431,
            "headers_too_large",
        ),
    ]
    for data, status, code in cases:
        with connect(server) as sock:
            sock.sendall(data)
            reader = Reader(sock)
            got, headers, body = reader.response()
            assert (got, json.loads(body)["code"]) == (status, code), data[:40]
            assert headers["x-request-id"] and headers.get("connection") == "close"
            assert reader.closed()


def test_an_idle_keep_alive_connection_is_closed(
    server: ThreadServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import service.http.server as server_module

    # The idle time runs from the answer's writing, a little before `started`: the half of it
    # left as margin covers this thread being held that long (a busy host) before reading.
    monkeypatch.setattr(server_module, "KEEP_ALIVE_S", 1.0)
    with connect(server) as sock:
        reader = Reader(sock)
        sock.sendall(request("GET", "/v2/health/live"))
        assert reader.response()[0] == 200
        started = time.monotonic()
        assert reader.closed()
        assert 0.5 <= time.monotonic() - started < 10


def test_clients_that_leave_mid_request_harm_nothing(
    server: ThreadServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    for i in range(30):
        with connect(server) as sock:
            data = request("POST", "/predict", PREDICT)
            sock.sendall(data if i % 2 else data[:-3])  # whole, or cut short
    with connect(server) as sock:  # pipelined, then gone before reading any answer
        sock.sendall(request("POST", "/predict", PREDICT) * 5)
    r = httpx.post(f"{server.url}/predict", content=PREDICT)
    assert r.status_code == 200
    # Accepted after the gone clients' connections, so those are the server's by now: once
    # it has seen each close and ended each request, whatever it logged about them is in.
    wait_until(lambda: _all_closed(server), 10.0, "the gone clients' connections to close")
    assert not [rec for rec in caplog.records if rec.levelno >= logging.WARNING]


def test_every_request_is_counted(server: ThreadServer) -> None:
    def count(route: str, status: str) -> float:
        text = httpx.get(f"{server.url}/metrics").text
        for line in text.splitlines():
            if (
                line.startswith("verdict_http_request_duration_seconds_count{")
                and f'route="{route}"' in line
                and f'code="{status}"' in line
            ):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = [count("/predict", "200"), count("/predict", "415"), count("unmatched", "400")]
    for _ in range(3):
        assert httpx.post(f"{server.url}/predict", content=PREDICT).status_code == 200
    r = httpx.post(f"{server.url}/predict", content=PREDICT, headers={"content-type": "text/x"})
    assert r.status_code == 415
    with connect(server) as sock:
        sock.sendall(b"NOT HTTP\r\n\r\n")
        assert Reader(sock).response()[0] == 400
    after = [count("/predict", "200"), count("/predict", "415"), count("unmatched", "400")]
    assert after == [before[0] + 3, before[1] + 1, before[2] + 1]


def test_python_dash_m_service_serves_with_verdicts_server(monkeypatch: pytest.MonkeyPatch) -> None:
    import service.__main__ as entry
    import service.http.processes as processes
    from service.settings import Settings

    seen: list[Any] = []
    monkeypatch.setattr(processes, "serve_one", seen.append)
    entry.main(["--port", "0", "--host", "127.0.0.3"])
    assert len(seen) == 1 and isinstance(seen[0], Settings)
    assert (seen[0].host, seen[0].port) == ("127.0.0.3", 0)


def test_a_long_pipeline_of_early_answers_is_answered_whole(server: ThreadServer) -> None:
    refused = request("POST", "/predict", b"", Content_Type="text/plain")
    with connect(server) as sock:
        sock.sendall(request("POST", "/predict", PREDICT) + refused * 400)
        reader = Reader(sock)
        statuses = [reader.response()[0] for _ in range(401)]
    assert statuses == [200] + [415] * 400
    assert server.app.edge.active == 0


def test_the_admission_limit_refuses_with_503_while_a_request_is_in(tmp_path: Path) -> None:
    srv = _server(tmp_path, max_inflight_requests=1)
    try:
        with connect(srv) as first, connect(srv) as second:
            first.sendall(request("POST", "/predict", PREDICT)[:-4])  # admitted, body pending
            wait_until(lambda: srv.app.edge.active == 1, 10.0, "the first request's admission")
            second.sendall(request("POST", "/predict", PREDICT, X_Request_ID="late"))
            status, headers, body = Reader(second).response()
            assert status == 503 and headers["retry-after"] == "1"
            assert headers["x-request-id"] == "late"
            assert json.loads(body)["code"] == "overloaded"
            first.sendall(PREDICT[-4:])
            assert Reader(first).response()[0] == 200
        assert srv.app.edge.active == 0
        text = httpx.get(f"{srv.url}/metrics").text
        refused = 'verdict_http_request_duration_seconds_count{code="503",method="POST",'
        assert refused + 'route="/predict"} 1.0' in text
    finally:
        srv.stop()


def test_a_client_that_does_not_read_is_not_read_from_either(server: ThreadServer) -> None:
    """Answers nobody reads fill the socket; then the server stops reading requests (without
    that, its write buffer would grow without bound)."""
    refused = request("POST", "/predict", b"", Content_Type="text/plain")
    burst = refused * 200
    sent = 0
    stalled = False
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        sock.setblocking(False)
        deadline = time.monotonic() + 8
        last_progress = time.monotonic()
        while time.monotonic() < deadline:
            try:
                sent += sock.send(burst)
                last_progress = time.monotonic()
            except BlockingIOError:
                if time.monotonic() - last_progress > 1.0:  # not read from for a second
                    stalled = True
                    break
                time.sleep(0.01)
    assert stalled, f"the server read {sent} bytes of requests whose answers nobody read"
    wait_until(lambda: _all_closed(server), 10.0, "the closed connection to close there too")


def test_shutdown_drains_and_then_cancels_a_request_that_waits(tmp_path: Path) -> None:
    """A request still waiting when the drain time is over is cancelled: its admission
    returns, its connection closes, and the server stops."""
    srv = _server(tmp_path, drain_seconds=0.5)
    edge = srv.app.edge
    with connect(srv) as sock:
        sock.sendall(request("GET", "/v2/health/live"))
        assert Reader(sock).response()[0] == 200
        batcher = srv.app.state.repository.resolve("bin").batcher
        release = []

        def stuck(x: Any) -> Any:  # a model run that does not end before the drain does
            time.sleep(1.5)
            release.append(1)
            return x[:, :2]

        batcher._run = stuck
        batcher.estimate_s = lambda rows: 1.0  # on the model's thread
        sock.sendall(request("POST", "/predict", PREDICT))
        deadline = time.monotonic() + 5
        while edge.active != 1:
            assert time.monotonic() < deadline, "the request was not admitted"
            time.sleep(0.01)
        started = time.monotonic()
        srv.stop()
        assert time.monotonic() - started < 5
        assert edge.active == 0
        assert not srv.thread.is_alive()
        assert Reader(sock).closed()


def test_cors_answers_through_the_server(tmp_path: Path) -> None:
    srv = _server(tmp_path, cors_origins="https://ui.example")
    try:
        preflight = {"Origin": "https://ui.example", "Access-Control-Request-Method": "POST"}
        r = httpx.options(f"{srv.url}/predict", headers=preflight)
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://ui.example"
        r = httpx.post(
            f"{srv.url}/predict", content=PREDICT, headers={"Origin": "https://ui.example"}
        )
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://ui.example"
        r = httpx.post(f"{srv.url}/predict", content=PREDICT, headers={"Origin": "https://evil.x"})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    finally:
        srv.stop()
