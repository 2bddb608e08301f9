"""`--workers N`: the supervisor restarts a dead worker, drains all on SIGTERM and exits 0,
stops with exit code 3 when a worker cannot start, and takes its workers with it when it
is killed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, LiveServer, free_port
from tests.reliability.rel_support import live_env


def _workers(supervisor: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == supervisor and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def _service_env(live_repo: Path, prom: Path) -> dict[str, str]:
    """The environment of a `python -m service` run outside `LiveServer`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERDICT_")}
    env.update(live_env(live_repo, metrics_multiproc_dir=prom))
    env["PYTHONPATH"] = str(ROOT)
    return env


def _running(pid: int) -> bool:
    """A process that exists and is not a zombie (an orphan's zombie may wait for a reaper)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _predict_ok(url: str) -> None:
    r = httpx.post(f"{url}/predict", json={"model": "bin", "instances": [[1, 2, 3]]}, timeout=10)
    assert r.status_code == 200


def test_a_killed_worker_is_replaced_and_sigterm_stops_all_with_exit_0(
    live_repo: Path, tmp_path: Path
) -> None:
    env = live_env(live_repo, metrics_multiproc_dir=tmp_path / "prom")
    server = LiveServer(env, ["--workers", "2"])
    try:
        server.wait_ready()
        before = _workers(server.proc.pid)
        assert len(before) == 2
        os.kill(before[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        after = _workers(server.proc.pid)
        while (len(after) < 2 or before[0] in after) and time.monotonic() < deadline:
            time.sleep(0.2)
            after = _workers(server.proc.pid)
        assert len(after) == 2 and before[0] not in after and before[1] in after
        server.wait_ready()
        for _ in range(10):  # fresh connections reach both workers, the new one included
            _predict_ok(server.url)
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=30) == 0
        assert _workers(server.proc.pid) == []
        assert "starting another" in server.output()
    finally:
        server.stop()


def test_a_worker_that_cannot_start_stops_the_server_with_exit_3(
    live_repo: Path, tmp_path: Path
) -> None:
    port = free_port()
    # Someone else holds the port, without SO_REUSEPORT: no worker can listen on it.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        env = _service_env(live_repo, tmp_path / "prom")
        proc = subprocess.run(
            [sys.executable, "-m", "service", "--port", str(port), "--workers", "2"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 3, proc.stderr[-2000:]


def test_workers_stop_when_the_supervisor_is_killed(live_repo: Path, tmp_path: Path) -> None:
    env = live_env(live_repo, metrics_multiproc_dir=tmp_path / "prom")
    server = LiveServer(env, ["--workers", "2"])
    workers: list[int] = []
    try:
        server.wait_ready()
        workers = _workers(server.proc.pid)
        assert len(workers) == 2
        server.proc.kill()  # SIGKILL: the supervisor cannot stop anything itself
        server.proc.wait(timeout=10)
        deadline = time.monotonic() + 30
        while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_running(pid) for pid in workers), "a worker outlived its supervisor"
        with pytest.raises(httpx.TransportError):  # nothing serves the port any more
            httpx.get(f"{server.url}/v2/health/live", timeout=2)
    finally:
        server.stop()
        for pid in workers:  # without the fix, do not leave orphans behind
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_second_server_on_the_same_port_is_refused(live_repo: Path, tmp_path: Path) -> None:
    first = LiveServer(
        live_env(live_repo, metrics_multiproc_dir=tmp_path / "prom1"), ["--workers", "2"]
    )
    try:
        first.wait_ready()
        env = _service_env(live_repo, tmp_path / "prom2")
        second = subprocess.Popen(
            [sys.executable, "-m", "service", "--port", str(first.port), "--workers", "2"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            _, err = second.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # it joined the first one's port (SO_REUSEPORT)
            os.killpg(second.pid, signal.SIGKILL)
            second.communicate()
            raise AssertionError("a second server started on a port already served") from None
        assert second.returncode == 3, err[-2000:]
        assert "another server already listens" in err
        _predict_ok(first.url)
        assert len(_workers(first.proc.pid)) == 2
    finally:
        first.stop()
