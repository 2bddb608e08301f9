"""Pieces of the fleet tests: replicas of `python -m service` on one PostgreSQL database, the
tests' own load balancer over them, a ledger of every answer, and the counters they export."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import LiveServer
from tests.pgserver import PostgresServer

CLASSES = ("ham", "spam")  # the tiny binary model of tests/conftest.py


def replica_env(repo: Path, pg: PostgresServer) -> dict[str, str]:
    """A replica's settings: the shared database, no configured key (the fleet shares the
    generated one the database keeps)."""
    return {
        "VERDICT_MODEL_REPOSITORY": str(repo),
        "VERDICT_FEEDBACK_URL": pg.url,
        "VERDICT_DRAIN_SECONDS": "5",
        "VERDICT_MAX_QUEUE_DELAY_MS": "1",
    }


class Fleet:
    """Replicas and the rotation a load balancer sends requests to."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.replicas: list[LiveServer] = []
        self.rotation: list[str] = []
        self._lock = threading.Lock()

    def start(self, n: int) -> list[LiveServer]:
        """Start n replicas at once; each joins the rotation once ready."""
        started = [LiveServer(self.env) for _ in range(n)]
        self.replicas += started
        for server in started:
            server.wait_ready()
            with self._lock:
                self.rotation.append(server.url)
        return started

    def pick(self, avoid: str | None = None) -> str:
        with self._lock:
            choices = [u for u in self.rotation if u != avoid] or list(self.rotation)
            return random.choice(choices)

    def two(self) -> tuple[str, str]:
        with self._lock:
            first, second = random.sample(self.rotation, 2)
            return first, second

    def leave(self, server: LiveServer) -> None:
        """Out of the rotation: no new request goes to it (its in-flight ones finish)."""
        with self._lock:
            self.rotation.remove(server.url)

    def stop(self) -> None:
        for server in self.replicas:
            server.stop()


def predict_ids(fleet: Fleet, n: int, per_request: int = 500) -> list[str]:
    """n prediction ids of the binary model, issued by every replica in turn."""
    ids: list[str] = []
    with httpx.Client(timeout=60) as http:
        k = 0
        while len(ids) < n:
            rows = [
                [0.01 * ((len(ids) + i) % 97) - 0.4, 0.3, -0.2]
                for i in range(min(per_request, n - len(ids)))
            ]
            url = fleet.rotation[k % len(fleet.rotation)]
            r = http.post(f"{url}/predict", json={"model": "bin", "instances": rows})
            assert r.status_code == 200, r.text
            ids += [p["prediction_id"] for p in r.json()["predictions"]]
            k += 1
    return ids


def truth(i: int) -> str:
    """The label that item i's prediction gets."""
    return CLASSES[(i * 7919) % 5 < 2]


class Ledger:
    """Every answer the fleet gave, per prediction id."""

    def __init__(self) -> None:
        self.results: dict[str, Counter[str]] = defaultdict(Counter)
        self.refused: set[str] = set()  # ids in a request answered 503 or cut off
        self.statuses: Counter[int] = Counter()
        self._lock = threading.Lock()

    def post(self, http: httpx.Client, url: str, items: list[dict[str, Any]]) -> int | None:
        """POST /feedback; the status (None: no answer), every result recorded."""
        try:
            r = http.post(f"{url}/feedback", json={"items": items})
        except httpx.HTTPError:
            with self._lock:
                self.refused.update(item["prediction_id"] for item in items)
            return None
        with self._lock:
            self.statuses[r.status_code] += 1
            if r.status_code != 200:
                assert r.status_code == 503, r.text
                assert (
                    r.json()["code"] == "store_unavailable" and int(r.headers["retry-after"]) >= 1
                )
                self.refused.update(item["prediction_id"] for item in items)
                return r.status_code
            for item, res in zip(items, r.json()["results"], strict=True):
                self.results[item["prediction_id"]][res["result"]] += 1
        return r.status_code

    def accepted(self) -> set[str]:
        return {pid for pid, seen in self.results.items() if seen["accepted"]}

    def total(self, result: str) -> int:
        return sum(seen[result] for seen in self.results.values())

    def assert_each_accepted_at_most_once(self) -> None:
        twice = [pid for pid, seen in self.results.items() if seen["accepted"] > 1]
        assert not twice, f"{len(twice)} labels accepted more than once"

    def assert_unexpected(self) -> None:
        odd = {r for seen in self.results.values() for r in seen} - {
            "accepted",
            "duplicate",
            "conflict",
        }
        assert not odd, f"unexpected results: {odd}"


def send_until_acknowledged(
    fleet: Fleet,
    ledger: Ledger,
    http: httpx.Client,
    batch: list[dict[str, Any]],
    patience_s: float = 120.0,
) -> None:
    """Send a batch to a replica of the rotation until one answers 200; what is refused (503,
    connection cut) goes again, as a client honouring Retry-After would, a little sooner."""
    deadline = time.monotonic() + patience_s
    url = fleet.pick()
    while ledger.post(http, url, batch) != 200:
        assert time.monotonic() < deadline, "labels were refused for too long"
        time.sleep(0.1)
        url = fleet.pick(avoid=url)


def outcomes(url: str) -> int:
    """The sum of verdict_outcomes_total a replica exports."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return int(
        sum(
            sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "verdict_outcomes"
            for sample in family.samples
            if sample.name == "verdict_outcomes_total"
        )
    )


def quality(url: str) -> dict[str, Any]:
    """GET /models/bin/quality without what is this process's own (its clock, its count of
    predictions for coverage)."""
    body = httpx.get(f"{url}/models/bin/quality", timeout=30).json()
    body.pop("generated_at")
    for version in body["versions"]:
        version["coverage"] = version["coverage"]["labelled"]
    return body


def stored(pg: PostgresServer) -> dict[str, int]:
    return dict(pg.sql("SELECT prediction_id, actual FROM labels"))  # type: ignore[arg-type]
