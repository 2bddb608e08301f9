"""The edge asks the framework (FastAPI) for the routes it answers: an ASGI call with the
body the edge has already read, whose answer comes back to the edge to be written."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from service.http.messages import Answer, Headers

if TYPE_CHECKING:
    from service.http.edge import Exchange

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


async def ask_framework(framework: ASGIApp, ex: Exchange, body: bytes) -> Answer:
    """What the framework answers to `ex`, collected whole."""
    outer = ex.scope or {}  # what an ASGI server said of the connection, if one brought it
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": outer.get("http_version", "1.1"),
        "method": ex.method,
        "scheme": outer.get("scheme", "http"),
        "path": ex.path,
        "raw_path": ex.raw_path,
        "query_string": ex.query,
        "root_path": outer.get("root_path", ""),
        "headers": ex.headers.raw,
        "client": outer.get("client"),
        "server": outer.get("server"),
        "state": dict(outer.get("state") or {}),
    }
    answered = asyncio.get_running_loop().create_future()
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        # Nothing more comes: "disconnect" once the answer is complete (shielded: a listener
        # that is cancelled must not cancel the answer's end).
        await asyncio.shield(answered)
        return {"type": "http.disconnect"}

    status = 500
    content_type = b"application/octet-stream"
    headers: Headers = []
    chunks: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, content_type
        if message["type"] == "http.response.start":
            status = message["status"]
            for name, value in message.get("headers", ()):
                name = name.lower()
                if name == b"content-type":
                    content_type = value
                elif name != b"content-length":  # the edge writes its own
                    headers.append((name, value))
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    try:
        await framework(scope, receive, send)
    finally:
        if not answered.done():
            answered.set_result(None)
    return Answer(status, b"".join(chunks), content_type, headers)
