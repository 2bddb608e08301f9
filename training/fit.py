"""The training loop: optimisers, sparse or one-hot targets, early stopping, loss history."""

from __future__ import annotations

import copy
import math
import random
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import CNNConfig, Config, TrainConfig
from .data import Dataset, Scaler
from .nets import build_net


def seed_everything(seed: int, threads: int = 1) -> None:
    """Seed python, numpy and torch; deterministic kernels; a fixed CPU thread count."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)


@dataclass
class History:
    """Per-epoch losses; epoch 0 is the untrained network. Both losses are in eval mode."""

    epochs: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = math.inf
    stopped_early: bool = False
    restored_best: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_optimizer(params: Any, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser named in the config, with its learning rate and weight decay."""
    wd = cfg.weight_decay
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=wd)
    if cfg.optimizer == "momentum":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=wd)
    if cfg.optimizer == "adagrad":
        return torch.optim.Adagrad(params, lr=cfg.lr, weight_decay=wd)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, weight_decay=wd)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=wd)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=wd)


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for class indices (1-D, sparse) or one-hot rows (2-D, categorical)."""
    if target.ndim == 2:
        return -(target * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()
    return F.cross_entropy(logits, target)


def as_input(x: np.ndarray, image_shape: tuple[int, int] | None) -> torch.Tensor:
    """Rows as a float32 tensor, reshaped to [N, 1, H, W] for images."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if image_shape is not None:
        t = t.reshape(-1, 1, *image_shape)
    return t


def as_target(y: np.ndarray, n_classes: int, targets: str) -> torch.Tensor:
    """Class indices, or one-hot rows when targets is categorical; one-hot input passes through."""
    y = np.asarray(y)
    if y.ndim == 2:
        if y.shape[1] != n_classes:
            raise ValueError(f"one-hot targets have {y.shape[1]} columns, expected {n_classes}")
        return torch.from_numpy(y.astype(np.float32))
    t = torch.from_numpy(y.astype(np.int64))
    if targets == "categorical":
        return F.one_hot(t, n_classes).float()
    return t


