"""Fixtures for the monitoring tests: a real Prometheus that loads verdict's rules."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_YML = REPO / "deploy" / "prometheus" / "prometheus.yml"
RULES_DIR = REPO / "deploy" / "prometheus" / "rules"
PROMETHEUS_BIN = shutil.which("prometheus") or "/usr/bin/prometheus"
VERDICT_JOB = "verdict"
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0

T = TypeVar("T")


def config_for_targets(targets: list[str]) -> dict[str, Any]:
    """The shipped prometheus.yml, rewritten for a test: 1s intervals, the given targets.

    Only the scrape job "verdict" is kept (its targets replaced) and the rule files point at
    the repository's rules, unchanged: alert `for:` durations are the production ones.
    """
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS_YML.read_text())
    config["global"]["scrape_interval"] = "1s"
    config["global"]["scrape_timeout"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [str(RULES_DIR / "*.yml")]
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == VERDICT_JOB]
    assert len(jobs) == 1, "prometheus.yml must have exactly one scrape job named verdict"
    job = jobs[0]
    job["scrape_interval"] = "1s"
    job["scrape_timeout"] = "1s"
    job["static_configs"] = [{"targets": list(targets)}]
    config["scrape_configs"] = [job]
    return config


@dataclass
class PrometheusServer:
    """A running Prometheus process and a small client for its HTTP API."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path> and return its `data`; fail on an error status."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=5) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Evaluate an instant query now and return the result samples."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def values(self, expr: str, by: str) -> dict[str, float]:
        """Evaluate `expr` and map the value of label `by` to the sample value."""
        return {s["metric"].get(by, ""): float(s["value"][1]) for s in self.query(expr)}

    def alerts(self) -> list[dict[str, Any]]:
        """The pending and firing alerts."""
        return list(self.api("alerts")["alerts"])

    def wait_for(self, probe: Callable[[], T | None], what: str, timeout_s: float = 20.0) -> T:
        """Call `probe` until it returns something other than None (or False); return it."""
        deadline = time.monotonic() + timeout_s
        last: T | None = None
        while time.monotonic() < deadline:
            last = probe()
            if last is not None and last is not False:
                return last
            time.sleep(0.25)
        pytest.fail(f"timed out after {timeout_s}s waiting for {what}; last={last!r}\n{self.log()}")

    def wait_for_targets_up(self, count: int, timeout_s: float = 15.0) -> None:
        """Wait until `count` verdict targets have been scraped successfully."""

        def probe() -> bool:
            up = self.query(f'up{{job="{VERDICT_JOB}"}} == 1')
            return len(up) >= count

        self.wait_for(probe, f"{count} verdict target(s) up", timeout_s)

    def log(self) -> str:
        """The last lines of Prometheus' own log, for failure messages."""
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-30:])


def start_prometheus(targets: list[str], directory: Path) -> PrometheusServer:
    """Start Prometheus on a free 127.0.0.1 port scraping `targets`; wait until it is ready."""
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config_for_targets(targets), sort_keys=False))
    check = subprocess.run(
        ["promtool", "check", "config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    port = free_port()
    log_path = directory / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                PROMETHEUS_BIN,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = PrometheusServer(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"prometheus exited with {process.returncode}:\n{server.log()}")
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=1) as resp:
                if resp.status == 200:
                    return server
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    stop_prometheus(server)
    pytest.fail(f"prometheus not ready after {START_TIMEOUT_S}s:\n{server.log()}")


def stop_prometheus(server: PrometheusServer) -> None:
    """Terminate Prometheus (SIGTERM, then SIGKILL if it hangs) and reap it."""
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=STOP_TIMEOUT_S)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[list[str]], PrometheusServer]]:
    """A factory: `prometheus(["127.0.0.1:PORT"])` starts a real Prometheus scraping those
    targets every second with verdict's rules (evaluated every second); stopped at teardown."""
    started: list[PrometheusServer] = []

    def start(targets: list[str]) -> PrometheusServer:
        server = start_prometheus(targets, tmp_path / f"prometheus-{len(started)}")
        started.append(server)
        return server

    yield start
    for server in started:
        stop_prometheus(server)
