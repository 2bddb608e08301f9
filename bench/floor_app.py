"""The HTTP floor: an ASGI app that reads the body and answers a fixed 1-row /predict answer.

It does no work at all, so wrk against it under the same uvicorn settings measures what
uvicorn, the loopback TCP round trip and wrk cost by themselves (docs/benchmarks.md):

    taskset -c 0 python -m uvicorn bench.floor_app:app --port 8001 --no-access-log \\
        --loop uvloop --http httptools --log-level warning
    taskset -c 1 wrk -t1 -c1 -d8s --latency -s bench/wrk/post.lua \\
        http://127.0.0.1:8001/predict -- <body file> application/json
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

BODY = orjson.dumps(
    {
        "model": "breast-cancer",
        "version": 1,
        "threshold": 0.5,
        "predictions": [
            {
                "prediction_id": "p2." + "x" * 70,
                "label": "malignant",
                "class_index": 1,
                "probabilities": {"benign": 0.1, "malignant": 0.9},
                "score": 0.9,
                "decision": "positive",
            }
        ],
    }
)
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
    send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
) -> None:
    """Drain the request body, answer BODY."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = bool(message.get("more_body", False))
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
