"""Fixtures for the reliability tests: a fresh tiny repository, live servers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import LiveServer, write_binary, write_image


@pytest.fixture
def rel_repo(tmp_path: Path) -> Path:
    """A fresh repository with `bin` v1 and `img` v1."""
    root = tmp_path / "models"
    write_binary(root)
    write_image(root)
    return root


@pytest.fixture
def start_server() -> Iterator[Callable[..., LiveServer]]:
    """Start live servers (`python -m service`); every one is stopped after the test."""
    started: list[LiveServer] = []

    def start(env: dict[str, str], wait: bool = True) -> LiveServer:
        server = LiveServer(env)
        started.append(server)
        if wait:
            server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()
