"""The loop for an image model with real parts: a real verdict server serves the bundled
`digits` CNN on shifted production traffic (inverted pixel intensities: ink became paper,
say a new scanner), captures the inputs, labels come back through /feedback, then
`verdict-train export`, `retrain` and `compare-versions` run as a team would run them; the
report must find the challenger cheaper (fewer misclassifications) on the newest rows, which
neither model saw. Added to the served repository, it runs as a shadow on new live traffic,
is scored by the labels and promoted."""

from __future__ import annotations

import csv
import json
import sqlite3
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_digits

from tests.lifecycle.shadow_support import shadow_outcomes
from tests.service.server_support import ThreadServer
from tests.training.loop_support import ADMIN_KEY, label_live, loop_server, predict_live
from training.__main__ import main

ROOT = Path(__file__).resolve().parents[2]
CHAMPION = ROOT / "models" / "digits" / "1"
PIXELS = [f"input[0][{i}][{j}]" for i in range(8) for j in range(8)]
QUICK = ["--set", "train.epochs=6", "--set", "cv.folds=0", "--set", "train.progress=none"]
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def inverted_digits(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """Digits whose intensities are inverted (16 - x) with a little noise: the champion,
    trained on dark ink on white, gets most of them wrong."""
    data = load_digits()
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(data.target), size=n)
    x = np.clip(16.0 - data.data[pick] + rng.normal(0.0, 0.5, size=(n, 64)), 0.0, 16.0)
    return x.astype(np.float32), [str(int(t)) for t in data.target[pick]]


@pytest.fixture
def server(tmp_path: Path) -> ThreadServer:
    srv = loop_server(tmp_path, "digits", CHAMPION)
    yield srv  # type: ignore[misc]
    srv.stop()


def _images(x: np.ndarray) -> list[list[list[list[float]]]]:
    """Rows as [1, 8, 8] images."""
    rows: list[list[list[list[float]]]] = x.reshape(-1, 1, 8, 8).tolist()
    return rows


