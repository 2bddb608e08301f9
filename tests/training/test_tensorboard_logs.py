"""TensorBoard event logs: written when the config asks, read back with TensorBoard's reader."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from training.config import validate_config
from training.pipeline import run_training


def _raw(log_dir: Path | None, **train: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "tb",
        "data": {"source": "sklearn", "name": "iris"},
        "model": {"type": "mlp", "hidden": [8]},
        "train": {"epochs": 3, "lr": 0.01, "progress": "none", **train},
        "cv": {"folds": 0},
        "export": {"parity_batch_sizes": [1, 2]},
    }
    if log_dir is not None:
        raw["tensorboard"] = {"enabled": True, "log_dir": str(log_dir)}
    return raw


def test_training_writes_tensorboard_events(tmp_path: Path) -> None:
    logs = tmp_path / "runs"
    lines: list[str] = []
    result = run_training(validate_config(_raw(logs, lr=0.02)), tmp_path / "m", log=lines.append)
    runs = list((logs / "tb").iterdir())
    assert len(runs) == 1
    assert any(f"tensorboard --logdir {logs}" in line for line in lines)

    acc = EventAccumulator(str(runs[0]), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = set(tags["scalars"])
    assert {
        "loss/train",
        "loss/validation",
        "accuracy/train",
        "accuracy/validation",
        "learning_rate",
    } <= scalars
    history = result.manifest["training"]["config"]["train"]
    assert history["epochs"] == 3
    # One point per recorded epoch (0 = untrained), equal to the history the artifact keeps.
    hist = json.loads((result.path / "history.json").read_text())
    train_loss = acc.Scalars("loss/train")
    assert [e.step for e in train_loss] == hist["epochs"]
    assert [e.value for e in train_loss] == pytest.approx(hist["train_loss"], rel=1e-5)
    val_acc = acc.Scalars("accuracy/validation")
    assert [e.value for e in val_acc] == pytest.approx(hist["val_accuracy"], rel=1e-5)
    lrs = [e.value for e in acc.Scalars("learning_rate")]
    assert lrs == pytest.approx([0.02] * len(hist["epochs"]))
    # The graph of the network is there too.
    assert tags["graph"] is True
    graph = acc.Graph()
    assert any("Linear" in node.op or "linear" in node.name.lower() for node in graph.node)


def test_tensorboard_is_off_by_default_and_pngs_stay(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = validate_config(_raw(None))
    assert cfg.tensorboard.enabled is False
    result = run_training(cfg, tmp_path / "m", log=lambda m: None)
    assert not (tmp_path / "runs").exists()
    assert (result.path / "loss_curve.png").is_file()


def test_learning_rate_curve_follows_the_schedule(tmp_path: Path) -> None:
    logs = tmp_path / "runs"
    raw = _raw(logs, lr=0.04, lr_schedule="cosine", epochs=4)
    raw["train"]["early_stopping"] = {"enabled": False}
    run_training(validate_config(raw), tmp_path / "m", log=lambda m: None)
    (run,) = list((logs / "tb").iterdir())
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    lrs = [e.value for e in acc.Scalars("learning_rate")]
    # Logged after each epoch: the rate the next epoch uses; cosine falls to 0 at the end.
    assert lrs[0] == pytest.approx(0.04)
    assert all(b < a for a, b in itertools.pairwise(lrs))
    assert lrs[-1] == pytest.approx(0.0, abs=1e-9)
