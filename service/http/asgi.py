"""The edge's ASGI face: one HTTP request from any ASGI server (uvicorn, Starlette's
TestClient) through the same steps as a request of verdict's own server."""

from __future__ import annotations

import asyncio
from typing import Any

from service.errors import ClientDisconnectedError
from service.http.edge import Edge, Exchange, Scope


async def asgi_request(edge: Edge, scope: Scope, receive: Any, send: Any) -> None:
    """Open, read, answer and count one ASGI HTTP request."""
    raw_path = scope.get("raw_path") or scope["path"].encode()
    ex = edge.open(scope["method"], raw_path, scope.get("query_string", b""), scope["headers"])
    ex.scope = scope
    status = 500
    try:
        if ex.answer is None:
            await _read(edge, ex, receive)
        answer = await edge.respond(ex)
        status = answer.status
        await send(
            {"type": "http.response.start", "status": status, "headers": edge.head(ex, answer)}
        )
        await send({"type": "http.response.body", "body": answer.body})
    finally:
        edge.finish(ex, status)


async def _read(edge: Edge, ex: Exchange, receive: Any) -> None:
    """Feed the body from ASGI messages until it is in, refused, or past its deadline (the
    exchange's own deadline, which cancels this reading task when it passes)."""
    task = asyncio.current_task()
    assert task is not None
    ex.on_expire = task.cancel
    ex.arm(asyncio.get_running_loop())
    try:
        while ex.answer is None:
            message = await receive()
            if message["type"] == "http.disconnect":
                ex.body = None
                ex.answer = edge.error_answer(
                    ClientDisconnectedError("the client closed the connection mid-body")
                )
                return
            ex.feed(message.get("body", b""))
            if not message.get("more_body", False):
                return
    except asyncio.CancelledError:
        # The deadline's own cancellation becomes its 408; any other goes on.
        if not ex.expired or task.uncancel() > 0:
            raise
    finally:
        ex.on_expire = None
        ex.disarm()