def test_an_image_model_goes_round_the_loop_on_inverted_digits(
    server: ThreadServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x, labels = inverted_digits(600, seed=7)
    with httpx.Client(base_url=server.url) as client:
        for start in range(0, len(x), 50):  # labelled as they go: the latest are held out
            predictions = predict_live(client, "digits", _images(x[start : start + 50]))
            label_live(client, predictions, labels[start : start + 50])
    assert server.app.state.capture.wait_drained(20)
    store_url = f"sqlite:///{tmp_path}/var/feedback.sqlite3"
    examples = tmp_path / "examples.csv"

    export = ["export", "digits", "--store", store_url, "--out", str(examples)]
    assert main([*export, "--repository", str(tmp_path / "models")]) == 0
    with examples.open() as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = list(reader)
    assert header[8:] == PIXELS  # one column per value of the [1, 8, 8] input
    assert len(rows) == 600
    # Each row's pixels are the image sent, in the order the model reads them.
    assert [float(v) for v in rows[0][8:]] == x[0].tolist()
    assert [r[7] for r in rows] == labels
    split = [r[6] for r in rows]
    assert split == ["train"] * 400 + ["holdout"] * 200  # 30%, whole requests of 50 rows

    runs = tmp_path / "runs"
    args = ["retrain", str(CHAMPION), "--examples", str(examples), "--out", str(runs)]
    assert main([*args, *QUICK]) == 0
    challenger = runs / "1"
    manifest = json.loads((challenger / "manifest.json").read_text())
    champion = json.loads((CHAMPION / "manifest.json").read_text())
    production = manifest["training"]["production"]
    assert production["rows"] == 400 and production["held_out_rows"] == 200
    assert sum(production["class_counts"].values()) == 400
    assert manifest["training"]["dataset"]["rows"] == 1797 + 400
    assert manifest["input"] == champion["input"]  # [-1, 1, 8, 8], an image
    assert manifest["task"] == "multiclass" and manifest["costs"] == champion["costs"]
    config, champion_config = manifest["training"]["config"], champion["training"]["config"]
    assert config["model"] == champion_config["model"] and config["seed"] == 0
    assert config["train"]["epochs"] == 6 and config["data"] == champion_config["data"]
    assert (challenger / "MODEL_CARD.md").is_file()

    capsys.readouterr()
    args = ["compare-versions", str(CHAMPION), str(challenger), "--examples", str(examples)]
    assert main(args) == 0
    report = json.loads((challenger / "offline_comparison.json").read_text())
    assert report["task"] == "multiclass" and report["costs"] == {"error": 1.0}
    assert report["examples"]["rows"] == 200
    assert report["verdict"] == "challenger_cheaper", report["summary"]
    assert report["difference"]["interval"][1] < 0
    champ, chal = report["champion"], report["challenger"]
    assert np.asarray(champ["confusion"]).shape == (10, 10)
    assert np.asarray(champ["confusion"]).sum() == 200 == np.asarray(chal["confusion"]).sum()
    # The cost of a multiclass error is 1: the cost per row is the error rate.
    assert champ["cost_per_row"] == champ["error_rate"] == champ["errors"] / 200
    assert chal["error_rate"] < champ["error_rate"]
    assert chal["error_rate_upper"] < champ["error_rate"]  # beyond its own bound
    assert champ["error_rate_interval"][0] <= champ["error_rate"] <= champ["error_rate_upper"]
    assert [c["class"] for c in champ["per_class"]] == [str(d) for d in range(10)]
    assert sum(c["errors"] for c in champ["per_class"]) == champ["errors"]
    text = (challenger / "offline_comparison.md").read_text()
    assert "The challenger costs less" in text and "most probable class" in text
    assert "Confusion of the champion v1" in text
    assert (challenger / "offline_comparison.png").read_bytes().startswith(b"\x89PNG")
    card = (challenger / "MODEL_CARD.md").read_text()
    assert "Against the champion on recent production traffic" in card
    assert "400 labelled production rows" in card

    leaky = tmp_path / "leaky.csv"  # the rows it was trained on, offered as held out
    leaky.write_text(examples.read_text().replace(",train,", ",holdout,"))
    assert main(["compare-versions", str(CHAMPION), str(challenger), "--examples", str(leaky)]) == 1
    assert "neither model has seen" in capsys.readouterr().err

    assert main(["add", str(challenger), str(tmp_path / "models" / "digits")]) == 0
    model = "/v2/repository/models/digits"
    with httpx.Client(base_url=server.url, headers=ADMIN, timeout=60) as admin:
        assert admin.post(f"{model}/load").status_code == 200
        r = admin.post(f"{model}/shadow", json={"version": 2, "sample_rate": 1.0})
        assert r.status_code == 200, r.text
        later, later_labels = inverted_digits(200, seed=8)
        # The primary answers, never the shadow.
        predictions = predict_live(admin, "digits", _images(later))
        deadline = time.monotonic() + 30
        while admin.get("/models/digits/shadow").json()["shadow_decisions"] < 200:
            assert time.monotonic() < deadline, "the shadow did not decide every row"
            time.sleep(0.1)
        label_live(admin, predictions, later_labels)

        # /metrics counts each role's paired rows correct or wrong, as the labels say of the
        # answers sent (primary) and of the decisions the shadow kept in the store.
        classes = json.loads((CHAMPION / "manifest.json").read_text())["output"]["classes"]
        db = sqlite3.connect(tmp_path / "var" / "feedback.sqlite3")
        kept = dict(
            db.execute(
                "SELECT prediction_id, predicted FROM shadow_decisions WHERE model = 'digits' "
                "AND version = 2"
            ).fetchall()
        )
        db.close()
        truth = {str(p["prediction_id"]): t for p, t in zip(predictions, later_labels, strict=True)}
        assert set(kept) == set(truth)
        said = {
            "primary": [str(p["label"]) for p in predictions],
            "shadow": [classes[kept[str(p["prediction_id"])]] for p in predictions],
        }
        wrong = {
            role: sum(s != t for s, t in zip(said[role], later_labels, strict=True))
            for role in said
        }
        assert 0 < wrong["shadow"] < wrong["primary"], wrong
        metrics = shadow_outcomes(admin.get("/metrics").text, "digits")
        assert metrics == {
            ("1", "primary", "correct"): 200 - wrong["primary"],
            ("1", "primary", "wrong"): wrong["primary"],
            ("2", "shadow", "correct"): 200 - wrong["shadow"],
            ("2", "shadow", "wrong"): wrong["shadow"],
        }

        view = admin.get("/models/digits/shadow").json()["comparison"]
        assert view["paired_labels"] == 200, view
        assert view["costs"] == {"error": 1.0}
        assert view["shadow"]["errors"] < view["primary"]["errors"], view
        assert view["shadow"]["cost_per_row"] == view["shadow"]["errors"] / 200
        # The promotion rule's errors are the ones Prometheus shows.
        assert view["primary"]["errors"] == wrong["primary"]
        assert view["shadow"]["errors"] == wrong["shadow"]
        assert view["promotable"], view
        r = admin.post(f"{model}/promote", json={"requested_by": "the image loop test"})
        assert r.status_code == 200, r.text
        assert r.json()["outcome"] == "promoted" and r.json()["roles"]["primary"] == 2
        predict_live(admin, "digits", _images(later[:50]), version=2)


def _export_file(path: Path, x: np.ndarray, labels: list[str], split: str = "holdout") -> Path:
    """An export of digits rows written as `verdict-train export` writes them."""
    header = "prediction_id,version,captured_at,observed_at,predicted,score,split,label,"
    lines = [header + ",".join(PIXELS)]
    for i, (row, label) in enumerate(zip(x, labels, strict=True)):
        values = ",".join(repr(float(v)) for v in row)
        lines.append(f"p{i},1,{1000.0 + i},{2000.0 + i},0,0.5,{split},{label},{values}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_digits_version_against_itself_shows_no_clear_difference(tmp_path: Path) -> None:
    x, labels = inverted_digits(120, seed=3)
    examples = _export_file(tmp_path / "examples.csv", x, labels)
    out = tmp_path / "report"
    args = ["compare-versions", str(CHAMPION), str(CHAMPION), "--examples", str(examples)]
    assert main([*args, "--out", str(out), "--resamples", "500"]) == 0
    report = json.loads((out / "offline_comparison.json").read_text())
    assert report["verdict"] == "no_clear_difference"
    assert report["difference"]["cost_per_row"] == 0.0
    assert report["champion"]["confusion"] == report["challenger"]["confusion"]
    assert report["champion"]["errors"] > 0  # inverted digits: errors to agree on
    assert sum(report["examples"]["class_counts"].values()) == 120
    assert (out / "offline_comparison.png").read_bytes().startswith(b"\x89PNG")
    assert not (CHAMPION / "offline_comparison.json").exists()  # --out: the card untouched


def test_the_image_loop_refuses_what_does_not_fit_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x, labels = inverted_digits(20, seed=4)
    examples = _export_file(tmp_path / "examples.csv", x, labels, split="train")
    bc = ROOT / "models" / "breast-cancer" / "1"
    args = ["compare-versions", str(CHAMPION), str(bc), "--examples", str(examples)]
    assert main(args) == 1
    assert "two binary or two multiclass versions" in capsys.readouterr().err

    # A tabular export is no image export: the champion's 64 input columns are absent.
    tabular = tmp_path / "tabular.csv"
    tabular.write_text(
        "prediction_id,version,captured_at,observed_at,predicted,score,split,label,a\n"
        "p1,1,1.0,2.0,0,0.5,train,0,1.0\n"
    )
    retrain = ["retrain", str(CHAMPION), "--out", str(tmp_path / "runs")]
    assert main([*retrain, "--examples", str(tabular)]) == 1
    assert "lacks 64 of the 64 input columns" in capsys.readouterr().err

    # Labels that are not the model's classes, and an export with nothing to train on.
    bad = _export_file(tmp_path / "bad.csv", x, ["ten", *labels[1:]], split="train")
    assert main([*retrain, "--examples", str(bad)]) == 1
    assert "label 'ten' is not one of" in capsys.readouterr().err
    held = _export_file(tmp_path / "held.csv", x, labels, split="holdout")
    assert main([*retrain, "--examples", str(held)]) == 1
    assert "no rows marked split=train" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_an_image_input_has_a_column_per_value_in_the_order_the_model_reads() -> None:
    from training.production import columns_of

    digits = json.loads((CHAMPION / "manifest.json").read_text())
    assert columns_of(digits) == PIXELS
    wide = {"input": {"name": "x", "shape": [-1, 3, 2, 2], "feature_names": None}}
    assert columns_of(wide)[:5] == [
        "x[0][0][0]",
        "x[0][0][1]",
        "x[0][1][0]",
        "x[0][1][1]",
        "x[1][0][0]",
    ]
