"""The running compose stack for the tests beside this file; only `make compose-test` runs them.

scripts/compose-test.sh sets up podman and the base image, builds the images, then runs pytest
here with VERDICT_STACK=1. A plain `pytest` deselects these tests (it says so at the end) rather
than fail for want of an engine.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.stack.engine import WORK, anonymous_volumes, api_service, podman, remove_leftovers
from tests.deploy.stack.harness import Stack

HERE = Path(__file__).resolve().parent
ENABLED = os.environ.get("VERDICT_STACK") == "1"
TIMINGS: dict[str, float] = {}
_deselected: list[Any] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if ENABLED:
        return
    mine = [item for item in items if HERE in item.path.parents]
    if mine:
        _deselected.extend(mine)
        config.hook.pytest_deselected(items=mine)
        items[:] = [item for item in items if item not in mine]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _deselected:
        terminalreporter.write_line(
            f"{len(_deselected)} compose stack tests deselected: `make compose-test` runs them"
        )
    if TIMINGS:
        figures = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in TIMINGS.items())
        terminalreporter.write_line(f"compose stack: {figures}")


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """verdict and Prometheus up from the generated compose file; everything removed after."""
    with api_service() as docker_host:
        remove_leftovers()  # of a run killed before its clean-up
        anonymous_before = anonymous_volumes()
        running = Stack(docker_host, os.environ.get("VERDICT_STACK_LOCUST_RUN_TIME", "30s"))
        started = time.monotonic()
        try:
            running.up()
            TIMINGS["up"] = time.monotonic() - started
            TIMINGS["verdict healthy after"] = running.wait_healthy("verdict")
            yield running
        finally:
            (WORK / "stack.log").write_text(running.logs())
            started = time.monotonic()
            running.down()
            # Anonymous volumes carry no project label: those this run made go by name.
            for name in anonymous_volumes() - anonymous_before:
                podman("volume", "rm", name, check=False)
            TIMINGS["down"] = time.monotonic() - started
            TIMINGS["whole run"] = time.monotonic() - _SESSION_START


_SESSION_START = time.monotonic()
