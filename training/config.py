"""Training configuration: pydantic models loaded from YAML or TOML, with `--set` overrides."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SKLEARN_DATASETS = ("breast_cancer", "digits", "wine", "iris")


class ConfigError(ValueError):
    """A config file that cannot be read or does not validate; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    """Where the rows come from and how they are split."""

    source: Literal["sklearn", "csv"] = "sklearn"
    name: Literal["breast_cancer", "digits", "wine", "iris"] | None = Field(
        default=None, description="scikit-learn dataset (source: sklearn)"
    )
    path: Path | None = Field(default=None, description="CSV file with a header (source: csv)")
    label_column: str = Field(default="label", description="CSV column holding the class label")
    classes: list[str] | None = Field(
        default=None,
        description="class labels in the output index order; default: dataset order "
        "(sklearn) or sorted labels (csv)",
    )
    image_shape: tuple[Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)]] | None = Field(
        default=None, description="height, width for CNN inputs (digits: 8, 8 by default)"
    )
    scaling: Literal["feature", "global", "none"] = Field(
        default="feature",
        description="standardise per feature, with one mean/std for all values, or not at all",
    )
    test_size: float = Field(default=0.2, gt=0.0, lt=1.0, description="held-out fraction")
    val_size: float = Field(
        default=0.2, gt=0.0, lt=1.0, description="validation fraction of what is left"
    )
    max_rows: int | None = Field(default=None, gt=0, description="stratified subsample (tests)")

    @model_validator(mode="after")
    def _source_fields(self) -> DataConfig:
        if self.source == "sklearn" and self.name is None:
            raise ValueError("data.name is required when data.source is 'sklearn'")
        if self.source == "csv" and self.path is None:
            raise ValueError("data.path is required when data.source is 'csv'")
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            raise ValueError("data.classes has duplicates")
        return self


Activation = Literal["relu", "leaky_relu", "tanh", "sigmoid", "gelu"]
Init = Literal["kaiming", "xavier"]


class MLPConfig(_Strict):
    """A multilayer perceptron for tabular rows."""

    type: Literal["mlp"] = "mlp"
    hidden: list[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [64, 32])
    activation: Activation = "relu"
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    norm: Literal["batch", "layer", "none"] = "none"
    init: Init = "kaiming"


class CNNConfig(_Strict):
    """A small convolutional network for one-channel images."""

    type: Literal["cnn"] = "cnn"
    channels: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=lambda: [32, 64], min_length=1, description="one conv block per entry"
    )
    convs_per_block: int = Field(default=1, ge=1, le=4)
    kernel_size: Literal[3, 5] = 3
    batch_norm: bool = True
    pool: Literal["max", "avg", "none"] = "max"
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="after each block")
    head_hidden: int | None = Field(default=128, gt=0)
    head_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    activation: Activation = "relu"
    init: Init = "kaiming"


class EarlyStoppingConfig(_Strict):
    """Stop when validation loss has not improved by min_delta for patience epochs."""

    enabled: bool = True
    patience: int = Field(default=20, ge=1)
    min_delta: float = Field(default=0.0, ge=0.0)


class TrainConfig(_Strict):
    """The optimisation loop."""

    optimizer: Literal["sgd", "momentum", "adagrad", "rmsprop", "adam", "adamw"] = "adam"
    lr: float = Field(default=1e-3, gt=0.0, le=10.0)
    lr_schedule: Literal["constant", "cosine"] = Field(
        default="constant", description="cosine: anneal the learning rate to 0 over the epochs"
    )
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0, description="for optimizer: momentum")
    epochs: int = Field(default=100, ge=1, le=100_000)
    batch_size: int = Field(default=64, ge=1)
    weight_decay: float = Field(default=0.0, ge=0.0)
    targets: Literal["sparse", "categorical"] = Field(
        default="sparse", description="class indices or one-hot targets"
    )
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    augment_shift: int = Field(
        default=0, ge=0, le=2, description="images: random shifts of up to this many pixels"
    )
    progress: Literal["auto", "bar", "line", "none"] = "auto"
    threads: int = Field(default=1, ge=1, le=64, description="torch CPU threads")


