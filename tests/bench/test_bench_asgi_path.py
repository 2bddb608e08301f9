"""bench.asgi_path drives the real app in-process and prints a per-request time."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "args",
    [
        ["--requests", "20"],
        ["--rows", "64", "--protocol", "v2-binary", "--requests", "20", "--inline"],
        ["--via", "server", "--requests", "20"],
        ["--via", "uvicorn", "--requests", "20"],
        ["--via", "server", "--rows", "64", "--protocol", "v2-binary", "--requests", "20"],
    ],
)
def test_asgi_path_answers_200_and_prints_a_time(args: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERDICT_")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "bench.asgi_path", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"[0-9.]+ us/request in-process$", done.stdout.strip()), done.stdout
