"""Plots and text reports: the loss curve, the cost curve, the CV table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt

from .evaluate import Diagnosis, ThresholdChoice
from .fit import History

_PNG_META = {"Software": None}  # keep the PNG bytes free of version strings


def plot_loss_curve(hist: History, diag: Diagnosis, path: Path, name: str) -> None:
    """Train and validation loss on one plot, the best epoch marked, the diagnosis as title."""
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    ax.plot(hist.epochs, hist.train_loss, label="train (eval mode)", color="tab:blue")
    ax.plot(hist.epochs, hist.val_loss, label="validation", color="tab:orange")
    ax.axvline(diag.best_epoch, color="tab:green", linestyle="--", linewidth=1)
    ax.scatter(
        [diag.best_epoch],
        [hist.val_loss[hist.epochs.index(diag.best_epoch)]],
        color="tab:green",
        zorder=3,
        label=f"best epoch {diag.best_epoch}",
    )
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy loss")
    ax.set_yscale("log")
    ax.set_title(f"{name}: {diag.diagnosis.replace('_', ' ')} (best epoch {diag.best_epoch})")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, metadata=_PNG_META)
    plt.close(fig)


def plot_cost_curve(
    choice: ThresholdChoice,
    path: Path,
    name: str,
    max_fnr: float | None,
    max_fpr: float | None,
) -> None:
    """Expected cost per row, FPR and FNR against the threshold, the chosen one marked."""
    c = choice.curve
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    ax.plot(c["threshold"], c["cost"], color="tab:red", label="expected cost per row")
    ax.set_xlabel("threshold (positive when score >= threshold)")
    ax.set_ylabel("expected cost per row")
    ax2 = ax.twinx()
    ax2.plot(c["threshold"], c["fnr"], color="tab:purple", alpha=0.7, label="FNR")
    ax2.plot(c["threshold"], c["fpr"], color="tab:gray", alpha=0.7, label="FPR")
    if max_fnr is not None:
        ax2.axhline(max_fnr, color="tab:purple", linestyle=":", label=f"max FNR {max_fnr:g}")
    if max_fpr is not None:
        ax2.axhline(max_fpr, color="tab:gray", linestyle=":", label=f"max FPR {max_fpr:g}")
    ax2.set_ylabel("rate")
    ax2.set_ylim(0, 1)
    ax.axvline(choice.threshold, color="tab:green", linestyle="--")
    ax.set_title(f"{name}: threshold {choice.threshold:.4f} ({choice.method})")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper center", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, metadata=_PNG_META)
    plt.close(fig)


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.4f}"


def cv_markdown(name: str, cv: dict[str, Any]) -> str:
    """The CV report as a markdown table: one row per fold, then mean ± std."""
    keys = ["accuracy", "macro_f1", "log_loss", "roc_auc"]
    lines = [
        f"# {name}: {cv['summary']['folds']}-fold cross-validation",
        "",
        "| fold | rows | " + " | ".join(keys) + " | best epoch |",
        "|---|---|" + "---|" * len(keys) + "---|",
    ]
    for f in cv["folds"]:
        vals = " | ".join(_fmt(f[k]) for k in keys)
        lines.append(f"| {f['fold']} | {f['rows']} | {vals} | {f['best_epoch']} |")
    s = cv["summary"]
    mean = " | ".join(
        "–" if s[f"{k}_mean"] is None else f"{s[f'{k}_mean']:.4f} ± {s[f'{k}_std']:.4f}"
        for k in keys
    )
    lines.append(f"| mean ± std | | {mean} | |")
    return "\n".join(lines) + "\n"
