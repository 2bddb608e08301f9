"""Hyperparameter sweeps with Optuna over the config's `search:` ranges, scored by repeated CV.

The ranges and how they become configs are in `search_space`; the files a sweep writes, in
`sweep_outputs`.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sklearn.model_selection import train_test_split

from .config import Config, ConfigError
from .data import Dataset, load_dataset, split_dataset
from .evaluate import classification_metrics, cv_folds
from .fit import train_model
from .search_space import (
    MINIMISED,
    SearchConfig,
    SweepError,
    check_space,
    config_with,
    encode_choice,
    parse_search,
    suggest,
)
from .sweep_outputs import SweepResult, format_value, log_stderr, write_outputs

STUDY_FILE = "study.db"


def _score_trial(
    trial: Any,
    cfg: Config,
    search: SearchConfig,
    ds: Dataset,
    dev: np.ndarray,
    positive: int | None,
) -> tuple[float, dict[str, Any]]:
    import optuna

    y_dev = ds.y[dev]
    scores: list[float] = []
    epochs_run: list[int] = []
    best_epochs: list[int] = []
    step = 0
    for s_i, seed in enumerate(search.seeds):
        for f_i, (tr, te) in enumerate(cv_folds(y_dev, search.folds, seed), start=1):
            fit_pos, val_pos = train_test_split(
                tr, test_size=cfg.data.val_size, stratify=y_dev[tr], random_state=seed + f_i
            )
            model = train_model(cfg, ds, dev[fit_pos], dev[val_pos], seed * 1000 + f_i, "none", "")
            proba = model.predict_proba(ds.x[dev[te]])
            with warnings.catch_warnings():
                # float32 softmax rows sum to 1 within 1e-7; sklearn's check is stricter.
                warnings.simplefilter("ignore", UserWarning)
                value = classification_metrics(y_dev[te], proba, positive)[search.metric]
            if value is None or not math.isfinite(value):
                raise optuna.TrialPruned(f"{search.metric} is not finite (seed {seed})")
            scores.append(float(value))
            epochs_run.append(model.history.epochs[-1])
            best_epochs.append(model.history.best_epoch)
            trial.report(float(np.mean(scores)), step)
            step += 1
            if search.pruning and trial.should_prune():
                trial.set_user_attr("pruned_after_folds", step)
                raise optuna.TrialPruned(
                    f"mean {search.metric} {np.mean(scores):.4f} after {step} folds "
                    f"(seed index {s_i})"
                )
    attrs = {
        "score_std": float(np.std(scores)),
        "epochs_run_mean": float(np.mean(epochs_run)),
        "best_epoch_mean": float(np.mean(best_epochs)),
        "fits": len(scores),
    }
    return float(np.mean(scores)), attrs


def run_sweep(
    cfg: Config,
    out: Path,
    trials: int | None = None,
    timeout_s: float | None = None,
    log: Callable[[str], None] = log_stderr,
    progress_bar: bool | None = None,
    enqueue: list[dict[str, Any]] | None = None,
) -> SweepResult:
    """Run (or resume) the sweep in `out/`; write the trials table, best config and plots.

    `enqueue` lists parameter sets ({path: value}) to try first, before the sampler's own.
    """
    import optuna

    from .pipeline import positive_index

    search = parse_search(cfg)
    check_space(cfg, search)
    n_trials = trials if trials is not None else (None if timeout_s else search.trials)
    timeout = timeout_s if timeout_s is not None else search.timeout_s
    if n_trials is None and timeout is None:
        n_trials = search.trials
    out.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(cfg.data, cfg.seed)
    pos = positive_index(cfg, ds)
    if search.metric == "roc_auc" and pos is None:
        raise SweepError("search.metric roc_auc is for binary tasks only")
    split = split_dataset(ds.y, cfg.data, cfg.seed)
    # The held-out rows stay out of the sweep: they judge the final model, not its settings.
    dev = np.sort(np.concatenate([split.train, split.val]))
    direction: Literal["minimize", "maximize"] = (
        "minimize" if search.metric in MINIMISED else "maximize"
    )

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{(out / STUDY_FILE).resolve()}"
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=cfg.name,
            direction=direction,
            load_if_exists=True,
            sampler=optuna.samplers.TPESampler(seed=cfg.seed),
            pruner=optuna.pruners.PercentilePruner(
                search.keep_percentile,
                n_startup_trials=search.startup_trials,
                n_warmup_steps=search.warmup_folds,
            ),
        )
    except ValueError as exc:
        raise SweepError(f"cannot open the study in {out / STUDY_FILE}: {exc}") from exc
    # Scores of different metrics (or folds and seeds) do not compare; refuse to mix them.
    scoring = {"metric": search.metric, "folds": search.folds, "seeds": search.seeds}
    if "scoring" not in study.user_attrs:
        study.set_user_attr("scoring", scoring)
    elif study.user_attrs["scoring"] != scoring:
        raise SweepError(
            f"the study in {out / STUDY_FILE} was scored with {study.user_attrs['scoring']}, "
            f"not {scoring}; use another output folder"
        )
    done_before = len(study.trials)
    # A resumed TPE sampler with the same seed would replay its first guesses; move it on.
    study.sampler = optuna.samplers.TPESampler(seed=cfg.seed + done_before)
    log(
        f"sweep {cfg.name}: {len(search.params)} params, {search.folds}-fold CV x "
        f"{len(search.seeds)} seeds on {len(dev)} rows, {search.metric} ({direction}); "
        f"budget {n_trials if n_trials is not None else 'no limit on'} trials"
        + (f", {timeout:g}s" if timeout else "")
        + (f"; resuming after {done_before} trials" if done_before else "")
    )

    def objective(trial: Any) -> float:
        overrides = {path: suggest(trial, path, sp) for path, sp in search.params.items()}
        trial.set_user_attr("overrides", overrides)
        trial_cfg = config_with(cfg, overrides)
        t0 = time.monotonic()
        value, attrs = _score_trial(trial, trial_cfg, search, ds, dev, pos)
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        trial.set_user_attr("duration_s", round(time.monotonic() - t0, 2))
        return value

    def report(study: Any, trial: Any) -> None:
        shown = ", ".join(
            f"{k}={format_value(v)}" for k, v in trial.user_attrs["overrides"].items()
        )
        head = f"trial {trial.number}"
        if trial.state == optuna.trial.TrialState.COMPLETE:
            best = study.best_trial
            log(
                f"{head}: {search.metric} {trial.value:.4f} ± {trial.user_attrs['score_std']:.4f}"
                f" [{shown}]; best {best.value:.4f} (trial {best.number})"
            )
        elif trial.state == optuna.trial.TrialState.PRUNED:
            log(f"{head}: pruned [{shown}]")
        else:
            log(f"{head}: {trial.state.name.lower()} [{shown}]")

    for params in enqueue or []:
        study.enqueue_trial({k: encode_choice(v) for k, v in params.items()})
    bar = sys.stderr.isatty() if progress_bar is None else progress_bar
    try:
        study.optimize(
            objective,
            n_trials=n_trials,
            timeout=timeout,
            callbacks=[report],
            catch=(ConfigError,),
            show_progress_bar=bar,
            gc_after_trial=False,
        )
    except KeyboardInterrupt:
        # Optuna has marked the running trial failed; keep what is done, resume later.
        log(f"interrupted: the same command resumes the study in {out / STUDY_FILE}")
    return write_outputs(study, cfg, search, out, log)
