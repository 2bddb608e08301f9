"""What a sweep leaves in its folder: the trials table, the best config, parameter
importances and the plots, all written from the Optuna study."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .config import Config
from .search_space import MINIMISED, SearchConfig, config_with

TRIALS_FILE = "trials.csv"
BEST_FILE = "best.yaml"
IMPORTANCES_FILE = "importances.json"
PLOT_LR = "score_vs_lr.png"
PLOT_EPOCHS = "score_vs_epochs.png"
PLOT_IMPORTANCES = "importances.png"


@dataclass
class SweepResult:
    """Where the sweep's files went and what it found."""

    out: Path
    best_value: float | None
    best_overrides: dict[str, Any]
    trials_complete: int
    trials_pruned: int
    trials_total: int


def log_stderr(msg: str) -> None:
    """The default log of a sweep: a line on stderr."""
    print(msg, file=sys.stderr, flush=True)


def format_value(v: Any) -> str:
    """A searched value, short, for a log line or a cell of the trials table."""
    if isinstance(v, float):
        return f"{v:.4g}"
    return json.dumps(v) if isinstance(v, list) else str(v)


def write_outputs(
    study: Any,
    cfg: Config,
    search: SearchConfig,
    out: Path,
    log: Callable[[str], None] = log_stderr,
) -> SweepResult:
    """trials.csv, best.yaml, importances.json and the three plots from a study."""
    import optuna

    states = optuna.trial.TrialState
    all_trials = study.get_trials(deepcopy=False)
    complete = [t for t in all_trials if t.state == states.COMPLETE]
    pruned = [t for t in all_trials if t.state == states.PRUNED]
    params = list(search.params)
    with (out / TRIALS_FILE).open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "trial",
                "state",
                search.metric,
                f"{search.metric}_std",
                "fits",
                "pruned_after_fits",
                "running_mean_when_pruned",
                "epochs_run_mean",
                "best_epoch_mean",
                "duration_s",
                *params,
            ]
        )
        for t in all_trials:
            ov = t.user_attrs.get("overrides", {})
            a = t.user_attrs
            w.writerow(
                [
                    t.number,
                    t.state.name.lower(),
                    f"{t.value:.6f}" if t.state == states.COMPLETE else "",
                    "" if "score_std" not in a else f"{a['score_std']:.6f}",
                    a.get("fits", ""),
                    a.get("pruned_after_folds", ""),
                    f"{t.value:.6f}" if t.state == states.PRUNED and t.value is not None else "",
                    a.get("epochs_run_mean", ""),
                    a.get("best_epoch_mean", ""),
                    a.get("duration_s", ""),
                    *[format_value(ov[p]) if p in ov else "" for p in params],
                ]
            )
    best_overrides: dict[str, Any] = {}
    best_value: float | None = None
    if complete:
        best = study.best_trial
        best_value = float(best.value)
        best_overrides = dict(best.user_attrs["overrides"])
        best_cfg = config_with(cfg, best_overrides)
        header = (
            f"# Best of {len(complete)} complete trials of the sweep of {cfg.name} "
            f"(trial {best.number}): {search.metric} {best.value:.4f} ± "
            f"{best.user_attrs['score_std']:.4f} over {search.folds}-fold CV x "
            f"{len(search.seeds)} seeds.\n# Train it: python -m training train "
            f"{out / BEST_FILE} --out models/{cfg.name}\n"
        )
        body = yaml.safe_dump(best_cfg.model_dump(mode="json", exclude={"search"}), sort_keys=False)
        (out / BEST_FILE).write_text(header + body, encoding="utf-8")
    importances, why = _importances(study, complete)
    (out / IMPORTANCES_FILE).write_text(
        json.dumps({"importances": importances, "note": why}, indent=2) + "\n", encoding="utf-8"
    )
    _plots(complete, pruned, search, cfg, out, importances, why)
    log(
        f"sweep {cfg.name}: {len(complete)} complete, {len(pruned)} pruned, "
        f"{len(all_trials)} in all; "
        + (
            f"best {search.metric} {best_value:.4f} -> {out / BEST_FILE}"
            if best_value is not None
            else "no complete trial yet"
        )
    )
    return SweepResult(out, best_value, best_overrides, len(complete), len(pruned), len(all_trials))


def _importances(study: Any, complete: list[Any]) -> tuple[dict[str, float], str]:
    import optuna

    if len(complete) < 2:
        return {}, "parameter importances need at least two complete trials"
    try:
        imp = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError) as exc:
        return {}, f"parameter importances unavailable: {exc}"
    return {k: float(v) for k, v in imp.items()}, "fANOVA over the complete trials"


def _trial_value(t: Any, path: str, cfg: Config) -> Any:
    ov = t.user_attrs.get("overrides", {})
    if path in ov:
        return ov[path]
    node: Any = cfg.model_dump(mode="json")
    for part in path.split("."):
        node = node[part]
    return node


def _plots(
    complete: list[Any],
    pruned: list[Any],
    search: SearchConfig,
    cfg: Config,
    out: Path,
    importances: dict[str, float],
    why: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta = {"Software": None}
    label = search.metric + (" (lower is better)" if search.metric in MINIMISED else "")

    def scatter(path: Path, xs_c: list[float], xs_p: list[float], xlabel: str, log: bool) -> None:
        fig, ax = plt.subplots(figsize=(6.5, 4), dpi=100)
        ys = [t.value for t in complete]
        stds = [t.user_attrs.get("score_std", 0.0) for t in complete]
        if xs_c:
            ax.errorbar(xs_c, ys, yerr=stds, fmt="o", color="tab:blue", label="complete (± std)")
        if xs_p:
            # A pruned trial has no final score; show its last running mean.
            yp = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
            ax.scatter(xs_p, yp, marker="x", color="tab:gray", label="pruned (last mean)")
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.set_title(f"{cfg.name}: {len(complete)} complete, {len(pruned)} pruned trials")
        ax.grid(alpha=0.3)
        if xs_c or xs_p:
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, metadata=meta)
        plt.close(fig)

    pruned = [t for t in pruned if t.intermediate_values]
    scatter(
        out / PLOT_LR,
        [float(_trial_value(t, "train.lr", cfg)) for t in complete],
        [float(_trial_value(t, "train.lr", cfg)) for t in pruned],
        "learning rate (train.lr)",
        True,
    )
    # Early stopping decides how many epochs really ran; that is the x that explains the score.
    scatter(
        out / PLOT_EPOCHS,
        [float(t.user_attrs.get("epochs_run_mean", 0.0)) for t in complete],
        [float(_trial_value(t, "train.epochs", cfg)) for t in pruned],
        "epochs run (mean over folds, after early stopping; pruned: epoch budget)",
        False,
    )
    fig, ax = plt.subplots(figsize=(6.5, max(2.5, 0.45 * len(search.params) + 1.2)), dpi=100)
    if importances:
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names], color="tab:green")
        ax.set_xlabel("importance (share of score variance, fANOVA)")
    else:
        ax.text(0.5, 0.5, why, ha="center", va="center", wrap=True)
        ax.set_axis_off()
    ax.set_title(f"{cfg.name}: parameter importances")
    fig.tight_layout()
    fig.savefig(out / PLOT_IMPORTANCES, metadata=meta)
    plt.close(fig)
