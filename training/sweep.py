"""Hyperparameter sweeps with Optuna over the config's `search:` ranges, scored by repeated CV."""

from __future__ import annotations

import copy
import csv
import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sklearn.model_selection import train_test_split

from .config import Config, ConfigError, format_validation_error, validate_config
from .data import Dataset, load_dataset, split_dataset
from .evaluate import classification_metrics, cv_folds
from .fit import train_model

STUDY_FILE = "study.db"
TRIALS_FILE = "trials.csv"
BEST_FILE = "best.yaml"
IMPORTANCES_FILE = "importances.json"
PLOT_LR = "score_vs_lr.png"
PLOT_EPOCHS = "score_vs_epochs.png"
PLOT_IMPORTANCES = "importances.png"
# Only the network and the optimisation loop are searched; data, split, costs stay fixed so
# every trial is scored on the same rows and the same question.
SEARCHABLE_PREFIXES = ("model.", "train.")
MINIMISED = {"log_loss"}


class SweepError(ValueError):
    """A `search:` section that cannot drive a sweep."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


Scalar = str | int | float | bool | None


class ParamSpace(_Strict):
    """One searched field: a range (uniform, log-uniform, integer) or a list of choices."""

    type: Literal["uniform", "log_uniform", "int", "log_int", "choice"]
    low: float | None = None
    high: float | None = None
    step: float | None = Field(default=None, gt=0)
    values: list[Scalar | list[Scalar]] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _shape(self) -> ParamSpace:
        if self.type == "choice":
            if self.values is None:
                raise ValueError("a choice needs values: [...]")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"{self.type} needs low and high")
        if self.low >= self.high:
            raise ValueError("low must be below high")
        if self.type.startswith("log") and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


class SearchConfig(_Strict):
    """The `search:` section of a training config."""

    metric: Literal["log_loss", "accuracy", "macro_f1", "roc_auc"] = Field(
        default="log_loss", description="scored on the held-back fold; log_loss is minimised"
    )
    folds: int = Field(default=3, ge=2, le=20, description="stratified k-fold per seed")
    seeds: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=lambda: [0, 1], min_length=1, description="fold shuffles and inits"
    )
    trials: int = Field(default=20, ge=1, description="budget when --trials is not given")
    timeout_s: float | None = Field(default=None, gt=0, description="stop after this long")
    pruning: bool = Field(default=True, description="stop hopeless trials after a fold")
    startup_trials: int = Field(
        default=3, ge=0, description="trials that always run to the end before pruning"
    )
    warmup_folds: int = Field(
        default=1, ge=0, description="fits a trial always completes before it can be pruned"
    )
    keep_percentile: float = Field(
        default=75.0,
        gt=0.0,
        lt=100.0,
        description="prune a trial whose running score falls outside the best this-many "
        "percent of earlier trials at the same fold (50 = median rule)",
    )
    params: dict[str, ParamSpace] = Field(min_length=1)

    @model_validator(mode="after")
    def _paths(self) -> SearchConfig:
        for path in self.params:
            if not path.startswith(SEARCHABLE_PREFIXES) or path.endswith(".type"):
                raise ValueError(
                    f"search.params.{path}: only model.* and train.* fields can be searched "
                    "(not model.type)"
                )
        return self


def _flatten(params: Any, prefix: str = "") -> Any:
    # `train.lr: {...}` and `train: {lr: {...}}` (what `--set search.params.train.lr=...`
    # builds) mean the same field.
    if not isinstance(params, dict):
        return params
    flat: dict[str, Any] = {}
    for key, value in params.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and "type" not in value:
            flat.update(_flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def parse_search(cfg: Config) -> SearchConfig:
    """The validated `search:` section of a config."""
    if not cfg.search:
        raise SweepError(f"config {cfg.name} has no search: section to sweep")
    raw = dict(cfg.search)
    if "params" in raw:
        raw["params"] = _flatten(raw["params"])
    try:
        return SearchConfig.model_validate(raw)
    except ValidationError as exc:
        msg = format_validation_error(exc)
        raise SweepError(f"invalid search: section: {msg}") from exc


def set_path(raw: dict[str, Any], path: str, value: Any) -> None:
    """Set `a.b.c` in a nested mapping, making sections as needed."""
    parts = path.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def base_raw(cfg: Config) -> dict[str, Any]:
    """The config as a plain mapping without its search section (what trials start from)."""
    raw = cfg.model_dump(mode="json", exclude={"search"})
    return raw


def config_with(cfg: Config, overrides: dict[str, Any]) -> Config:
    """The base config with searched values set; ConfigError when they do not validate."""
    raw = copy.deepcopy(base_raw(cfg))
    for path, value in overrides.items():
        set_path(raw, path, value)
    return validate_config(raw, source="trial config")


def _encode(v: Any) -> Scalar:
    # Optuna's categorical choices must be scalars; lists (layer sizes) travel as JSON text.
    return json.dumps(v) if isinstance(v, list) else v


def _decode(v: Any) -> Any:
    if isinstance(v, str) and v.startswith("["):
        return json.loads(v)
    return v


def suggest(trial: Any, path: str, space: ParamSpace) -> Any:
    """Ask Optuna for one value of a searched field."""
    if space.type == "choice":
        assert space.values is not None
        return _decode(trial.suggest_categorical(path, [_encode(v) for v in space.values]))
    assert space.low is not None and space.high is not None
    if space.type in ("int", "log_int"):
        step = int(space.step or 1)
        return trial.suggest_int(
            path, int(space.low), int(space.high), step=step, log=space.type == "log_int"
        )
    return trial.suggest_float(
        path, space.low, space.high, step=space.step, log=space.type == "log_uniform"
    )


def _check_space(cfg: Config, search: SearchConfig) -> None:
    """Every bound and every choice must give a valid config before hours are spent."""
    for path, space in search.params.items():
        candidates: list[Any] = (
            list(space.values or [])
            if space.type == "choice"
            else [
                int(v) if space.type in ("int", "log_int") else v
                for v in (space.low, space.high)
                if v is not None
            ]
        )
        for value in candidates:
            try:
                config_with(cfg, {path: value})
            except ConfigError as exc:
                raise SweepError(
                    f"search.params.{path}: value {value!r} is invalid: {exc}"
                ) from exc


@dataclass
class SweepResult:
    """Where the sweep's files went and what it found."""

    out: Path
    best_value: float | None
    best_overrides: dict[str, Any]
    trials_complete: int
    trials_pruned: int
    trials_total: int


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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
    log: Callable[[str], None] = _log,
    progress_bar: bool | None = None,
    enqueue: list[dict[str, Any]] | None = None,
) -> SweepResult:
    """Run (or resume) the sweep in `out/`; write the trials table, best config and plots.

    `enqueue` lists parameter sets ({path: value}) to try first, before the sampler's own.
    """
    import optuna

    from .pipeline import positive_index

    search = parse_search(cfg)
    _check_space(cfg, search)
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
        shown = ", ".join(f"{k}={_short(v)}" for k, v in trial.user_attrs["overrides"].items())
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
        study.enqueue_trial({k: _encode(v) for k, v in params.items()})
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


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return json.dumps(v) if isinstance(v, list) else str(v)


def write_outputs(
    study: Any, cfg: Config, search: SearchConfig, out: Path, log: Callable[[str], None] = _log
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
                    *[_short(ov[p]) if p in ov else "" for p in params],
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
