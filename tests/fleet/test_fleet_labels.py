"""Three real replicas on one PostgreSQL database take 10,000 labels, a third of them sent
again, some to two replicas at the same moment: each label counts once across the fleet."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.fleet.fleet_support import (
    CLASSES,
    Fleet,
    Ledger,
    outcomes,
    predict_ids,
    quality,
    send_until_acknowledged,
    stored,
    truth,
)
from tests.pgserver import PostgresServer

N_LABELS = 10_000
REPEAT_SHARE = 0.45  # of the labels, sent once more (a third of all items; some conflict)
OTHER_LABEL_SHARE = 0.1  # of the repeats
TWIN_BATCHES = 150  # batches sent to two replicas at the same moment
SENDERS = 6


def _plan(ids: list[str], rng: random.Random) -> tuple[list[list[dict[str, Any]]], int]:
    """Batches of 1 to 100 items: every label once, a share again; the expected conflicts."""
    items = [{"prediction_id": pid, "label": truth(i)} for i, pid in enumerate(ids)]
    conflicts = 0
    for i in rng.sample(range(len(ids)), int(REPEAT_SHARE * len(ids))):
        label = truth(i)
        if rng.random() < OTHER_LABEL_SHARE:
            label = CLASSES[1 - CLASSES.index(label)]
            conflicts += 1
        items.append({"prediction_id": ids[i], "label": label})
    # Repeats after their first sending, mostly: shuffle within the two halves only.
    first, again = items[: len(ids)], items[len(ids) :]
    rng.shuffle(first)
    rng.shuffle(again)
    ordered = first[: len(first) // 2] + again[: len(again) // 3] + first[len(first) // 2 :]
    ordered += again[len(again) // 3 :]
    batches, at = [], 0
    while at < len(ordered):
        size = rng.choice((1, 1, 5, 20, 50, 100))
        batches.append(ordered[at : at + size])
        at += size
    return batches, conflicts


def _together(ledger: Ledger, posts: list[tuple[httpx.Client, str, list[Any]]]) -> list[Any]:
    """Each POST on its own thread, released at the same moment."""
    start = threading.Barrier(len(posts))

    def post(job: tuple[httpx.Client, str, list[Any]]) -> int | None:
        start.wait()
        return ledger.post(*job)

    with ThreadPoolExecutor(len(posts)) as pool:
        return list(pool.map(post, posts))


@pytest.mark.slow
def test_ten_thousand_labels_count_once_across_three_replicas(
    fleet: Fleet, pg: PostgresServer
) -> None:
    rng = random.Random(17)
    ids = predict_ids(fleet, N_LABELS)
    batches, conflicts = _plan(ids, rng)
    twins = set(rng.sample(range(len(batches)), TWIN_BATCHES))
    ledger = Ledger()
    queue = iter(enumerate(batches))
    lock = threading.Lock()

    def sender() -> None:
        with httpx.Client(timeout=30) as http, httpx.Client(timeout=30) as other:
            while True:
                with lock:
                    job = next(queue, None)
                if job is None:
                    return
                n, batch = job
                if n not in twins:
                    send_until_acknowledged(fleet, ledger, http, batch)
                    continue
                # The same batch to two replicas at the same moment.
                first, second = fleet.two()
                statuses = _together(ledger, [(http, first, batch), (other, second, batch)])
                assert statuses == [200, 200]

    with ThreadPoolExecutor(SENDERS) as pool:
        for done in [pool.submit(sender) for _ in range(SENDERS)]:
            done.result()

    ledger.assert_unexpected()
    ledger.assert_each_accepted_at_most_once()
    assert ledger.statuses.keys() == {200}, ledger.statuses
    assert ledger.accepted() == set(ids), "every label accepted once by some replica"
    assert ledger.total("conflict") >= conflicts
    assert ledger.total("duplicate") >= int(REPEAT_SHARE * N_LABELS) - conflicts
    assert len(stored(pg)) == N_LABELS
    assert pg.sql("SELECT count(*) FROM conflicts") == [(ledger.total("conflict"),)]
    # The counters Prometheus would add up across the replicas: each label once.
    assert sum(outcomes(server.url) for server in fleet.replicas) == N_LABELS
    # People's reads: the same on every replica, every label in them.
    answers = [quality(server.url) for server in fleet.replicas]
    assert answers[0] == answers[1] == answers[2]
    (version,) = answers[0]["versions"]
    assert version["windows"]["all_time"]["labelled"] == N_LABELS
    assert version["conflicts"] == ledger.total("conflict")
