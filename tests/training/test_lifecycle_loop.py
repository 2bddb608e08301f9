"""The loop end to end with real parts: a real verdict server captures the inputs of shifted
production traffic (areas reported in other units), labels come back through /feedback, then
`verdict-train export`, `retrain` and `compare-versions` run as a team would run them, and the
report must find the challenger cheaper on the newest rows, which neither model saw. The
challenger is then added to the served repository, runs as a shadow on new live traffic, is
scored by the labels of that traffic, and is promoted: the whole loop in one run."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from service.monitoring.store import FeedbackStore
from tests.service.server_support import ThreadServer
from tests.training.loop_support import ADMIN_KEY, label_live, loop_server, predict_live
from training.__main__ import main

ROOT = Path(__file__).resolve().parents[2]
CHAMPION = ROOT / "models" / "breast-cancer" / "1"
CLASSES = ["benign", "malignant"]  # the bundled config's order (sklearn's 0 is malignant)
QUICK = ["--set", "train.epochs=80", "--set", "cv.folds=3"]
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
MODEL = "breast-cancer"


def shifted_traffic(n: int, seed: int) -> tuple[np.ndarray, list[str], list[str]]:
    """Rows drawn from the data set with 3% noise, every area feature in hundredths (a unit
    change upstream): the champion reads malignant cases as small, benign ones."""
    data = load_breast_cancer()
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(data.target), size=n)
    x = data.data[pick] * rng.normal(1.0, 0.03, size=(n, data.data.shape[1]))
    names = [str(f) for f in data.feature_names]
    for j, name in enumerate(names):
        if "area" in name:
            x[:, j] /= 100.0
    labels = ["malignant" if data.target[i] == 0 else "benign" for i in pick]
    return x.astype(np.float32), labels, names


@pytest.fixture
def server(tmp_path: Path) -> ThreadServer:
    srv = loop_server(tmp_path, "breast-cancer", CHAMPION)
    yield srv  # type: ignore[misc]
    srv.stop()


def _named(x: np.ndarray, names: list[str]) -> list[dict[str, float]]:
    """Rows as objects keyed by feature name."""
    return [dict(zip(names, map(float, r), strict=True)) for r in x]


def test_capture_export_retrain_compare_shadow_promote_on_shifted_traffic(
    server: ThreadServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x, labels, names = shifted_traffic(700, seed=7)
    with httpx.Client(base_url=server.url) as client:
        for start in range(0, len(x), 50):  # labelled as they go: the latest are held out
            predictions = predict_live(client, MODEL, _named(x[start : start + 50], names))
            label_live(client, predictions, labels[start : start + 50])
    assert server.app.state.capture.wait_drained(20)
    store_url = f"sqlite:///{tmp_path}/var/feedback.sqlite3"
    examples = tmp_path / "examples.csv"

    export = ["export", "breast-cancer", "--store", store_url, "--out", str(examples)]
    repository = ["--repository", str(tmp_path / "models")]
    assert main([*export, *repository, "--holdout-fraction", "0.28"]) == 0
    with examples.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 700
    train = [float(r["captured_at"]) for r in rows if r["split"] == "train"]
    held = [float(r["captured_at"]) for r in rows if r["split"] == "holdout"]
    assert len(held) == 200 and max(train) < min(held)  # a time split, whole requests

    runs = tmp_path / "runs"
    assert (
        main(["retrain", str(CHAMPION), "--examples", str(examples), "--out", str(runs), *QUICK])
        == 0
    )
    challenger = runs / "1"
    manifest = json.loads((challenger / "manifest.json").read_text())
    production = manifest["training"]["production"]
    assert production["rows"] == 500 and production["held_out_rows"] == 200
    assert manifest["training"]["dataset"]["rows"] == 569 + 500
    assert manifest["costs"] == {"cost_fp": 1.0, "cost_fn": 20.0}  # the champion's costs

    capsys.readouterr()
    assert (
        main(["compare-versions", str(CHAMPION), str(challenger), "--examples", str(examples)]) == 0
    )
    report = json.loads((challenger / "offline_comparison.json").read_text())
    assert report["examples"]["rows"] == 200
    assert report["verdict"] == "challenger_cheaper", report["summary"]
    assert report["difference"]["interval"][1] < 0
    champ, chal = report["champion"], report["challenger"]
    assert chal["cost_per_row"] < champ["cost_per_row"]
    assert champ["confusion"]["fn"] > chal["confusion"]["fn"]  # the shift hid malignant cases
    assert sum(champ["confusion"].values()) == 200
    text = (challenger / "offline_comparison.md").read_text()
    assert "The challenger costs less" in text
    assert (challenger / "offline_comparison.png").read_bytes().startswith(b"\x89PNG")
    card = (challenger / "MODEL_CARD.md").read_text()
    assert "Against the champion on recent production traffic" in card
    assert "500 labelled production rows" in card

    # The same held-out rows must not be used against a model trained on them.
    leaky = tmp_path / "leaky.csv"
    leaky.write_text(examples.read_text().replace(",train,", ",holdout,"))
    assert main(["compare-versions", str(CHAMPION), str(challenger), "--examples", str(leaky)]) == 1
    assert "neither model has seen" in capsys.readouterr().err

    # Added to the repository, the challenger keeps its comparison in its card.
    assert main(["add", str(challenger), str(tmp_path / "models" / "breast-cancer")]) == 0
    added = tmp_path / "models" / "breast-cancer" / "2"
    assert "Against the champion" in (added / "MODEL_CARD.md").read_text()

    # The live server loads it and runs it as a shadow on every request of new traffic.
    model = "/v2/repository/models/breast-cancer"
    with httpx.Client(base_url=server.url, headers=ADMIN, timeout=60) as admin:
        assert admin.post(f"{model}/load").status_code == 200
        r = admin.post(f"{model}/shadow", json={"version": 2, "sample_rate": 1.0})
        assert r.status_code == 200, r.text
        later, later_labels, _ = shifted_traffic(300, seed=8)
        # The primary answers, never the shadow.
        predictions = predict_live(admin, MODEL, _named(later, names))
        deadline = time.monotonic() + 30
        while admin.get("/models/breast-cancer/shadow").json()["shadow_decisions"] < 300:
            assert time.monotonic() < deadline, "the shadow did not decide every row"
            time.sleep(0.1)
        label_live(admin, predictions, later_labels)

        # One label scored both versions; the shadow is cheaper live, as it was offline.
        view = admin.get("/models/breast-cancer/shadow").json()["comparison"]
        assert view["paired_labels"] == 300, view
        assert view["shadow"]["cost_per_row"] < view["primary"]["cost_per_row"], view
        assert view["promotable"], view
        r = admin.post(f"{model}/promote", json={"requested_by": "the loop test"})
        assert r.status_code == 200, r.text
        assert r.json()["outcome"] == "promoted" and r.json()["roles"]["primary"] == 2
        predict_live(admin, MODEL, _named(later[:50], names), version=2)


def test_export_refuses_an_empty_window_and_retrain_refuses_dropped_features(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    FeedbackStore(str(tmp_path / "feedback.sqlite3")).migrate()  # a store with no captures
    store_url = f"sqlite:///{tmp_path}/feedback.sqlite3"
    out = tmp_path / "x.csv"
    assert main(["export", "breast-cancer", "--store", store_url, "--out", str(out)]) == 1
    assert "no labelled captured predictions" in capsys.readouterr().err
    header = "prediction_id,version,captured_at,observed_at,predicted,score,split,label,a\n"
    out.write_text(header + "p1,1,1.0,2.0,benign,0.1,train,benign,1.0\n")
    assert main(["retrain", str(CHAMPION), "--examples", str(out), "--out", str(tmp_path)]) == 1
    assert "lacks the features" in capsys.readouterr().err


def test_a_version_against_itself_shows_no_clear_difference(tmp_path: Path) -> None:
    x, labels, names = shifted_traffic(120, seed=3)
    examples = tmp_path / "examples.csv"
    header = "prediction_id,version,captured_at,observed_at,predicted,score,split,label,"
    lines = [header + ",".join(names)]
    for i, (row, label) in enumerate(zip(x, labels, strict=True)):
        values = ",".join(repr(float(v)) for v in row)
        lines.append(f"p{i},1,{1000.0 + i},{2000.0 + i},benign,0.5,holdout,{label},{values}")
    examples.write_text("\n".join(lines) + "\n")
    card_before = (CHAMPION / "MODEL_CARD.md").read_text()
    out = tmp_path / "report"
    args = ["compare-versions", str(CHAMPION), str(CHAMPION), "--examples", str(examples)]
    assert main([*args, "--out", str(out), "--resamples", "500"]) == 0
    report = json.loads((out / "offline_comparison.json").read_text())
    assert report["verdict"] == "no_clear_difference"
    assert report["difference"]["cost_per_row"] == 0.0
    assert report["champion"]["confusion"] == report["challenger"]["confusion"]
    assert report["examples"]["rows"] == 120
    assert (CHAMPION / "MODEL_CARD.md").read_text() == card_before  # --out: no card rewritten
    assert not (CHAMPION / "offline_comparison.json").exists()
