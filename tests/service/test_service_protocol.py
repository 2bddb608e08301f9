"""service.protocol: the predict routes answered by the HTTP protocol, without ASGI.

A real uvicorn server on 127.0.0.1 (in a thread of this process, so the tests can see which
way a request went), raw sockets for what HTTP clients hide: pipelining, HTTP/1.0,
`Expect: 100-continue`, chunked and slow bodies, clients that leave.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import make_settings, write_binary, write_image
from tests.reliability.rel_support import parse_head

ROW = [0.1, -0.2, 0.3]
PREDICT = json.dumps({"model": "bin", "instances": [ROW]}).encode()
INFER = json.dumps(
    {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": ROW}]}
).encode()


class ThreadServer:
    """uvicorn with verdict's protocol, serving `app` from a thread."""

    def __init__(self, app: Any, **options: Any) -> None:
        import uvicorn

        from service.protocol import HTTP_PROTOCOL

        self.app = app
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, http=HTTP_PROTOCOL, log_level="warning", **options
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "no server"
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        while httpx.get(f"{self.url}/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "models did not load"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    from service.app import create_app

    tmp = tmp_path_factory.mktemp("protocol")
    write_binary(tmp / "models")
    write_image(tmp / "models")
    settings = make_settings(tmp / "models", tmp, body_timeout_s=1.0, max_body_bytes=4096)
    srv = ThreadServer(create_app(settings))
    yield srv
    srv.stop()


def request(method: str, path: str, body: bytes = b"", **headers: str) -> bytes:
    """One HTTP/1.1 request's bytes; header names are given with _ for -."""
    lines = [f"{method} {path} HTTP/1.1", "Host: x"]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Reader:
    """Answers read off one socket, in order, however the bytes arrive."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        sock.settimeout(10)

    def _more(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def closed(self) -> bool:
        """True once the server has closed the connection (nothing more to read)."""
        return not self.buf and not self._more()

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            assert self._more(), f"closed before an answer: {self.buf!r}"
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        status, headers = parse_head(head)
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            assert self._more(), "closed mid-answer"
            rest = self.buf.partition(b"\r\n\r\n")[2]
        self.buf = rest[length:]
        return status, headers, rest[:length]


def connect(server: ThreadServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def test_predict_routes_do_not_go_through_asgi(
    server: ThreadServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    front = server.app.front

    async def asgi_answer(*args: Any) -> int:
        raise AssertionError("a predict request went through ASGI")

    monkeypatch.setattr(front, "_answer", asgi_answer)
    with httpx.Client(base_url=server.url) as http:
        r = http.post("/predict", content=PREDICT, headers={"X-Request-ID": "hot-1"})
        assert r.status_code == 200, r.text
        assert r.headers["x-request-id"] == "hot-1"
        assert r.headers["content-type"] == "application/json"
        assert len(r.json()["predictions"]) == 1
        for path in ("/v2/models/bin/infer", "/v2/models/bin/versions/1/infer"):
            r = http.post(path, content=INFER)
            assert r.status_code == 200, r.text
            assert r.json()["model_name"] == "bin"
        # The rest still goes to the framework, which does not know the hot routes' function.
        assert http.get("/v2/models/bin").status_code == 200
    monkeypatch.undo()
    # A percent-encoded path is left to ASGI, which answers it the same way.
    with httpx.Client(base_url=server.url) as http:
        monkeypatch.setattr(front, "_answer", asgi_answer)
        r = http.post("/v2/models/bi%6E/infer", content=INFER)
        assert r.status_code == 500  # it went through ASGI, whose front door now refuses


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
        (request("POST", "/predict", PREDICT, X_Request_ID="r7"), 200),
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
        status, headers, body = reader.response()  # after body_timeout_s (1 s)
        assert status == 408 and headers["x-request-id"] == "slow"
        assert json.loads(body)["code"] == "request_timeout"
        assert reader.closed()
    assert httpx.post(f"{server.url}/predict", content=PREDICT).status_code == 200


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
    assert server.app.front.active == 0


def test_over_the_limit_bodies_get_413_and_the_connection_goes_on(server: ThreadServer) -> None:
    big = b"[" + b"1," * 4000 + b"1]"
    with connect(server) as sock:
        reader = Reader(sock)
        # Declared too big: refused before the body; the body sent anyway is skipped.
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
    time.sleep(0.2)
    r = httpx.post(f"{server.url}/predict", content=PREDICT)
    assert r.status_code == 200
    assert not [rec for rec in caplog.records if rec.levelno >= logging.WARNING]
    assert server.app.front.active == 0


def test_hot_requests_are_counted_like_the_others(server: ThreadServer) -> None:
    def count(status: str) -> float:
        text = httpx.get(f"{server.url}/metrics").text
        for line in text.splitlines():
            if (
                line.startswith("verdict_http_request_duration_seconds_count{")
                and 'route="/predict"' in line
                and f'code="{status}"' in line
            ):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before_ok, before_bad = count("200"), count("415")
    for _ in range(3):
        assert httpx.post(f"{server.url}/predict", content=PREDICT).status_code == 200
    r = httpx.post(f"{server.url}/predict", content=PREDICT, headers={"content-type": "text/x"})
    assert r.status_code == 415
    assert count("200") == before_ok + 3
    assert count("415") == before_bad + 1


def test_python_dash_m_service_serves_with_this_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    import service.__main__ as entry
    from service.protocol import VerdictHttpProtocol

    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(entry, "serve_one", seen.append)
    entry.main(["--port", "0"])
    config = uvicorn.Config(**seen[0])
    config.load()
    assert config.http_protocol_class is VerdictHttpProtocol  # not uvicorn's, as a fallback


def test_a_long_pipeline_of_early_answers_is_answered_whole(server: ThreadServer) -> None:
    refused = request("POST", "/predict", b"", Content_Type="text/plain")
    with connect(server) as sock:
        sock.sendall(request("POST", "/predict", PREDICT) + refused * 400)
        reader = Reader(sock)
        statuses = [reader.response()[0] for _ in range(401)]
    assert statuses == [200] + [415] * 400
    assert server.app.front.active == 0


def test_the_admission_limit_refuses_with_503_while_a_request_is_in(tmp_path: Path) -> None:
    from service.app import create_app

    write_binary(tmp_path / "models")
    settings = make_settings(tmp_path / "models", tmp_path, max_inflight_requests=1)
    srv = ThreadServer(create_app(settings))
    try:
        with connect(srv) as first, connect(srv) as second:
            first.sendall(request("POST", "/predict", PREDICT)[:-4])  # admitted, body pending
            time.sleep(0.2)
            second.sendall(request("POST", "/predict", PREDICT, X_Request_ID="late"))
            status, headers, body = Reader(second).response()
            assert status == 503 and headers["retry-after"] == "1"
            assert headers["x-request-id"] == "late"
            assert json.loads(body)["code"] == "overloaded"
            first.sendall(PREDICT[-4:])
            assert Reader(first).response()[0] == 200
        assert srv.app.front.active == 0
        text = httpx.get(f"{srv.url}/metrics").text
        refused = 'verdict_http_request_duration_seconds_count{code="503",method="POST",'
        assert refused + 'route="/predict"} 1.0' in text
    finally:
        srv.stop()


def test_a_client_that_does_not_read_is_not_read_from_either(server: ThreadServer) -> None:
    """Answers nobody reads fill the socket; then the server stops reading requests, as
    uvicorn's ASGI cycle does (without that, its write buffer would grow without bound)."""
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
    time.sleep(0.2)
    assert server.app.front.active == 0
