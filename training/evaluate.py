"""Evaluation: fit diagnosis, metrics, stratified k-fold CV, the held-out report."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score
from sklearn.model_selection import StratifiedKFold, train_test_split

from .bounds import CONFIDENCE, upper_bound
from .config import Config
from .data import Dataset
from .threshold import confusion_at

NOT_LEARNING = "not_learning"
OVER_FITTING = "over_fitting"
GOOD_FIT = "good_fit"


@dataclass
class Diagnosis:
    """What the loss curves say about the fit."""

    diagnosis: str
    best_epoch: int
    message: str
    turn_epoch: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "diagnosis": self.diagnosis,
            "best_epoch": self.best_epoch,
            "turn_epoch": self.turn_epoch,
            "message": self.message,
        }


def diagnose(
    epochs: Sequence[int],
    train_loss: Sequence[float],
    val_loss: Sequence[float],
    min_improvement: float = 0.05,
    overfit_rise: float = 0.1,
) -> Diagnosis:
    """Not learning, over-fitting (with the epoch where validation loss turned) or a good fit.

    Not learning: the best validation loss is the untrained one, or the training loss fell by
    less than `min_improvement` (relative) from the first recorded epoch. Over-fitting: after
    its best epoch the validation loss rose by more than `overfit_rise` (relative) while the
    training loss kept falling.
    """
    if not epochs or len(epochs) != len(train_loss) or len(epochs) != len(val_loss):
        raise ValueError("diagnose needs equally long, non-empty curves")
    tl = np.asarray(train_loss, dtype=np.float64)
    vl = np.asarray(val_loss, dtype=np.float64)
    vl_clean = np.where(np.isfinite(vl), vl, np.inf)
    b = int(np.argmin(vl_clean))
    best_epoch = int(epochs[b])
    start = tl[0]
    drop = (start - np.nanmin(tl)) / start if math.isfinite(start) and start > 0 else 0.0
    if len(epochs) < 2 or b == 0 or not np.isfinite(tl).all() or drop < min_improvement:
        return Diagnosis(
            NOT_LEARNING,
            best_epoch,
            f"not learning: training loss fell {100 * drop:.1f}% from {start:.4f} and the "
            f"best validation loss is at epoch {best_epoch}; raise the learning rate, "
            "check the data or the labels",
        )
    last = len(epochs) - 1
    rise = (vl[last] - vl[b]) / max(vl[b], 1e-12)
    if b < last and rise > overfit_rise and tl[last] < tl[b]:
        return Diagnosis(
            OVER_FITTING,
            best_epoch,
            f"over-fitting: validation loss turned at epoch {best_epoch} and rose "
            f"{100 * rise:.0f}% by epoch {epochs[last]} while training loss kept falling; "
            f"the weights of epoch {best_epoch} are kept",
            turn_epoch=best_epoch,
        )
    return Diagnosis(
        GOOD_FIT,
        best_epoch,
        f"good fit: best validation loss {vl[b]:.4f} at epoch {best_epoch}, "
        f"training loss {tl[b]:.4f} there",
    )


def classification_metrics(
    y: np.ndarray, proba: np.ndarray, positive: int | None = None
) -> dict[str, float | None]:
    """Accuracy, macro-F1, log-loss, and ROC AUC of the positive class for binary tasks."""
    n_classes = proba.shape[1]
    # float32 softmax rows sum to 1 only within rounding; log_loss wants them exact.
    proba = np.clip(np.asarray(proba, dtype=np.float64), 1e-15, 1.0)
    proba = proba / proba.sum(axis=1, keepdims=True)
    pred = proba.argmax(axis=1)
    auc: float | None = None
    if positive is not None and len(np.unique(y)) == 2:
        auc = float(roc_auc_score(y == positive, proba[:, positive]))
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, average="macro", labels=list(range(n_classes)))),
        "log_loss": float(log_loss(y, proba, labels=list(range(n_classes)))),
        "roc_auc": auc,
    }


def summarise(folds: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation of every metric over the folds."""
    out: dict[str, Any] = {"folds": len(folds)}
    for key in ("accuracy", "macro_f1", "log_loss", "roc_auc"):
        vals = [f[key] for f in folds if f.get(key) is not None]
        out[f"{key}_mean"] = float(np.mean(vals)) if vals else None
        out[f"{key}_std"] = float(np.std(vals)) if vals else None
    return out


