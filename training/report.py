"""Plots and text reports: the loss curve, the cost curve, the CV table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import PercentFormatter

from .evaluate import Diagnosis
from .fit import History
from .threshold import ThresholdChoice

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


def _plain_rule(
    choice: ThresholdChoice, pos: str, max_fnr: float | None, max_fpr: float | None
) -> str:
    """The choice's rule in words, for the plot's subtitle."""
    limits = []
    if max_fnr is not None:
        limits.append(f"miss at most {max_fnr:.0%} of {pos} cases")
    if max_fpr is not None:
        limits.append(f"wrongly flag at most {max_fpr:.0%} of the others")
    on = f" ({choice.level:.0%} sure)" if choice.meet_targets_on == "upper_bound" else ""
    n = sum(int(e["labelled"]) for e in choice.evidence.values())
    rows = f"on {n} {choice.source} cases"
    if not limits:
        return f"lowest expected cost of mistakes {rows}"
    if not choice.feasible:
        return f"no threshold can {' and '.join(limits)}{on}; this one comes closest {rows}"
    return f"lowest expected cost among thresholds that {' and '.join(limits)}{on}, {rows}"


def _window(x: np.ndarray, i: int, steps: int = 30) -> tuple[float, float]:
    """The x range around candidate i that holds `steps` candidates either side.

    Scores crowd near 0 and 1, so a fixed width would squash the decision there; the half
    width stays between 0.02 and 0.25, inside [0, 1].
    """
    t = float(x[i])
    left = t - float(x[max(0, i - steps)])
    right = float(x[min(len(x) - 1, i + steps)]) - t
    half = min(0.25, max(0.02, left, right))
    lo = min(max(0.0, t - half), 1.0 - 2 * half)
    return lo, lo + 2 * half


def _spans(x: np.ndarray, mask: np.ndarray) -> list[tuple[float, float]]:
    """Runs of True in mask as x ranges, each step reaching halfway to its neighbours."""
    edges = np.concatenate([[x[0]], (x[:-1] + x[1:]) / 2, [x[-1]]])
    out, start = [], None
    for j, on in enumerate(mask):
        if on and start is None:
            start = edges[j]
        if not on and start is not None:
            out.append((float(start), float(edges[j])))
            start = None
    if start is not None:
        out.append((float(start), float(edges[-1])))
    return out


def plot_cost_curve(
    choice: ThresholdChoice,
    path: Path,
    name: str,
    classes: list[str],
    positive: int,
    max_fnr: float | None,
    max_fpr: float | None,
) -> None:
    """Two panels around the chosen threshold: the error rates (with targets), then the cost.

    One axis per panel, zoomed to where the decision is made; thresholds that break a target
    are shaded; the legends sit outside the plots; the title says the decision in words.
    """
    c = {k: np.asarray(v, dtype=np.float64) for k, v in choice.curve.items()}
    x, t = c["threshold"], choice.threshold
    i = int(np.argmin(np.abs(x - t)))
    pos, neg = classes[positive], classes[1 - positive]
    lo, hi = _window(x, i)
    targets = {"fnr": max_fnr, "fpr": max_fpr}
    broken = np.zeros(len(x), dtype=bool)
    for key, target in targets.items():
        if target is not None:
            on_bound = (
                choice.meet_targets_on == "upper_bound" and choice.evidence[key]["enough_data"]
            )
            broken |= c[f"{key}_upper" if on_bound else key] > target + 1e-12
    cost = 1000 * c["cost"]

    fig, (ax, ax_cost) = plt.subplots(
        2, 1, sharex=True, figsize=(8, 6.4), dpi=100, gridspec_kw={"height_ratios": [3, 2]}
    )
    chosen = {
        ax: f"chosen {t:.3g}: FNR {c['fnr'][i]:.1%}, FPR {c['fpr'][i]:.1%}",
        ax_cost: f"chosen {t:.3g}: {cost[i]:.0f} per 1,000",
    }
    for axis, label in chosen.items():
        spans = [(a, b) for a, b in _spans(x, broken) if b > lo and a < hi]
        for k, (a, b) in enumerate(spans):
            hint = "thresholds that break a target" if k == 0 else None
            axis.axvspan(a, b, color="tab:red", alpha=0.08, linewidth=0, label=hint)
        axis.axvline(t, color="tab:green", linestyle="--", linewidth=1.5, label=label)
        axis.grid(alpha=0.3)
    style = {
        "fnr": ("tab:purple", f"missed {pos} cases (FNR)"),
        "fpr": ("tab:orange", f"false alarms among {neg} cases (FPR)"),
    }
    top = [0.05]
    for key, (color, label) in style.items():
        ax.plot(x, c[key], color=color, drawstyle="steps-mid", linewidth=2, label=label)
        top.append(1.3 * c[key][i])
        target = targets[key]
        if target is not None:
            bound = f"{key.upper()}: {choice.level:.0%} upper bound"
            ax.plot(
                x,
                c[f"{key}_upper"],
                color=color,
                drawstyle="steps-mid",
                linestyle="--",
                linewidth=1,
                label=bound,
            )
            ax.axhline(
                target,
                color=color,
                linestyle=":",
                linewidth=1.5,
                label=f"target: {key.upper()} at most {target:.0%}",
            )
            top += [3 * target, 1.3 * c[f"{key}_upper"][i]]
    ax.set_ylim(0, min(1.0, max(top)))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylabel("share of cases")

    ax_cost.plot(
        x,
        cost,
        color="tab:red",
        drawstyle="steps-mid",
        linewidth=2,
        label="expected cost per 1,000 cases",
    )
    ax_cost.plot([t], [cost[i]], "o", color="tab:green")
    inside = cost[(x >= lo) & (x <= hi)]
    ceiling = float(inside.max()) if len(inside) else float(cost.max())
    if cost[i] > 0:
        ceiling = min(ceiling, 3 * float(cost[i]))
    ax_cost.set_ylim(0, max(ceiling, 1e-9) * 1.1)
    ax_cost.set_ylabel("cost per 1,000 cases")
    ax_cost.set_xlim(lo, hi)
    ax_cost.set_xlabel(f"threshold: a case whose score is at or above it is flagged {pos}")
    for axis in (ax, ax_cost):
        axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
    fig.suptitle(
        f"{name}: flag {pos} when the score is at least {t:.3g}\n"
        f"{_plain_rule(choice, pos, max_fnr, max_fpr)}",
        fontsize=10,
    )
    fig.savefig(path, metadata=_PNG_META, bbox_inches="tight")
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
