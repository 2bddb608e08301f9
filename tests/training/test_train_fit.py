"""Every knob builds and trains; early stopping restores the best epoch; eval-mode losses."""

from typing import Any

import numpy as np
import pytest
import torch

from training.config import CNNConfig, MLPConfig, TrainConfig, validate_config
from training.data import load_dataset, split_dataset
from training.fit import evaluate_loss, fit, loss_fn, seed_everything, train_model
from training.nets import build_net


def _iris(**over: Any) -> tuple[Any, Any, Any]:
    raw: dict[str, Any] = {
        "name": "knob",
        "data": {"name": "iris"},
        "model": {"hidden": [16]},
        "train": {"epochs": 8, "lr": 0.03, "batch_size": 16, "progress": "none"},
        "cv": {"folds": 0},
    }
    for key, value in over.items():
        section, _, field = key.partition("__")
        raw[section][field] = value
    cfg = validate_config(raw)
    ds = load_dataset(cfg.data)
    return cfg, ds, split_dataset(ds.y, cfg.data, cfg.seed)


MLP_KNOBS = [
    {"model__activation": a} for a in ("relu", "leaky_relu", "tanh", "sigmoid", "gelu")
] + [
    {"model__norm": "batch"},
    {"model__norm": "layer"},
    {"model__init": "xavier"},
    {"model__dropout": 0.3},
    {"model__hidden": [8, 8, 8]},
    {"model__hidden": []},
    {"train__optimizer": "sgd", "train__lr": 0.2},
    {"train__optimizer": "momentum", "train__lr": 0.05},
    {"train__optimizer": "adagrad", "train__lr": 0.1},
    {"train__optimizer": "rmsprop", "train__lr": 0.01},
    {"train__optimizer": "adam"},
    {"train__optimizer": "adamw", "train__weight_decay": 0.1},
    {"train__targets": "categorical"},
    {"train__lr_schedule": "cosine"},
    {"train__batch_size": 7, "model__norm": "batch"},
]


@pytest.mark.parametrize(
    "knobs", MLP_KNOBS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items())
)
def test_mlp_knob_builds_and_trains(knobs: dict[str, Any]) -> None:
    cfg, ds, split = _iris(**knobs)
    model = train_model(cfg, ds, split.train, split.val, seed=0)
    h = model.history
    assert h.epochs[0] == 0 and len(h.train_loss) == len(h.val_loss) == len(h.epochs)
    assert all(np.isfinite(h.train_loss))
    assert min(h.train_loss) < h.train_loss[0] * 0.9, h.train_loss
    proba = model.predict_proba(ds.x[split.test])
    assert proba.shape == (len(split.test), 3)
    assert np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)


CNN_KNOBS = [
    {},
    {"pool": "avg", "activation": "gelu"},
    {"pool": "none", "batch_norm": False, "head_hidden": None},
    {"convs_per_block": 2, "kernel_size": 5, "dropout": 0.2, "head_dropout": 0.2},
    {"channels": [4, 4, 4, 4], "init": "xavier", "activation": "leaky_relu"},
]


@pytest.mark.parametrize("knobs", CNN_KNOBS, ids=str)
def test_cnn_knob_builds_and_trains(knobs: dict[str, Any]) -> None:
    cfg = validate_config(
        {
            "name": "cnn",
            "data": {"name": "digits", "max_rows": 200, "scaling": "global"},
            "model": {"type": "cnn", "channels": [4, 8], "head_hidden": 16, **knobs},
            "train": {"epochs": 4, "lr": 0.01, "progress": "none", "augment_shift": 1},
            "cv": {"folds": 0},
        }
    )
    ds = load_dataset(cfg.data, cfg.seed)
    split = split_dataset(ds.y, cfg.data, cfg.seed)
    model = train_model(cfg, ds, split.train, split.val, seed=0)
    assert min(model.history.train_loss) < model.history.train_loss[0]
    out = model.net(torch.zeros(5, 1, 8, 8))
    assert out.shape == (5, 10)


def test_cnn_needs_an_image_shape() -> None:
    with pytest.raises(ValueError, match="image_shape"):
        build_net(CNNConfig(), 30, 2, None)


