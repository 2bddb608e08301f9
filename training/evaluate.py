"""Evaluation: fit diagnosis, metrics, stratified k-fold CV, cost-based decision threshold."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score
from sklearn.model_selection import StratifiedKFold, train_test_split

from .config import Config
from .data import Dataset

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


@dataclass
class ThresholdChoice:
    """The decision threshold, why, and what it is expected to cost."""

    threshold: float
    method: str
    reason: str
    feasible: bool
    expected_fpr: float
    expected_fnr: float
    expected_cost: float
    curve: dict[str, list[float]]

    def rates(self) -> dict[str, Any]:
        return {
            "expected_fpr": self.expected_fpr,
            "expected_fnr": self.expected_fnr,
            "expected_cost_per_row": self.expected_cost,
            "constraints_met": self.feasible,
        }


def confusion_at(y_pos: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, int]:
    """tp, fp, tn, fn when a row is positive iff score >= threshold."""
    pred = scores >= threshold
    y_pos = y_pos.astype(bool)
    return {
        "tp": int((pred & y_pos).sum()),
        "fp": int((pred & ~y_pos).sum()),
        "tn": int((~pred & ~y_pos).sum()),
        "fn": int((~pred & y_pos).sum()),
    }


def choose_threshold(
    y_pos: np.ndarray,
    scores: np.ndarray,
    cost_fp: float,
    cost_fn: float,
    max_fnr: float | None = None,
    max_fpr: float | None = None,
    source: str = "out-of-fold",
) -> ThresholdChoice:
    """The threshold with the least expected cost per row, subject to max FNR / max FPR.

    Candidates are 0, the midpoints between neighbouring distinct scores and a point above
    the top score, so each distinct split of the rows is tried once with a margin either side.
    Ties go to the lower threshold (fewer missed positives). When no candidate meets the
    constraints, the one that misses them by the least is taken and `feasible` is False.
    """
    y_pos = np.asarray(y_pos).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) == 0 or len(scores) != len(y_pos):
        raise ValueError("choose_threshold needs equally long, non-empty labels and scores")
    s = np.unique(scores)
    top = 1.0 if s[-1] >= 1.0 else (s[-1] + 1.0) / 2
    cands = np.concatenate([[0.0], (s[:-1] + s[1:]) / 2, [top]])
    cands = np.unique(np.clip(cands, 0.0, 1.0))
    pos_sorted = np.sort(scores[y_pos])
    neg_sorted = np.sort(scores[~y_pos])
    n, n_pos, n_neg = len(scores), len(pos_sorted), len(neg_sorted)
    fn = np.searchsorted(pos_sorted, cands, side="left")  # positives scored below t
    fp = n_neg - np.searchsorted(neg_sorted, cands, side="left")  # negatives at or above t
    fnr = fn / n_pos if n_pos else np.zeros(len(cands))
    fpr = fp / n_neg if n_neg else np.zeros(len(cands))
    cost = (cost_fp * fp + cost_fn * fn) / n
    violation = np.zeros(len(cands))
    if max_fnr is not None:
        violation = np.maximum(violation, fnr - max_fnr)
    if max_fpr is not None:
        violation = np.maximum(violation, fpr - max_fpr)
    ok = violation <= 1e-12
    constrained = max_fnr is not None or max_fpr is not None
    if ok.any():
        i = int(np.flatnonzero(ok)[np.argmin(cost[ok])])
        feasible = True
    else:
        least = violation.min()
        near = np.flatnonzero(violation <= least + 1e-12)
        i = int(near[np.argmin(cost[near])])
        feasible = False
    limits = []
    if max_fnr is not None:
        limits.append(f"FNR <= {max_fnr:g}")
    if max_fpr is not None:
        limits.append(f"FPR <= {max_fpr:g}")
    objective = f"{cost_fp:g}*FP + {cost_fn:g}*FN on {source} scores ({n} rows)"
    if not constrained:
        method, reason = "min_cost", f"minimises {objective}"
    elif feasible:
        method = "min_cost_subject_to_constraints"
        reason = f"minimises {objective} subject to {' and '.join(limits)}"
    else:
        method = "closest_to_constraints"
        reason = (
            f"no threshold meets {' and '.join(limits)} on {source} scores; this one misses "
            f"them by the least ({violation[i]:.4f}) and then minimises {objective}"
        )
    return ThresholdChoice(
        threshold=float(cands[i]),
        method=method,
        reason=reason,
        feasible=feasible,
        expected_fpr=float(fpr[i]),
        expected_fnr=float(fnr[i]),
        expected_cost=float(cost[i]),
        curve={
            "threshold": [float(v) for v in cands],
            "cost": [float(v) for v in cost],
            "fpr": [float(v) for v in fpr],
            "fnr": [float(v) for v in fnr],
        },
    )


def holdout_report(
    y: np.ndarray, proba: np.ndarray, positive: int | None, threshold: float | None
) -> dict[str, Any]:
    """Held-out accuracy and confusion matrix; FPR and FNR at the threshold for binary tasks."""
    n_classes = proba.shape[1]
    fpr: float | None = None
    fnr: float | None = None
    if positive is not None and threshold is not None:
        scores = proba[:, positive]
        pred = np.where(scores >= threshold, positive, 1 - positive)
        c = confusion_at(y == positive, scores, threshold)
        fpr = c["fp"] / (c["fp"] + c["tn"]) if c["fp"] + c["tn"] else 0.0
        fnr = c["fn"] / (c["fn"] + c["tp"]) if c["fn"] + c["tp"] else 0.0
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
        "confusion_matrix": cm.tolist(),
    }


def cross_fitted_rates(
    y_pos: np.ndarray,
    scores: np.ndarray,
    fold_ids: np.ndarray,
    cost_fp: float,
    cost_fn: float,
    max_fnr: float | None = None,
    max_fpr: float | None = None,
) -> dict[str, Any]:
    """FPR and FNR of the threshold *procedure* on rows it did not see.

    For each fold, the threshold is chosen on the other folds' out-of-fold scores and applied
    to this fold's; the counts add up over folds. The in-sample FNR at the chosen threshold
    meets max_fnr by construction; this one shows how well that carries over to new rows.
    """
    y_pos = np.asarray(y_pos).astype(bool)
    total = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
    thresholds = []
    for k in np.unique(fold_ids):
        rest, this = fold_ids != k, fold_ids == k
        c = choose_threshold(y_pos[rest], scores[rest], cost_fp, cost_fn, max_fnr, max_fpr)
        thresholds.append(c.threshold)
        for key, v in confusion_at(y_pos[this], scores[this], c.threshold).items():
            total[key] += v
    neg, pos = total["fp"] + total["tn"], total["fn"] + total["tp"]
    return {
        "fpr": total["fp"] / neg if neg else 0.0,
        "fnr": total["fn"] / pos if pos else 0.0,
        "cost_per_row": (cost_fp * total["fp"] + cost_fn * total["fn"]) / len(scores),
        "confusion": total,
        "thresholds": thresholds,
    }
