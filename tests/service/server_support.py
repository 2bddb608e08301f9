"""verdict's own HTTP server in a thread of the test process (so tests can look inside), and
raw-socket helpers for what HTTP clients hide: pipelining, HTTP/1.0, `Expect`, stalls."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from typing import Any

import httpx

from tests.reliability.rel_support import parse_head

ROW = [0.1, -0.2, 0.3]
PREDICT = json.dumps({"model": "bin", "instances": [ROW]}).encode()
INFER = json.dumps(
    {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": ROW}]}
).encode()


class ThreadServer:
    """`service.http.processes.serve` of `app` on 127.0.0.1 (a free port), in a thread."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.settings = app.state.settings.model_copy(
            update={"host": "127.0.0.1", "port": 0, "grpc_port": 0}
        )
        self._ready = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.server: Any = None
        self.port = 0
        self.grpc_port = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self._ready.wait(30), "the server did not start"
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while httpx.get(f"{self.url}/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "models did not load"
            time.sleep(0.02)

    def _run(self) -> None:
        from service.http.processes import _run_loop, serve

        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()

            def ready(server: Any, listener: Any) -> None:
                self.server = server
                self.port = listener.sockets[0].getsockname()[1]
                self.grpc_port = self.app.state.grpc_port
                self._ready.set()

            await serve(self.settings, app=self.app, stop=self._stop, ready=ready)

        _run_loop(main())

    def call(self, fn: Any, *args: Any) -> None:
        """Run `fn(*args)` on the server's loop."""
        assert self.loop is not None
        self.loop.call_soon_threadsafe(fn, *args)

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(30)


def request(method: str, path: str, body: bytes = b"", **headers: str) -> bytes:
    """One HTTP/1.1 request's bytes; header names are given with _ for -."""
    lines = [f"{method} {path} HTTP/1.1", "Host: x"]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Reader:
    """Answers read off one socket, in order, however the bytes arrive."""

    def __init__(self, sock: socket.socket, timeout_s: float = 10.0) -> None:
        self.sock = sock
        self.buf = b""
        sock.settimeout(timeout_s)

    def _more(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def closed(self) -> bool:
        """True once the server has closed the connection (nothing more to read)."""
        try:
            return not self.buf and not self._more()
        except ConnectionResetError:
            return True

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