def test_sparse_and_one_hot_targets_give_the_same_loss() -> None:
    logits = torch.randn(6, 3)
    y = torch.tensor([0, 2, 1, 1, 0, 2])
    onehot = torch.nn.functional.one_hot(y, 3).float()
    assert torch.allclose(loss_fn(logits, y), loss_fn(logits, onehot))
    # One-hot arrays are accepted as they come, as well as built from indices.
    cfg, ds, split = _iris()
    seed_everything(0)
    net = build_net(MLPConfig(hidden=[8]), 4, 3, None)
    onehot_train = np.eye(3)[ds.y[split.train]]
    h = fit(net, ds.x[split.train], onehot_train, ds.x[split.val], ds.y[split.val], cfg.train, 3)
    assert min(h.train_loss) < h.train_loss[0]


def _noisy_problem(seed: int = 0) -> tuple[np.ndarray, ...]:
    # Random labels: a wide net memorises the training rows and the validation loss turns.
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(120, 10)).astype(np.float32)
    y = rng.integers(0, 2, size=120)
    return x[:80], y[:80], x[80:], y[80:]


def test_early_stopping_restores_the_best_epoch() -> None:
    xt, yt, xv, yv = _noisy_problem()
    cfg = TrainConfig(
        optimizer="adam",
        lr=0.01,
        epochs=300,
        batch_size=16,
        progress="none",
        early_stopping={"patience": 5, "min_delta": 0.0},
    )
    seed_everything(0)
    net = build_net(MLPConfig(hidden=[128, 128]), 10, 2, None)
    h = fit(net, xt, yt, xv, yv, cfg, 2)
    assert h.stopped_early and h.restored_best
    assert h.epochs[-1] == h.best_epoch + 5
    assert h.best_epoch == int(np.argmin(h.val_loss))
    vl, _ = evaluate_loss(net, torch.from_numpy(xv), torch.from_numpy(yv))
    assert vl == pytest.approx(h.val_loss[h.best_epoch], rel=1e-5)
    assert vl < h.val_loss[-1]


def test_best_weights_restored_without_early_stopping_too() -> None:
    xt, yt, xv, yv = _noisy_problem(1)
    cfg = TrainConfig(
        lr=0.01, epochs=40, batch_size=16, progress="none", early_stopping={"enabled": False}
    )
    seed_everything(0)
    net = build_net(MLPConfig(hidden=[128, 128]), 10, 2, None)
    h = fit(net, xt, yt, xv, yv, cfg, 2)
    assert not h.stopped_early and h.epochs[-1] == 40
    assert h.best_epoch < 40
    vl, _ = evaluate_loss(net, torch.from_numpy(xv), torch.from_numpy(yv))
    assert vl == pytest.approx(min(h.val_loss), rel=1e-5)


def test_min_delta_ignores_small_improvements() -> None:
    xt, yt, xv, yv = _noisy_problem(2)
    cfg = TrainConfig(
        lr=0.001, epochs=30, progress="none", early_stopping={"patience": 3, "min_delta": 10.0}
    )
    seed_everything(0)
    net = build_net(MLPConfig(hidden=[8]), 10, 2, None)
    h = fit(net, xt, yt, xv, yv, cfg, 2)
    assert h.best_epoch == 0 and h.epochs[-1] == 3 and h.stopped_early


def test_train_loss_is_measured_in_eval_mode() -> None:
    cfg, ds, split = _iris(model__dropout=0.5, model__norm="batch")
    model = train_model(cfg, ds, split.train, split.val, seed=0)
    xt = torch.from_numpy(model.scaler.transform(ds.x[split.train]))
    tl, _ = evaluate_loss(model.net, xt, torch.from_numpy(ds.y[split.train]))
    # The restored weights reproduce the recorded (eval-mode) train loss exactly.
    assert tl == pytest.approx(model.history.train_loss[model.history.best_epoch], rel=1e-5)
    assert not model.net.training


def test_progress_line_per_epoch(capsys: pytest.CaptureFixture[str]) -> None:
    cfg, ds, split = _iris(train__progress="line", train__epochs=3)
    train_model(cfg, ds, split.train, split.val, seed=0, label="iris")
    err = capsys.readouterr().err
    assert "iris epoch 3/3 train_loss" in err and "val_loss" in err


def test_training_is_reproducible() -> None:
    cfg, ds, split = _iris(model__dropout=0.2)
    a = train_model(cfg, ds, split.train, split.val, seed=3).history.val_loss
    b = train_model(cfg, ds, split.train, split.val, seed=3).history.val_loss
    assert a == b


def test_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    cfg, ds, split = _iris(train__progress="bar", train__epochs=3)
    train_model(cfg, ds, split.train, split.val, seed=0, label="iris-bar")
    err = capsys.readouterr().err
    assert "iris-bar" in err and "3/3" in err and "val_loss" in err
