"""The HTTP floor app drains a streamed body and answers its fixed /predict answer."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from bench.floor_app import app


def test_floor_app_reads_the_whole_body_then_answers() -> None:
    chunks = [
        {"type": "http.request", "body": b"{", "more_body": True},
        {"type": "http.request", "body": b"}", "more_body": False},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return chunks.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app({"type": "http", "method": "POST", "path": "/predict"}, receive, send))
    assert chunks == []
    assert sent[0]["status"] == 200
    doc = json.loads(sent[1]["body"])
    assert len(doc["predictions"]) == 1 and doc["predictions"][0]["label"] == "malignant"
