"""Body size, rows per request and body deadlines on a live server, with raw sockets."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, write_binary, write_image
from tests.reliability.rel_support import (
    BIN_ROW,
    is_error_shape,
    live_env,
    port_of,
    raw_request,
    read_response,
)

MAX_BODY = 64 * 1024
MAX_ROWS = 100
READ_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("limits") / "models"
    write_binary(root)
    write_image(root)
    env = live_env(
        root,
        max_body_bytes=MAX_BODY,
        max_rows_per_request=MAX_ROWS,
        read_timeout_s=READ_TIMEOUT_S,
    )
    srv = LiveServer(env)
    srv.wait_ready()
    yield srv
    srv.stop()


def _predict_ok(url: str) -> None:
    r = httpx.post(f"{url}/predict", json={"model": "bin", "instances": [BIN_ROW]}, timeout=10)
    assert r.status_code == 200, r.text


def test_declared_oversize_body_gets_413_before_any_body_is_sent(server: LiveServer) -> None:
    head = f"""POST /predict HTTP/1.1
Host: x
Content-Type: application/json
Content-Length: {50 * MAX_BODY}"""
    with raw_request(port_of(server.url), head) as sock:
        status, _, body = read_response(sock)  # answered with no body byte sent
    assert status == 413 and is_error_shape(body) and body["code"] == "payload_too_large"


@pytest.mark.parametrize("path", ["/predict", "/v2/models/bin/infer", "/feedback"])
def test_streamed_oversize_body_gets_413_while_still_streaming(
    server: LiveServer, path: str
) -> None:
    head = f"""POST {path} HTTP/1.1
Host: x
Content-Type: application/json
Transfer-Encoding: chunked"""
    chunk = b"[" + b"1," * 4000  # 8 KB of a JSON array, never finished
    with raw_request(port_of(server.url), head) as sock:
        sent = 0
        for _ in range(3 * MAX_BODY // len(chunk)):
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:
                break  # the server answered and closed: fine
            sent += len(chunk)
        # The body never ends (no final chunk); the answer comes anyway.
        status, _, body = read_response(sock)
    assert status == 413 and is_error_shape(body), body
    assert sent <= 3 * MAX_BODY


def test_rows_per_request_are_limited_on_both_apis(server: LiveServer) -> None:
    rows = [BIN_ROW] * (MAX_ROWS + 1)
    r = httpx.post(f"{server.url}/predict", json={"model": "bin", "instances": rows}, timeout=10)
    assert r.status_code == 422 and is_error_shape(r.json()) and "too many rows" in r.text
    body = {
        "inputs": [
            {
                "name": "input",
                "shape": [MAX_ROWS + 1, 3],
                "datatype": "FP32",
                "data": [v for row in rows for v in row],
            }
        ]
    }
    r = httpx.post(f"{server.url}/v2/models/bin/infer", json=body, timeout=10)
    # The Open Inference Protocol answers 400 for anything wrong with a request.
    assert r.status_code == 400 and is_error_shape(r.json()) and "too many rows" in r.text
    ok = httpx.post(
        f"{server.url}/predict", json={"model": "bin", "instances": rows[:MAX_ROWS]}, timeout=10
    )
    assert ok.status_code == 200


@pytest.mark.parametrize("path", ["/predict", "/v2/models/bin/infer", "/feedback"])
def test_a_stalled_body_gets_408_and_does_not_hold_the_server(
    server: LiveServer, path: str
) -> None:
    body = json.dumps({"model": "bin", "instances": [BIN_ROW]}).encode()
    head = f"""POST {path} HTTP/1.1
Host: x
Content-Type: application/json
Content-Length: {len(body)}"""
    with raw_request(port_of(server.url), head, body[:5]) as sock:
        started = time.monotonic()
        _predict_ok(server.url)  # others are served while this body stalls
        status, headers, doc = read_response(sock, timeout_s=READ_TIMEOUT_S + 15)
        waited = time.monotonic() - started
        assert status == 408 and is_error_shape(doc) and doc["code"] == "request_timeout"
        assert headers.get("connection") == "close"
        # ... and the server hangs up on the half-sent request.
        sock.settimeout(5)
        assert sock.recv(1024) == b""
    assert waited >= READ_TIMEOUT_S * 0.5  # it was the deadline that answered
    _predict_ok(server.url)


def test_a_truncated_body_is_dropped_without_a_server_error(server: LiveServer) -> None:
    body = json.dumps({"model": "bin", "instances": [BIN_ROW] * 10}).encode()
    head = f"""POST /predict HTTP/1.1
Host: x
Content-Type: application/json
Content-Length: {len(body)}"""
    for _ in range(5):
        sock = raw_request(port_of(server.url), head, body[: len(body) // 2])
        sock.shutdown(socket.SHUT_WR)  # the client gives up half way
        sock.close()
    time.sleep(0.5)
    _predict_ok(server.url)
    log = server.output()
    assert "Traceback" not in log and "unhandled" not in log, log[-3000:]


def test_stalled_request_heads_do_not_block_other_clients(server: LiveServer) -> None:
    port = port_of(server.url)
    stalled = []
    try:
        for _ in range(50):  # slowloris: heads that never end
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Le")
            stalled.append(sock)
        _predict_ok(server.url)
        assert httpx.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 200
    finally:
        for sock in stalled:
            sock.close()


def test_limits_are_settings(tmp_path: Path) -> None:
    from service.settings import Settings

    fields = Settings.model_fields
    for name in ("max_body_bytes", "max_rows_per_request", "read_timeout_s"):
        assert name in fields
