"""End to end on a real server (`python -m service`): a challenger that is measurably better
on shifted traffic runs as a shadow, labels come back through /feedback, the shadow's figures
show on /metrics and /models/{name}/shadow, a promotion with too few labels is refused, and a
promotion and a rollback under concurrent load fail no request; the decisions are stored."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import TEST_KEY, LiveServer, free_port
from tests.lifecycle.shadow_support import ADMIN, ADMIN_KEY, MODEL, shifted_rows, write_pair

pytestmark = pytest.mark.slow

CLIENTS = 6


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    repo = write_pair(tmp_path / "models")
    grpc_port = free_port()
    live = LiveServer(
        {
            "VERDICT_MODEL_REPOSITORY": str(repo),
            "VERDICT_FEEDBACK_URL": f"sqlite:///{tmp_path / 'var' / 'feedback.sqlite3'}",
            "VERDICT_PREDICTION_ID_KEY": TEST_KEY,
            "VERDICT_ADMIN_API_KEY": ADMIN_KEY,
            "VERDICT_SHADOWS": f"{MODEL}=2:0.5",
            "VERDICT_PROMOTION_MIN_LABELS": "100",
            "VERDICT_DRAIN_SECONDS": "1",
            "VERDICT_GRPC_PORT": str(grpc_port),
        }
    )
    live.env_grpc_port = grpc_port  # type: ignore[attr-defined]
    live.wait_ready()
    yield live
    live.stop()


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


class Load(threading.Thread):
    """One client sending single-row predictions without a version until stopped."""

    def __init__(self, url: str, rows: list[list[float]]) -> None:
        super().__init__(daemon=True)
        self.url, self.rows = url, rows
        self.stop = threading.Event()
        self.statuses: Counter[int] = Counter()
        self.versions: Counter[int] = Counter()
        self.errors: list[str] = []

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            i = 0
            while not self.stop.is_set():
                row = self.rows[i % len(self.rows)]
                i += 1
                try:
                    r = client.post("/predict", json={"model": MODEL, "instances": [row]})
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                    continue
                self.statuses[r.status_code] += 1
                if r.status_code == 200:
                    self.versions[r.json()["version"]] += 1


def test_a_better_shadow_is_measured_refused_without_labels_and_promoted_under_load(
    server: LiveServer, tmp_path: Path
) -> None:
    url = server.url
    admin = httpx.Client(base_url=url, headers=ADMIN, timeout=30)
    roles = admin.get(f"/v2/repository/models/{MODEL}/roles").json()
    assert (roles["primary"], roles["shadow"], roles["sample_rate"]) == (1, 2, 0.5)

    # Shifted traffic: the truth follows beta, which only the challenger looks at.
    rows, truth = shifted_rows(600, seed=11)
    answers = []
    for i in range(0, len(rows), 5):
        r = httpx.post(f"{url}/predict", json={"model": MODEL, "instances": rows[i : i + 5]})
        assert r.status_code == 200 and r.json()["version"] == 1
        answers += r.json()["predictions"]

    # Half the requests (by chance) run on the shadow; wait until every sampled one is kept.
    deadline = time.monotonic() + 30
    while True:
        text = httpx.get(f"{url}/metrics").text
        sampled = _metric(text, "verdict_shadow_rows_total", model=MODEL, version="2")
        decided = _metric(
            text, "verdict_shadow_rows_total", model=MODEL, version="2", outcome="decided"
        )
        view = httpx.get(f"{url}/models/{MODEL}/shadow").json()
        if sampled and decided == sampled and view["shadow_decisions"] == decided:
            break
        assert time.monotonic() < deadline, (sampled, decided, view)
        time.sleep(0.1)
    # The shadow samples whole requests: 120 requests of 5 rows at 0.5 put 60 on it (sd 5.5),
    # so these bounds are 5.5 sd away and fail only if the rate is not honoured.
    assert 0.25 * len(rows) < decided < 0.75 * len(rows)

    # Before any label: refused, too few labels, and the primary still answers.
    r = admin.post(f"/v2/repository/models/{MODEL}/promote", json={"requested_by": "ci"})
    assert r.status_code == 409 and r.json()["code"] == "promotion_refused", r.text
    assert "0 labelled rows decided by both versions; at least 100 needed" in r.json()["error"]

    items = [
        {"prediction_id": a["prediction_id"], "label": t}
        for a, t in zip(answers, truth, strict=True)
    ]
    for i in range(0, len(items), 200):
        r = httpx.post(f"{url}/feedback", json={"items": items[i : i + 200]})
        assert r.status_code == 200 and r.json()["accepted"] == len(items[i : i + 200])

    text = httpx.get(f"{url}/metrics").text
    paired = {
        role: {
            o: _metric(text, "verdict_shadow_outcomes_total", model=MODEL, role=role, outcome=o)
            for o in ("tp", "fp", "tn", "fn")
        }
        for role in ("primary", "shadow")
    }
    assert sum(paired["primary"].values()) == sum(paired["shadow"].values()) == decided
    assert paired["shadow"]["fn"] == paired["shadow"]["fp"] == 0
    assert paired["primary"]["fn"] > 0.2 * decided / 2  # alpha is noise: many misses
    assert _metric(text, "verdict_model_role", model=MODEL, version="2", role="shadow") == 1

    view = httpx.get(f"{url}/models/{MODEL}/shadow").json()["comparison"]
    assert view["paired_labels"] == decided and view["promotable"]
    assert view["shadow"]["cost_per_row"] < view["primary"]["cost_per_row"]

    # Promotion and rollback under load: every request answered 2xx.
    load = [Load(url, rows) for _ in range(CLIENTS)]
    for t in load:
        t.start()
    time.sleep(1.0)
    r = admin.post(
        f"/v2/repository/models/{MODEL}/promote",
        json={"confidence": 0.99},
        headers={"X-Requested-By": "release-bot"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["roles"]["primary"] == 2
    time.sleep(1.0)
    r = admin.post(f"/v2/repository/models/{MODEL}/rollback", json={"requested_by": "oncall"})
    assert r.status_code == 200, r.text
    time.sleep(1.0)
    r = admin.post(f"/v2/repository/models/{MODEL}/promote", json={"requested_by": "again"})
    assert r.status_code == 200, r.text
    time.sleep(1.0)
    for t in load:
        t.stop.set()
    for t in load:
        t.join(30)
    statuses = sum((t.statuses for t in load), Counter())
    versions = sum((t.versions for t in load), Counter())
    assert [e for t in load for e in t.errors] == []
    assert set(statuses) == {200}, statuses
    assert statuses[200] > 200
    assert versions[1] > 0 and versions[2] > 0  # the swaps happened under the load

    # The decisions, the figures and who asked are kept in the store.
    history = admin.get(f"/v2/repository/models/{MODEL}/promotions").json()["decisions"]
    assert [d["outcome"] for d in history] == ["promoted", "rolled_back", "promoted", "refused"]
    assert history[2]["requested_by"].startswith("release-bot (admin-key:")
    assert history[2]["figures"]["paired_labels"] == decided
    server.stop()
    db = sqlite3.connect(tmp_path / "var" / "feedback.sqlite3")
    stored = db.execute("SELECT outcome, requested_by FROM promotions ORDER BY id").fetchall()
    assert [o for o, _ in stored] == ["refused", "promoted", "rolled_back", "promoted"]
    assert all(ADMIN_KEY not in who for _, who in stored)
    # The roles the last promotion set are kept in the store, for every process and the next
    # start (the model folder is left as the deployer made it).
    roles = db.execute("SELECT model, primary_version, shadow_version, revision FROM roles")
    assert roles.fetchall() == [(MODEL, 2, 1, 3)]
    assert not (tmp_path / "models" / MODEL / "roles.json").exists()


def test_grpc_requests_are_shadowed_too(server: LiveServer) -> None:
    import numpy as np
    import tritonclient.grpc as grpcclient

    port = int(server.env_grpc_port)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    x = np.asarray(shifted_rows(40, seed=2)[0], dtype=np.float32)
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    for _ in range(40):  # sampled at 0.5: none of 40 reaching the shadow has odds 1e-12
        client.infer(MODEL, [inp], parameters={"prediction_ids": True})
    deadline = time.monotonic() + 20
    while httpx.get(f"{server.url}/models/{MODEL}/shadow").json()["shadow_decisions"] == 0:
        assert time.monotonic() < deadline, "no gRPC request reached the shadow"
        time.sleep(0.1)
