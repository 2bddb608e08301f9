"""A challenger from production traffic: the champion's own config retrained on its training
data plus the labelled production examples of an export (`verdict-train export`), never on
the export's held-out rows (docs/lifecycle.md, "Retrain"); tabular and image models alike."""

from __future__ import annotations

import csv
import hashlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.monitoring.examples import META_COLUMNS, ExportError, input_columns

from .artifact import read_manifest
from .config import TensorBoardConfig, apply_overrides, validate_config
from .data import DataError, Dataset, _sha256, load_dataset
from .pipeline import RunResult, run_training


def columns_of(manifest: dict[str, Any]) -> list[str]:
    """The export's columns holding a version's input, in the order of the flat row the model
    reads: the names `verdict-train export` writes (service/monitoring/examples.py)."""
    try:
        return input_columns(manifest)
    except ExportError as exc:
        raise DataError(str(exc)) from exc


@dataclass
class Examples:
    """Rows of an export: features in the order asked for, labels as class indices."""

    path: Path
    sha256: str
    x: np.ndarray
    y: np.ndarray
    prediction_ids: list[str]
    captured_at: np.ndarray
    versions: list[int]

    @property
    def rows(self) -> int:
        return len(self.y)


def read_examples(
    path: Path,
    features: list[str],
    classes: list[str],
    split: str | None = None,
    image: bool = False,
) -> Examples:
    """The rows of an export file (only those of `split`, `train` or `holdout`, when given),
    their values in the order of the columns `features` (`columns_of`; `image` when they
    are an image's values rather than named features)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read the examples {path}: {exc.strerror or exc}") from exc
    reader = csv.reader(raw.decode("utf-8").splitlines())
    header = next(reader, None) or []
    if tuple(header[: len(META_COLUMNS)]) != META_COLUMNS:
        raise DataError(
            f"{path} is not an export of `verdict-train export` (its first columns must be "
            f"{', '.join(META_COLUMNS)})"
        )
    where = {name: i for i, name in enumerate(header)}
    absent = [f for f in features if f not in where]
    if absent and image:  # an image's values are all stored or none: another input
        raise DataError(
            f"{path} lacks {len(absent)} of the {len(features)} input columns the model reads "
            f"(e.g. {absent[:3]}): is it an export of another model, or of a version with "
            "another input shape?"
        )
    if absent:
        raise DataError(
            f"{path} lacks the features {absent} the model reads (were they dropped before "
            "storing, VERDICT_CAPTURE_DROP_FEATURES?); it cannot be used for this model"
        )
    cols = [where[f] for f in features]
    index = {c: i for i, c in enumerate(classes)}
    xs: list[list[float]] = []
    ys: list[int] = []
    ids: list[str] = []
    times: list[float] = []
    versions: list[int] = []
    for line, row in enumerate(reader, start=2):
        if not row:
            continue
        if split is not None and row[where["split"]] != split:
            continue
        label = row[where["label"]]
        if label not in index:
            raise DataError(f"{path} line {line}: label {label!r} is not one of {classes}")
        try:
            xs.append([float(row[c]) for c in cols])
        except ValueError as exc:
            empty = [features[k] for k, c in enumerate(cols) if not row[c]]
            why = f"no value for {empty} (dropped before storing?)" if empty else str(exc)
            raise DataError(f"{path} line {line}: {why}") from exc
        ys.append(index[label])
        ids.append(row[where["prediction_id"]])
        times.append(float(row[where["captured_at"]]))
        versions.append(int(row[where["version"]]))
    x = np.asarray(xs, dtype=np.float32).reshape(len(xs), len(features))
    if not np.isfinite(x).all():
        raise DataError(f"{path} has non-finite feature values")
    return Examples(
        path,
        hashlib.sha256(raw).hexdigest(),
        x,
        np.asarray(ys, dtype=np.int64),
        ids,
        np.asarray(times, dtype=np.float64),
        versions,
    )


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def retrain(
    champion: Path,
    examples_path: Path,
    out: Path,
    overrides: list[str] | None = None,
    log: Callable[[str], None] = _log,
) -> RunResult:
    """Train a challenger with the champion's config (seeded, cross-validated, the threshold
    from the same costs and targets) on the champion's training data plus the `train` rows of
    an export, and write it as the next version under `out`. `overrides` (`key=value`) change
    the config, e.g. for a quicker run; the manifest records the config used."""
    manifest = read_manifest(champion)
    raw = dict(manifest["training"]["config"])
    raw = apply_overrides(raw, overrides or [])
    cfg = validate_config(raw, source=f"{champion}/manifest.json training.config")
    cfg = cfg.model_copy(update={"tensorboard": TensorBoardConfig()})
    base = load_dataset(cfg.data, cfg.seed)
    image = base.image_shape is not None
    columns = columns_of(manifest) if image else base.feature_names
    shape = list(manifest["input"]["shape"][1:])
    if image and shape != [1, *(base.image_shape or ())]:
        raise DataError(
            f"the champion reads images of shape {shape}, its config's data set {base.name} "
            f"has {list(base.image_shape or ())}: its config no longer loads its data"
        )
    ex = read_examples(examples_path, columns, base.classes, split="train", image=image)
    if ex.rows == 0:
        raise DataError(f"{examples_path} has no rows marked split=train to train on")
    held = read_examples(examples_path, columns, base.classes, split="holdout", image=image)
    x = np.concatenate([base.x, ex.x])
    y = np.concatenate([base.y, ex.y])
    name = f"{base.name}+production"
    combined = Dataset(
        name,
        x,
        y,
        base.classes,
        base.feature_names,
        base.image_shape,  # an image model's rows are flat, in the order its input reads
        _sha256(x, y, base.classes, base.feature_names),
    )
    provenance: dict[str, Any] = {
        "examples_file": examples_path.name,
        "examples_sha256": ex.sha256,
        "rows": ex.rows,
        "class_counts": {c: int((ex.y == i).sum()) for i, c in enumerate(base.classes)},
        "captured_from": float(ex.captured_at.min()),
        "captured_until": float(ex.captured_at.max()),
        "held_out_rows": held.rows,
        "holdout_from": float(held.captured_at.min()) if held.rows else None,
        "base_dataset": {"name": base.name, "sha256": base.sha256, "rows": base.rows},
        "champion": {
            "name": manifest["name"],
            "version": manifest["version"],
            "sha256": manifest["sha256"],
        },
    }
    log(
        f"{cfg.name}: challenger of version {manifest['version']}: {base.rows} training rows "
        f"+ {ex.rows} production rows ({held.rows} newer ones held out for the comparison)"
    )
    return run_training(cfg, out, log, dataset=combined, provenance=provenance)
