"""The `search:` section of a sweep config: its schema, the searched values as configs, and
what Optuna is asked for each field."""

from __future__ import annotations

import copy
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .config import Config, ConfigError, format_validation_error, validate_config

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


def encode_choice(v: Any) -> Scalar:
    """A choice as Optuna can store it."""
    # Optuna's categorical choices must be scalars; lists (layer sizes) travel as JSON text.
    return json.dumps(v) if isinstance(v, list) else v


def decode_choice(v: Any) -> Any:
    """A choice as the config holds it (the inverse of `encode_choice`)."""
    if isinstance(v, str) and v.startswith("["):
        return json.loads(v)
    return v


def suggest(trial: Any, path: str, space: ParamSpace) -> Any:
    """Ask Optuna for one value of a searched field."""
    if space.type == "choice":
        assert space.values is not None
        return decode_choice(
            trial.suggest_categorical(path, [encode_choice(v) for v in space.values])
        )
    assert space.low is not None and space.high is not None
    if space.type in ("int", "log_int"):
        step = int(space.step or 1)
        return trial.suggest_int(
            path, int(space.low), int(space.high), step=step, log=space.type == "log_int"
        )
    return trial.suggest_float(
        path, space.low, space.high, step=space.step, log=space.type == "log_uniform"
    )


def check_space(cfg: Config, search: SearchConfig) -> None:
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
