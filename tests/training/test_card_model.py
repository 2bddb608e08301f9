"""The generated MODEL_CARD.md: produced with every model, its numbers agree with the manifest."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import uvicorn

from training.__main__ import main
from training.bounds import wilson
from training.card import CARD_FILE, HOLDOUT_FILE
from training.config import validate_config
from training.operating_point import COST_SCENARIOS, tradeoff_rows
from training.pipeline import run_training

PNG = b"\x89PNG\r\n\x1a\n"


def _train(root: Path, raw: dict[str, Any]) -> Path:
    return run_training(validate_config(raw), root / raw["name"], log=lambda m: None).path


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    return _train(
        root,
        {
            "name": "bc",
            "data": {
                "source": "sklearn",
                "name": "breast_cancer",
                "classes": ["benign", "malignant"],
                "max_rows": 160,
            },
            "model": {"type": "mlp", "hidden": [16]},
            "train": {"epochs": 6, "lr": 0.01, "progress": "none"},
            "cv": {"folds": 2},
            "decision": {
                "positive_class": "malignant",
                "cost_fp": 1.0,
                "cost_fn": 10.0,
                "max_fnr": 0.1,
            },
            "export": {"parity_batch_sizes": [1, 4]},
        },
    )


@pytest.fixture(scope="module")
def multiclass(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    return _train(
        root,
        {
            "name": "iris",
            "data": {"source": "sklearn", "name": "iris"},
            "model": {"type": "mlp", "hidden": [8]},
            "train": {"epochs": 3, "lr": 0.02, "progress": "none"},
            "cv": {"folds": 2},
            "export": {"parity_batch_sizes": [1, 4]},
        },
    )


def _load(folder: Path) -> tuple[dict[str, Any], dict[str, Any], str]:
    manifest = json.loads((folder / "manifest.json").read_text())
    hold = json.loads((folder / HOLDOUT_FILE).read_text())
    return manifest, hold, (folder / CARD_FILE).read_text()


def _section(card: str, title: str) -> str:
    start = card.index(f"## {title}")
    end = card.find("\n## ", start + 3)
    return card[start : end if end >= 0 else None]


def _table_rows(text: str, first_cell: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.startswith("| "):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if cells and cells[0].startswith(first_cell):
                rows.append(cells)
    return rows


def test_every_model_gets_a_card_with_its_pngs(binary: Path, multiclass: Path) -> None:
    for folder in (binary, multiclass):
        _, _, card = _load(folder)
        for title in (
            "Intended use",
            "Data",
            "How it was trained",
            "Quality, with its uncertainty",
            "The operating point in business terms",
            "How the model fails",
            "What to monitor after launch",
        ):
            assert f"## {title}" in card, (folder, title)
        images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", card)
        assert "confusion_matrix.png" in images and "loss_curve.png" in images
        for name in images:
            assert (folder / name).read_bytes().startswith(PNG), name
    assert "cost_curve.png" in (binary / CARD_FILE).read_text()


def test_binary_card_numbers_agree_with_the_manifest(binary: Path) -> None:
    m, hold, card = _load(binary)
    ev, dec, cv = m["evaluation"]["holdout"], m["decision"], m["evaluation"]["cv"]
    t = dec["threshold"]

    # Quality with uncertainty: CV mean ± std, held-out metrics, confusion matrix, per class.
    quality = _section(card, "Quality, with its uncertainty")
    assert f"| accuracy | {cv['accuracy_mean']:.4f} ± {cv['accuracy_std']:.4f} |" in quality
    assert f"| ROC AUC | {cv['roc_auc_mean']:.4f} ± {cv['roc_auc_std']:.4f} |" in quality
    assert f"| FPR at the threshold | {ev['fpr']:.4f} |" in quality
    fn, tp = int(ev["confusion_matrix"][1][0]), int(ev["confusion_matrix"][1][1])
    lo, hi = wilson(fn, fn + tp)
    fnr_row = f"| FNR at the threshold | {ev['fnr']:.4f} | {100 * lo:.1f}–{100 * hi:.1f}% "
    assert fnr_row + f"({fn} of {fn + tp}) |" in quality
    assert f"| FNR at the threshold | {ev['fnr']:.4f} |" in quality
    assert f"| accuracy at the threshold | {ev['accuracy']:.4f} |" in quality
    cm = np.asarray(ev["confusion_matrix"])
    for i, c in enumerate(m["output"]["classes"]):
        assert f"| {c} | {cm[i, 0]} | {cm[i, 1]} |" in quality
        recall = cm[i, i] / cm[i].sum()
        per_class = _table_rows(quality, c)[-1]
        assert per_class[4] == f"{recall:.4f}"

    # The operating point: threshold, reason, costs, targets, the trade-off table.
    op = _section(card, "The operating point in business terms")
    assert f"threshold {t:.4f}" in op
    assert dec["reason"] in op
    assert "costs 1, a missed malignant case (false negative) costs 10" in op
    assert "miss at most 10.0% of malignant cases" in op
    assert ("Warning**: the held-out FNR" in op) == (ev["fnr"] > 0.1)
    chosen = _table_rows(op, f"**{t:.4f} (chosen)**")
    assert len(chosen) == 1
    assert chosen[0][1] == f"{100 * ev['fpr']:.1f}%"
    assert chosen[0][2] == f"{100 * ev['fnr']:.1f}%"
    n = ev["n"]
    expected_cost = 1000 * (cm[0, 1] * 1.0 + cm[1, 0] * 10.0) / n
    assert chosen[0][3] == f"{expected_cost:.1f}"
    assert chosen[0][4] == f"{100 * (cm[0, 1] + cm[1, 1]) / n:.1f}%"
    assert len(_table_rows(op, "0.")) >= 10  # the grid of other thresholds

    # Estimate and bound for each rate, as in the manifest; whether the target is shown.
    evid = m["evaluation"]["threshold_evidence"]
    fnr_line = next(line for line in op.splitlines() if line.startswith("- **FNR, with"))
    assert f"{100 * evid['fnr']['estimate']:.1f}% ({evid['fnr']['errors']} of " in fnr_line
    assert f"at most {100 * dec['expected_fnr_upper']:.1f}%" in fnr_line
    if evid["fnr"]["met_with_confidence"]:
        assert "is shown with 95% confidence" in fnr_line
    elif not evid["fnr"]["enough_data"]:
        assert f"at least {evid['fnr']['min_labelled']} labelled malignant cases" in fnr_line
    else:
        assert "not shown with 95% confidence" in fnr_line
    assert f"at most {100 * dec['expected_fpr_upper']:.1f}%" in op

    # The trade-off table also shows each threshold on the scores it was chosen on; the
    # chosen one meets the targets there at the least cost.
    sel = hold["selection"]
    assert chosen[0][5] == f"{1000 * dec['expected_cost_per_row']:.1f}"
    assert chosen[0][6] == "yes"
    grid = [r for r in _table_rows(op, "0.") if len(r) == 7]
    assert all(float(r[5]) >= float(chosen[0][5]) for r in grid if r[6] == "yes")
    # Held-out rows that look cheaper than the chosen one are explained, with figures.
    cheaper = [r for r in grid if float(r[3]) < float(chosen[0][3])]
    why = "**Why not a cheaper-looking row?**" in op
    assert why == bool(cheaper)
    if cheaper:
        assert f"the {len(sel['scores'])} out-of-fold cases" in op
        for r in cheaper:
            assert f"{r[0]} ({r[3]})" in op

    # What changes with other costs: one row per scenario, plus the targets dropped.
    for label, _, _ in COST_SCENARIOS:
        assert len(_table_rows(op, label)) == 1
    assert len(_table_rows(op, "targets dropped")) == 1

    # How it fails: the count of wrong held-out rows is the confusion matrix's off-diagonal.
    fails = _section(card, "How the model fails")
    wrong = int(cm.sum() - np.trace(cm))
    assert f"**{wrong} of {n}**" in fails
    assert m["evaluation"]["fit"]["message"] in fails
    listed = _table_rows(fails, "")
    data_rows = [r for r in listed if r[0].isdigit()]
    assert len(data_rows) == min(wrong, 10)
    for r in data_rows:
        i = hold["rows"].index(int(r[0]))
        assert hold["y"][i] != hold["pred"][i]
        assert r[3] == f"{hold['proba'][i][1]:.4f}"
        assert "(z " in r[4]

    # Monitoring names the metric, the recording rules and the alerts, with this model.
    mon = _section(card, "What to monitor after launch")
    for name in (
        'verdict_outcomes_total{model="bc"',
        'model:verdict_fnr:ratio_rate1h{model="bc"}',
        'model:verdict_fpr:ratio_rate1h{model="bc"}',
        "VerdictFNRAboveTarget",
        "VerdictFeatureDrift",
        'verdict_objective_ratio{model="bc"}',
    ):
        assert name in mon, name
    assert "when above 10.0%" in mon


def test_holdout_record_agrees_with_the_manifest(binary: Path) -> None:
    m, hold, _ = _load(binary)
    ev = m["evaluation"]["holdout"]
    assert len(hold["y"]) == ev["n"] == m["training"]["split"]["test"]
    cm = np.zeros((2, 2), dtype=int)
    for y, p in zip(hold["y"], hold["pred"], strict=True):
        cm[y, p] += 1
    assert cm.tolist() == ev["confusion_matrix"]
    assert hold["threshold"] == m["decision"]["threshold"]
    y_pos = np.asarray(hold["y"]) == 1
    scores = np.asarray(hold["proba"])[:, 1]
    row = next(r for r in tradeoff_rows(y_pos, scores, hold["threshold"], 1.0, 10.0) if r["chosen"])
    assert row["fpr"] == pytest.approx(ev["fpr"])
    assert row["fnr"] == pytest.approx(ev["fnr"])
    assert len(hold["selection"]["scores"]) == len(hold["selection"]["y_pos"])


def test_multiclass_card(multiclass: Path) -> None:
    m, _, card = _load(multiclass)
    cv = m["evaluation"]["cv"]
    assert f"{cv['macro_f1_mean']:.4f} ± {cv['macro_f1_std']:.4f}" in card
    op = _section(card, "The operating point in business terms")
    assert "no threshold" in op
    for c in m["output"]["classes"]:
        assert len(_table_rows(_section(card, "Quality, with its uncertainty"), c)) == 2
    assert "verdict_labeled_predictions_total" in card
    assert "verdict_outcomes_total" not in card


def test_card_subcommand_regenerates_the_card(
    binary: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (binary / CARD_FILE).read_text()
    (binary / CARD_FILE).unlink()
    (binary / "confusion_matrix.png").unlink()
    assert main(["card", str(binary)]) == 0
    assert capsys.readouterr().out.strip() == str(binary / CARD_FILE)
    after = (binary / CARD_FILE).read_text()
    # Only the generation time may differ.
    strip = re.compile(r"^Generated .*$", re.M)
    assert strip.sub("", after) == strip.sub("", before)
    assert (binary / "confusion_matrix.png").read_bytes().startswith(PNG)

    (tmp_path / "manifest.json").write_text((binary / "manifest.json").read_text())
    assert main(["card", str(tmp_path)]) == 1
    assert "no holdout.json" in capsys.readouterr().err


def test_card_page_renders_in_a_real_browser(binary: Path, tmp_path: Path) -> None:
    # The card of a real trained model, served by the card router on a real uvicorn, opened
    # by headless chromium: the DOM holds the rendered tables and every PNG was fetched.
    from fastapi import FastAPI, Request, Response

    from service.http.routes.cards import router

    app = FastAPI()
    app.state.settings = SimpleNamespace(model_repository=str(binary.parent.parent))
    app.include_router(router)
    seen: list[tuple[str, int]] = []

    @app.middleware("http")
    async def record(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        seen.append((request.url.path, response.status_code))
        return response

    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        assert server.started
        port = server.servers[0].sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}/models/bc/card"
        profile = tmp_path / "chromium-profile"
        proc = subprocess.run(
            [
                shutil.which("chromium") or "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    manifest = json.loads((binary / "manifest.json").read_text())
    assert "<title>Model card: bc, version 1</title>" in dom
    assert dom.count("<table>") >= 6
    assert '<h2 id="what-to-monitor-after-launch">What to monitor after launch</h2>' in dom
    assert f"threshold {manifest['decision']['threshold']:.4f}" in dom
    assert "<script" not in dom.split("<body>", 1)[1]
    images = re.findall(r'<img src="card/assets/([^"?]+)\?version=1"', dom)
    assert sorted(images) == ["confusion_matrix.png", "cost_curve.png", "loss_curve.png"]
    for name in images:
        assert (f"/models/bc/card/assets/{name}", 200) in seen, seen


def test_card_subcommand_explains_an_incomplete_holdout_record(
    binary: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "manifest.json").write_text((binary / "manifest.json").read_text())
    hold = json.loads((binary / HOLDOUT_FILE).read_text())
    del hold["train_stats"]
    (tmp_path / HOLDOUT_FILE).write_text(json.dumps(hold))
    assert main(["card", str(tmp_path)]) == 1
    assert "lacks what the card needs" in capsys.readouterr().err
    assert not (tmp_path / CARD_FILE).exists()


def test_wilson_interval_known_values() -> None:
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)


def test_card_rebuild_recreates_the_holdout_record_of_an_older_version(
    binary: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A version trained before held-out records were saved: no holdout.json, no card.
    old = tmp_path / "bc" / "1"
    shutil.copytree(binary, old)
    (old / HOLDOUT_FILE).unlink()
    (old / CARD_FILE).unlink()
    assert main(["card", str(old)]) == 1
    assert "no holdout.json" in capsys.readouterr().err

    assert main(["card", "--rebuild", str(old)]) == 0
    assert json.loads((old / HOLDOUT_FILE).read_text()) == json.loads(
        (binary / HOLDOUT_FILE).read_text()
    )
    assert (old / CARD_FILE).is_file()
    assert (old / "model.onnx").read_bytes() == (binary / "model.onnx").read_bytes()

    # A manifest whose graph the config does not reproduce gets no record.
    other = tmp_path / "other" / "1"
    shutil.copytree(binary, other)
    (other / HOLDOUT_FILE).unlink()
    m = json.loads((other / "manifest.json").read_text())
    m["sha256"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(m))
    assert main(["card", "--rebuild", str(other)]) == 1
    assert "gave another graph" in capsys.readouterr().err
    assert not (other / HOLDOUT_FILE).exists()


def test_card_says_plainly_when_the_data_is_too_small_or_the_target_is_shown() -> None:
    from training.bounds import evidence
    from training.operating_point import _evidence

    def lines(fnr: dict[str, Any]) -> list[str]:
        manifest = {
            "decision": {"meet_targets_on": "estimate", "expected_cost_per_row": 0.1},
            "objectives": {"max_fnr": fnr["target"], "max_fpr": None},
            "evaluation": {
                "threshold_evidence": {
                    "source": "out-of-fold",
                    "level": 0.95,
                    "fnr": fnr,
                    "fpr": evidence(3, 300, None, 0.95),
                }
            },
        }
        return _evidence(manifest, None, "malignant", 1.0, 20.0)

    small = lines(evidence(0, 42, 0.02, 0.95))[0]
    assert "**42 malignant cases are too few to show the target 2.0% with 95% confidence" in small
    assert "that takes at least 149 labelled malignant cases with none missed." in small
    shown = lines(evidence(0, 200, 0.02, 0.95))[0]
    assert shown.endswith(
        "at most 1.5% (one-sided upper bound, Clopper–Pearson): the target "
        "2.0% is shown with 95% confidence."
    )
    missed = lines(evidence(9, 200, 0.02, 0.95))[0]
    assert missed.endswith("the target 2.0% is not met.")
