"""A bounded closed-loop HTTP/1.1 load client (asyncio, keep-alive), run as its own process.

    python rel_burst.py PORT PATH BODY_FILE CONNECTIONS SECONDS

Each connection sends POST PATH with the body again and again for SECONDS; one JSON summary
goes to stdout: answers by status, client-side failures (timeouts, resets), whether every 503
carried Retry-After and the error shape, and latency percentiles per status.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

REQUEST_TIMEOUT_S = 10.0


async def _one(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, dict[str, str], bytes]:
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def _worker(port: int, request: bytes, until: float, out: dict[str, Any]) -> None:
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    while time.monotonic() < until:
        started = time.monotonic()
        try:
            if conn is None:
                conn = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), REQUEST_TIMEOUT_S
                )
            status, headers, body = await asyncio.wait_for(
                _one(conn[0], conn[1], request), REQUEST_TIMEOUT_S
            )
        except TimeoutError:
            out["timeouts"] += 1
            conn = None
            continue
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            out["errors"][type(exc).__name__] = out["errors"].get(type(exc).__name__, 0) + 1
            conn = None
            await asyncio.sleep(0.01)
            continue
        elapsed = time.monotonic() - started
        out["status"][str(status)] = out["status"].get(str(status), 0) + 1
        out["latency"].setdefault(str(status), []).append(elapsed)
        if status == 503:
            doc = json.loads(body)
            if "retry-after" not in headers or set(doc) != {"error", "code"}:
                out["bad_503"] += 1
        if headers.get("connection") == "close" and conn is not None:
            conn[1].close()
            conn = None
    if conn is not None:
        conn[1].close()


def _percentiles(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
    return {"p50_ms": pick(0.5) * 1000, "p99_ms": pick(0.99) * 1000, "max_ms": values[-1] * 1000}


async def main(port: int, path: str, body: bytes, connections: int, seconds: float) -> None:
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    out: dict[str, Any] = {"status": {}, "timeouts": 0, "errors": {}, "bad_503": 0, "latency": {}}
    until = time.monotonic() + seconds
    await asyncio.gather(*(_worker(port, request, until, out) for _ in range(connections)))
    out["latency"] = {k: _percentiles(v) for k, v in out["latency"].items()}
    print(json.dumps(out))


if __name__ == "__main__":
    port, path, body_file, conns, secs = sys.argv[1:6]
    asyncio.run(main(int(port), path, Path(body_file).read_bytes(), int(conns), float(secs)))