def cv_folds(y: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold (train, test) positions into `y`, shuffled with the seed."""
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(tr, te) for tr, te in skf.split(np.zeros(len(y)), y)]


@dataclass
class CVResult:
    """Per-fold metrics, their summary, and the out-of-fold probabilities."""

    folds: list[dict[str, Any]]
    summary: dict[str, Any]
    oof_proba: np.ndarray
    fold_ids: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"folds": self.folds, "summary": self.summary, **self.extra}


def cross_validate(
    cfg: Config,
    ds: Dataset,
    dev_idx: np.ndarray,
    positive: int | None,
    train_fn: Callable[..., Any],
    log: Callable[[str], None] | None = None,
) -> CVResult:
    """Stratified k-fold on the development rows; each fold fits its own scaler and network.

    Within a fold the training part is split again (stratified) to give early stopping a
    validation set; the fold's test part is never seen before it is scored.
    """
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    y_dev = ds.y[dev_idx]
    oof = np.zeros((len(dev_idx), len(ds.classes)))
    fold_ids = np.zeros(len(dev_idx), dtype=np.int64)
    folds: list[dict[str, Any]] = []
    for i, (tr, te) in enumerate(cv_folds(y_dev, cfg.cv.folds, cfg.seed), start=1):
        fit_pos, val_pos = train_test_split(
            tr, test_size=cfg.data.val_size, stratify=y_dev[tr], random_state=cfg.seed + i
        )
        model = train_fn(
            cfg, ds, dev_idx[fit_pos], dev_idx[val_pos], cfg.seed + i, "none", f"fold {i}"
        )
        proba = model.predict_proba(ds.x[dev_idx[te]])
        oof[te] = proba
        fold_ids[te] = i
        m = classification_metrics(y_dev[te], proba, positive)
        m.update(
            fold=i,
            rows=len(te),
            best_epoch=model.history.best_epoch,
            epochs_run=model.history.epochs[-1],
        )
        folds.append(m)
        auc = f" roc_auc {m['roc_auc']:.4f}" if m["roc_auc"] is not None else ""
        log(
            f"cv fold {i}/{cfg.cv.folds}: accuracy {m['accuracy']:.4f} "
            f"macro_f1 {m['macro_f1']:.4f} log_loss {m['log_loss']:.4f}{auc} "
            f"(best epoch {m['best_epoch']})"
        )
    return CVResult(folds, summarise(folds), oof, fold_ids)


def holdout_report(
    y: np.ndarray,
    proba: np.ndarray,
    positive: int | None,
    threshold: float | None,
    level: float = CONFIDENCE,
) -> dict[str, Any]:
    """Held-out accuracy and confusion matrix; FPR and FNR at the threshold for binary tasks.

    Binary tasks also get the one-sided `level` upper bounds of FPR and FNR (bounds.py).
    """
    n_classes = proba.shape[1]
    fpr: float | None = None
    fnr: float | None = None
    uppers: dict[str, float | None] = {"fpr_upper": None, "fnr_upper": None}
    if positive is not None and threshold is not None:
        scores = proba[:, positive]
        pred = np.where(scores >= threshold, positive, 1 - positive)
        c = confusion_at(y == positive, scores, threshold)
        fpr = c["fp"] / (c["fp"] + c["tn"]) if c["fp"] + c["tn"] else 0.0
        fnr = c["fn"] / (c["fn"] + c["tp"]) if c["fn"] + c["tp"] else 0.0
        uppers = {
            "fpr_upper": upper_bound(c["fp"], c["fp"] + c["tn"], level),
            "fnr_upper": upper_bound(c["fn"], c["fn"] + c["tp"], level),
        }
    else:
        pred = proba.argmax(axis=1)
    cm = np.zeros((n_classes, n_classes), dtype=int)
    for t, p in zip(y, pred, strict=True):
        cm[t, p] += 1
    metrics = classification_metrics(y, proba, positive)
    return {
        "n": len(y),
        "accuracy": float((pred == y).mean()),
        "accuracy_argmax": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "log_loss": metrics["log_loss"],
        "roc_auc": metrics["roc_auc"],
        "fpr": fpr,
        "fnr": fnr,
        **uppers,
        "confusion_matrix": cm.tolist(),
    }