class CVConfig(_Strict):
    """Stratified k-fold cross-validation on the development rows (all but held-out)."""

    folds: int = Field(default=5, ge=0, le=20, description="0 disables cross-validation")

    @model_validator(mode="after")
    def _not_one(self) -> CVConfig:
        if self.folds == 1:
            raise ValueError("cv.folds must be 0 (off) or at least 2")
        return self


class DecisionConfig(_Strict):
    """How a binary model turns its score into a decision."""

    positive_class: str | None = Field(
        default=None, description="binary: the class whose probability is the score (default: last)"
    )
    cost_fp: float = Field(default=1.0, ge=0.0)
    cost_fn: float = Field(default=1.0, ge=0.0)
    max_fnr: float | None = Field(default=None, ge=0.0, le=1.0)
    max_fpr: float | None = Field(default=None, ge=0.0, le=1.0)
    scores: Literal["auto", "oof", "validation"] = Field(
        default="auto", description="out-of-fold scores (auto, when CV runs) or validation scores"
    )
    meet_targets_on: Literal["estimate", "upper_bound"] = Field(
        default="estimate",
        description="hold max_fnr/max_fpr on the rate's point estimate, or on its one-sided "
        "upper confidence bound (Clopper-Pearson) where the labelled cases are enough",
    )
    confidence_level: float = Field(
        default=0.95, ge=0.5, le=0.999, description="level of the one-sided upper bounds"
    )


class ExportConfig(_Strict):
    """ONNX export and the parity gate."""

    opset: int = Field(default=18, ge=13, le=23)
    parity_atol: float = Field(default=1e-4, gt=0.0)
    parity_batch_sizes: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=lambda: [1, 7, 256], min_length=1
    )
    reference_bins: int = Field(default=10, ge=2, le=100)
    sample_rows: int = Field(
        default=32, ge=8, le=256, description="rows in the reference sample (conformance)"
    )
    conformance_atol: float = Field(
        default=5e-3,
        gt=0.0,
        le=0.1,
        description="largest |probability difference| a server's provider may show on the sample",
    )


class TensorBoardConfig(_Strict):
    """TensorBoard event logs of the final fit (the PNG plots are written either way)."""

    enabled: bool = False
    log_dir: Path = Field(
        default=Path("runs"), description="event logs go to <log_dir>/<name>/<timestamp>"
    )


class Config(_Strict):
    """One training run."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", description="model name")
    seed: int = Field(default=0, ge=0)
    data: DataConfig
    model: Annotated[MLPConfig | CNNConfig, Field(discriminator="type")] = Field(
        default_factory=MLPConfig
    )
    train: TrainConfig = Field(default_factory=TrainConfig)
    cv: CVConfig = Field(default_factory=CVConfig)
    decision: DecisionConfig = Field(default_factory=DecisionConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    tensorboard: TensorBoardConfig = Field(default_factory=TensorBoardConfig)
    search: dict[str, Any] | None = Field(
        default=None, description="sweep ranges and budget; read by `training sweep` only"
    )

    @model_validator(mode="before")
    @classmethod
    def _default_model_type(cls, raw: Any) -> Any:
        # `model: {hidden: [..]}` means an MLP; the discriminator needs the tag spelled out.
        if isinstance(raw, dict) and isinstance(raw.get("model"), dict):
            raw = {**raw, "model": {"type": "mlp", **raw["model"]}}
        return raw


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    try:
        raw: Any = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot parse config {path}: {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.sub=value` overrides (value parsed as YAML) to a raw config mapping."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        parts = key.strip().split(".")
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
            node = child
        try:
            node[parts[-1]] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: bad value: {exc}") from exc
    return raw


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem, each starting with the dotted field name."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if p not in ("mlp", "cnn")) or "(top level)"
        lines.append(f"{loc}: {err['msg']}")
    return "; ".join(lines)


def validate_config(raw: dict[str, Any], source: str = "config") -> Config:
    """Validate a raw mapping into a Config or raise ConfigError naming the field."""
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid {source}: {format_validation_error(exc)}") from exc


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML or TOML config, apply overrides, validate."""
    path = Path(path)
    raw = apply_overrides(_read(path), overrides or [])
    return validate_config(raw, source=f"config {path}")