def _shift(xb: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    # Random translation per image, edges replicated (the digits' border is background).
    n, _, h, w = xb.shape
    padded = F.pad(xb, (max_shift,) * 4, mode="replicate")
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    out = torch.empty_like(xb)
    for sy in range(2 * max_shift + 1):
        for sx in range(2 * max_shift + 1):
            m = (dy == sy) & (dx == sx)
            if m.any():
                out[m] = padded[m, :, sy : sy + h, sx : sx + w]
    return out


@torch.no_grad()
def evaluate_loss(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 4096
) -> tuple[float, float]:
    """Mean loss and accuracy in eval mode."""
    net.eval()
    total, correct = 0.0, 0
    for i in range(0, len(x), batch):
        logits = net(x[i : i + batch])
        yb = y[i : i + batch]
        total += float(loss_fn(logits, yb)) * len(yb)
        truth = yb.argmax(dim=-1) if yb.ndim == 2 else yb
        correct += int((logits.argmax(dim=-1) == truth).sum())
    return total / len(x), correct / len(x)


@torch.no_grad()
def predict_proba(net: nn.Module, x: np.ndarray, image_shape: tuple[int, int] | None) -> np.ndarray:
    """Softmax probabilities in eval mode."""
    net.eval()
    return torch.softmax(net(as_input(x, image_shape)), dim=-1).numpy().astype(np.float64)


def _progress_mode(mode: str) -> str:
    if mode == "auto":
        return "bar" if sys.stderr.isatty() else "line"
    return mode


def fit(
    net: nn.Module,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    cfg: TrainConfig,
    n_classes: int,
    image_shape: tuple[int, int] | None = None,
    seed: int = 0,
    progress: str | None = None,
    label: str = "",
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> History:
    """Train `net` in place on scaled rows; always ends holding the best-validation weights.

    `on_epoch(epoch, values)` (e.g. TensorBoard) gets the losses, accuracies and learning rate.
    """
    gen = torch.Generator().manual_seed(seed)
    xt, xv = as_input(x_train, image_shape), as_input(x_val, image_shape)
    yt = as_target(y_train, n_classes, cfg.targets)
    yv = as_target(y_val, n_classes, cfg.targets)
    opt = make_optimizer(net.parameters(), cfg)
    sched = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
        if cfg.lr_schedule == "cosine"
        else None
    )
    hist = History()
    es = cfg.early_stopping
    best_state = copy.deepcopy(net.state_dict())
    since_best = 0
    n = len(xt)
    has_bn = any(isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) for m in net.modules())
    mode = _progress_mode(progress or cfg.progress)
    bar: Any = None
    if mode == "bar":
        from tqdm import tqdm

        bar = tqdm(total=cfg.epochs, desc=label or "train", unit="epoch", leave=True)

    def record(epoch: int) -> float:
        tl, ta = evaluate_loss(net, xt, yt)
        vl, va = evaluate_loss(net, xv, yv)
        hist.epochs.append(epoch)
        hist.train_loss.append(tl)
        hist.val_loss.append(vl)
        hist.train_accuracy.append(ta)
        hist.val_accuracy.append(va)
        if mode == "line":
            print(
                f"{label + ' ' if label else ''}epoch {epoch}/{cfg.epochs} "
                f"train_loss {tl:.4f} val_loss {vl:.4f} val_acc {va:.4f}",
                file=sys.stderr,
                flush=True,
            )
        elif bar is not None:
            bar.set_postfix(train_loss=f"{tl:.4f}", val_loss=f"{vl:.4f}", val_acc=f"{va:.3f}")
        if on_epoch is not None:
            lr = float(opt.param_groups[0]["lr"])
            on_epoch(
                epoch,
                {
                    "train_loss": tl,
                    "val_loss": vl,
                    "train_accuracy": ta,
                    "val_accuracy": va,
                    "lr": lr,
                },
            )
        return vl

    hist.best_val_loss = record(0)
    try:
        for epoch in range(1, cfg.epochs + 1):
            net.train()
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n, cfg.batch_size):
                idx = perm[i : i + cfg.batch_size]
                if has_bn and len(idx) < 2:
                    continue  # batch norm cannot train on a single row
                xb = xt[idx]
                if cfg.augment_shift and image_shape is not None:
                    xb = _shift(xb, cfg.augment_shift, gen)
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(net(xb), yt[idx])
                loss.backward()
                opt.step()
            if sched is not None:
                sched.step()
            vl = record(epoch)
            if bar is not None:
                bar.update(1)
            if not math.isfinite(vl):
                break
            if vl < hist.best_val_loss - es.min_delta:
                hist.best_val_loss, hist.best_epoch = vl, epoch
                best_state = copy.deepcopy(net.state_dict())
                since_best = 0
            else:
                since_best += 1
                if es.enabled and since_best >= es.patience:
                    hist.stopped_early = True
                    break
    finally:
        if bar is not None:
            bar.close()
    # Early stopping or not, the run ends on the weights of the best validation epoch.
    net.load_state_dict(best_state)
    hist.restored_best = hist.best_epoch != hist.epochs[-1]
    net.eval()
    return hist


@dataclass
class TrainedModel:
    """A trained network with the scaler fitted on its training rows."""

    net: nn.Module
    scaler: Scaler
    history: History
    image_shape: tuple[int, int] | None

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return predict_proba(self.net, self.scaler.transform(x), self.image_shape)


def train_model(
    cfg: Config,
    ds: Dataset,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    seed: int,
    progress: str | None = None,
    label: str = "",
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainedModel:
    """Fit the scaler on the training rows, build the configured net and train it."""
    seed_everything(seed, cfg.train.threads)
    scaler = Scaler.fit(ds.x[train_idx], cfg.data.scaling)
    image_shape = ds.image_shape if isinstance(cfg.model, CNNConfig) else None
    net = build_net(cfg.model, ds.x.shape[1], len(ds.classes), image_shape)
    hist = fit(
        net,
        scaler.transform(ds.x[train_idx]),
        ds.y[train_idx],
        scaler.transform(ds.x[val_idx]),
        ds.y[val_idx],
        cfg.train,
        len(ds.classes),
        image_shape,
        seed=seed,
        progress=progress,
        label=label,
        on_epoch=on_epoch,
    )
    return TrainedModel(net, scaler, hist, image_shape)
