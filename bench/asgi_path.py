"""The app's own cost per request, in-process: no socket, no kernel, no load generator.

Calls `create_app()` (both bundled models, metrics on, every default) with a fixed
`POST /predict` or binary v2 infer body on uvloop, and prints microseconds per request.
`--via asgi` (the default) calls the app's ASGI face; `--via server` feeds the request's bytes
to verdict's own HTTP server (`service.http.server`, what `python -m service` serves with)
over an in-memory transport, so the HTTP parsing and the answer's bytes are counted too;
`--via uvicorn` does the same through uvicorn's stock httptools protocol and its ASGI cycle
(the app served by `uvicorn service.http.app:create_app --factory`). Cheap models already
run on the event loop (`service.models.batching.INLINE_BUDGET_S`); `--inline` also replaces
the hand-over to the model's dedicated thread, where runs over the inline budget go, by a
direct call (measurement only: what the thread hand-over costs).
Run under `taskset -c 0` so the loop and the ONNX Runtime thread share one core, as in
the benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import tempfile
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import numpy as np

from bench.payloads import load_rows

ROOT = Path(__file__).resolve().parent.parent


def _body(model: str, rows: int, protocol: str) -> tuple[str, bytes, list[tuple[bytes, bytes]]]:
    picked = load_rows(model)[:rows]
    if protocol == "json":
        body = json.dumps({"model": model, "instances": picked}).encode()
        return "/predict", body, [(b"content-type", b"application/json")]
    manifest = json.loads(next((ROOT / "models" / model).glob("*/manifest.json")).read_text())
    dims = manifest["input"]["shape"][1:]
    x = np.asarray(picked, dtype=np.float32).reshape([rows, *dims]).tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": manifest["input"]["name"],
                    "shape": [rows, *dims],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(x)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    headers = [
        (b"content-type", b"application/octet-stream"),
        (b"inference-header-content-length", str(len(header)).encode()),
    ]
    return f"/v2/models/{model}/infer", header + x, headers


def _run_inline() -> None:
    """Replace the ORT thread hand-over by a direct call (measurement only)."""
    from service.models import runtime

    def submit(self: Any, fn: Any, *args: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(fn(*args))
        return future

    runtime.OrtThread.submit = submit  # type: ignore[method-assign]


async def _measure(path: str, body: bytes, headers: list[tuple[bytes, bytes]], n: int) -> float:
    from service.http.app import create_app, lifespan

    app = create_app()
    async with lifespan(app):
        deadline = time.monotonic() + 30
        while not app.state.repository.ready and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", b"127.0.0.1"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 2),
        }
        status: list[int] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        async def one() -> None:
            await app(dict(scope, state={}), receive, send)

        for _ in range(max(200, n // 10)):
            await one()
        if set(status) != {200}:
            raise SystemExit(f"asgi_path: the app answered {sorted(set(status))}")
        start = time.perf_counter()
        for _ in range(n):
            await one()
        return (time.perf_counter() - start) / n


class _Transport:
    """Just enough of an asyncio transport for the protocol: writes go to `on_write`."""

    def __init__(self, on_write: Any) -> None:
        self.on_write = on_write

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name in ("peername", "sockname") else default

    def writelines(self, chunks: list[bytes]) -> None:
        self.on_write(b"".join(chunks))

    def write(self, data: bytes) -> None:
        self.on_write(data)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _measure_protocol(
    path: str, body: bytes, headers: list[tuple[bytes, bytes]], n: int, stock: bool = False
) -> float:
    from service.http.app import create_app, lifespan

    app = create_app()
    if stock:
        import uvicorn
        from uvicorn.server import ServerState

        config = uvicorn.Config(app, http="httptools", log_level="warning")
        config.load()
    async with lifespan(app):
        deadline = time.monotonic() + 30
        while not app.state.repository.ready and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        lines = [f"POST {path} HTTP/1.1", "host: 127.0.0.1", f"content-length: {len(body)}"]
        lines += [f"{k.decode()}: {v.decode()}" for k, v in headers]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
        loop = asyncio.get_running_loop()
        answered: list[asyncio.Future[bytes]] = []

        received = bytearray()

        def on_write(data: bytes) -> None:
            # uvicorn's own protocol writes the head and the body apart: wait for the body.
            received.extend(data)
            head, sep, rest = bytes(received).partition(b"\r\n\r\n")
            length = re.search(rb"content-length: (\d+)", head, re.I)
            if sep and length and len(rest) >= int(length.group(1)):
                answered[0].set_result(bytes(received))
                received.clear()

        if stock:
            protocol: Any = config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=ServerState(), app_state={}, _loop=loop
            )
        else:
            from service.http.server import HttpServer

            protocol = HttpServer(app.edge, app.state.settings.read_timeout_s).connection()
        protocol.connection_made(_Transport(on_write))

        async def one() -> bytes:
            answered[:] = [loop.create_future()]
            protocol.data_received(request)
            return await answered[0]

        for _ in range(max(200, n // 10)):
            first = await one()
        if not first.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"asgi_path: the server answered {first[:200]!r}")
        start = time.perf_counter()
        for _ in range(n):
            await one()
        return (time.perf_counter() - start) / n


def main() -> None:
    """Print microseconds per request of the in-process app for one body."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="breast-cancer")
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--protocol", choices=("json", "v2-binary"), default="json")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--inline", action="store_true")
    parser.add_argument("--via", choices=("asgi", "server", "uvicorn"), default="asgi")
    args = parser.parse_args()
    if args.inline:
        _run_inline()
    os.environ["VERDICT_MODEL_REPOSITORY"] = str(ROOT / "models")
    path, body, headers = _body(args.model, args.rows, args.protocol)
    import uvloop

    with tempfile.TemporaryDirectory() as scratch:
        os.environ["VERDICT_FEEDBACK_URL"] = f"sqlite:///{Path(scratch) / 'feedback.sqlite3'}"
        if args.via == "asgi":
            run = _measure(path, body, headers, args.requests)
        else:
            run = _measure_protocol(path, body, headers, args.requests, args.via == "uvicorn")
        per_request = uvloop.run(run)
    mode = "thread hand-over inline (measurement only)" if args.inline else "product path"
    print(
        f"{args.model} {args.rows} row(s) {args.protocol} via {args.via}, {mode}: "
        f"{per_request * 1e6:.1f} us/request in-process"
    )


if __name__ == "__main__":
    main()
