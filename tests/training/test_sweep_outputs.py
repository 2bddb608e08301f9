"""Tiny real Optuna sweeps: outputs, the best config, resuming, pruning and the budget."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import yaml

from training.__main__ import main
from training.config import load_config, validate_config
from training.search_space import SweepError, parse_search
from training.sweep import run_sweep

PNG = b"\x89PNG\r\n\x1a\n"


def _raw(**search: Any) -> dict[str, Any]:
    spec = {
        "metric": "log_loss",
        "folds": 2,
        "seeds": [0, 1],
        "trials": 3,
        "startup_trials": 3,
        "params": {
            "train.lr": {"type": "log_uniform", "low": 1e-3, "high": 5e-2},
            "train.epochs": {"type": "int", "low": 1, "high": 3},
            "model.hidden": {"type": "choice", "values": [[8], [16, 8]]},
            "model.activation": {"type": "choice", "values": ["relu", "tanh"]},
            "model.dropout": {"type": "uniform", "low": 0.0, "high": 0.3},
        },
    }
    spec.update(search)
    return {
        "name": "tiny",
        "seed": 0,
        "data": {"source": "sklearn", "name": "breast_cancer", "max_rows": 90},
        "model": {"type": "mlp", "hidden": [8]},
        "train": {"epochs": 2, "batch_size": 32, "progress": "none"},
        "cv": {"folds": 2},
        "search": spec,
    }


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_tiny_sweep_writes_table_best_config_and_plots(tmp_path: Path) -> None:
    cfg = validate_config(_raw())
    out = tmp_path / "sweep"
    lines: list[str] = []
    result = run_sweep(cfg, out, trials=3, log=lines.append, progress_bar=False)

    assert (out / "study.db").is_file()
    rows = _rows(out / "trials.csv")
    assert [r["trial"] for r in rows] == ["0", "1", "2"]
    assert {"state", "log_loss", "log_loss_std", "epochs_run_mean", "train.lr"} <= set(rows[0])
    complete = [r for r in rows if r["state"] == "complete"]
    assert len(complete) == result.trials_complete == 3  # no pruning before 3 startup trials
    assert all(r["fits"] == "4" for r in complete)  # 2 folds x 2 seeds
    best_row = min(complete, key=lambda r: float(r["log_loss"]))
    assert float(best_row["log_loss"]) == pytest.approx(result.best_value, abs=1e-6)

    # The best config is a plain training config holding the best trial's values.
    best = load_config(out / "best.yaml")
    assert best.search is None
    assert best.train.lr == pytest.approx(result.best_overrides["train.lr"])
    assert best.train.epochs == result.best_overrides["train.epochs"]
    assert best.model.hidden == result.best_overrides["model.hidden"]  # type: ignore[union-attr]
    assert best.train.lr == pytest.approx(float(best_row["train.lr"]), rel=1e-3)
    assert "python -m training train" in (out / "best.yaml").read_text()

    for name in ("score_vs_lr.png", "score_vs_epochs.png", "importances.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 2000, name
    imp = yaml.safe_load((out / "importances.json").read_text())["importances"]
    assert set(imp) == set(parse_search(cfg).params)
    # Progress: one line per trial as it ends, and a summary.
    assert sum(line.startswith("trial ") for line in lines) == 3
    assert "3 complete" in lines[-1]


def test_sweep_resumes_from_its_sqlite_study(tmp_path: Path) -> None:
    cfg = validate_config(_raw())
    out = tmp_path / "sweep"
    run_sweep(cfg, out, trials=2, log=lambda m: None, progress_bar=False)
    lines: list[str] = []
    result = run_sweep(cfg, out, trials=1, log=lines.append, progress_bar=False)
    assert "resuming after 2 trials" in lines[0]
    assert result.trials_total == 3
    assert [r["trial"] for r in _rows(out / "trials.csv")] == ["0", "1", "2"]


def test_hopeless_trial_is_pruned(tmp_path: Path) -> None:
    # Trial 0 learns; trial 1 cannot (a learning rate of 1e-7 leaves the loss where it began)
    # and is stopped after its first fold: it is outside the best 75% of earlier trials there.
    good = {"train.lr": 0.05, "train.epochs": 3, "model.hidden": [16, 8]}
    good |= {"model.activation": "relu", "model.dropout": 0.0}
    bad = {**good, "train.lr": 1e-7, "train.epochs": 1}
    spec = _raw(startup_trials=1, seeds=[0], warmup_folds=0)
    spec["search"]["params"]["train.lr"]["low"] = 1e-8
    cfg = validate_config(spec)
    result = run_sweep(
        cfg, tmp_path / "s", trials=2, log=lambda m: None, progress_bar=False, enqueue=[good, bad]
    )
    rows = _rows(tmp_path / "s" / "trials.csv")
    assert [r["state"] for r in rows] == ["complete", "pruned"]
    assert rows[1]["pruned_after_fits"] == "1"
    assert rows[1]["log_loss"] == "" and float(rows[1]["running_mean_when_pruned"]) > float(
        rows[0]["log_loss"]
    )
    assert result.trials_pruned == 1
    assert (tmp_path / "s" / "score_vs_lr.png").read_bytes().startswith(PNG)


def test_timeout_bounds_the_sweep(tmp_path: Path) -> None:
    cfg = validate_config(_raw(trials=1000, seeds=[0]))
    result = run_sweep(cfg, tmp_path / "s", timeout_s=0.5, log=lambda m: None, progress_bar=False)
    assert 1 <= result.trials_total < 1000


def test_cli_sweep_and_its_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_raw(seeds=[0])))
    out = tmp_path / "o"
    assert main(["sweep", str(path), "--trials", "1", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert len(_rows(out / "trials.csv")) == 1

    no_search = _raw()
    del no_search["search"]
    path.write_text(yaml.safe_dump(no_search))
    assert main(["sweep", str(path), "--trials", "1", "--out", str(out)]) == 1
    assert "no search: section" in capsys.readouterr().err

    bad = _raw()
    bad["search"]["params"]["data.name"] = {"type": "choice", "values": ["iris"]}
    path.write_text(yaml.safe_dump(bad))
    assert main(["sweep", str(path), "--trials", "1", "--out", str(out)]) == 1
    assert "only model.* and train.*" in capsys.readouterr().err

    bad = _raw()
    bad["search"]["params"]["model.activation"]["values"] = ["relu", "swish"]
    path.write_text(yaml.safe_dump(bad))
    assert main(["sweep", str(path), "--trials", "1", "--out", str(out)]) == 1
    assert "'swish' is invalid" in capsys.readouterr().err


def test_nested_params_from_set_overrides_mean_the_same_field() -> None:
    raw = _raw()
    raw["search"]["params"] = {"train": {"lr": {"type": "log_uniform", "low": 1e-4, "high": 1e-2}}}
    assert list(parse_search(validate_config(raw)).params) == ["train.lr"]


def test_shipped_sweep_configs_validate() -> None:
    root = Path(__file__).resolve().parents[2] / "configs"
    for name in ("sweep-breast-cancer.yaml", "sweep-digits.yaml"):
        cfg = load_config(root / name)
        assert len(parse_search(cfg).params) >= 5


def test_resume_refuses_another_scoring(tmp_path: Path) -> None:
    out = tmp_path / "s"
    run_sweep(validate_config(_raw(seeds=[0])), out, trials=1, log=lambda m: None)
    with pytest.raises(SweepError, match="was scored with"):
        run_sweep(validate_config(_raw(seeds=[0], metric="accuracy")), out, trials=1)
    assert len(_rows(out / "trials.csv")) == 1


def test_interrupted_sweep_keeps_its_trials_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ctrl-C inside a trial: raised from the second trial's first fit.
    import training.sweep as sweep_mod

    cfg = validate_config(_raw(seeds=[0]))
    out = tmp_path / "s"
    calls = {"n": 0}
    real = sweep_mod.train_model

    def interrupting(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:  # trial 0 makes 2 fits; the first fit of trial 1 is interrupted
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    lines: list[str] = []
    monkeypatch.setattr(sweep_mod, "train_model", interrupting)
    result = run_sweep(cfg, out, trials=3, log=lines.append, progress_bar=False)
    monkeypatch.undo()
    assert any(line.startswith("interrupted") for line in lines)
    assert [r["state"] for r in _rows(out / "trials.csv")] == ["complete", "fail"]
    assert result.trials_complete == 1
    assert (out / "best.yaml").is_file()
    result = run_sweep(cfg, out, trials=1, log=lambda m: None, progress_bar=False)
    assert [r["state"] for r in _rows(out / "trials.csv")] == ["complete", "fail", "complete"]
