"""Datasets (scikit-learn's bundled sets, user CSV files), stratified splits and the scaler."""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn import datasets as skd
from sklearn.model_selection import train_test_split

from .config import DataConfig

DEFAULT_IMAGE_SHAPES = {"digits": (8, 8)}


class DataError(ValueError):
    """Data that cannot be loaded or does not fit the config."""


@dataclass
class Dataset:
    """Features as float32 rows, labels as class indices into `classes`."""

    name: str
    x: np.ndarray
    y: np.ndarray
    classes: list[str]
    feature_names: list[str]
    image_shape: tuple[int, int] | None
    sha256: str

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])


@dataclass
class Split:
    """Index arrays into a Dataset: train, validation and held-out test."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def _label_str(v: object) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _load_sklearn(name: str) -> tuple[np.ndarray, list[str], list[str], list[str]]:
    loaders = {
        "breast_cancer": skd.load_breast_cancer,
        "digits": skd.load_digits,
        "wine": skd.load_wine,
        "iris": skd.load_iris,
    }
    bunch = loaders[name]()
    names = [_label_str(t) for t in bunch.target_names]
    labels = [names[int(t)] for t in bunch.target]
    features = [str(f) for f in bunch.feature_names]
    return np.asarray(bunch.data, dtype=np.float64), labels, names, features


def _load_csv(path: Path, label_column: str) -> tuple[np.ndarray, list[str], list[str]]:
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            rows = [r for r in reader if r]
    except OSError as exc:
        raise DataError(f"cannot read CSV {path}: {exc.strerror or exc}") from exc
    if not header:
        raise DataError(f"CSV {path} has no header row")
    header = [h.strip() for h in header]
    if label_column not in header:
        raise DataError(f"CSV {path} has no label column {label_column!r} (header: {header})")
    li = header.index(label_column)
    features = [h for i, h in enumerate(header) if i != li]
    if not features or not rows:
        raise DataError(f"CSV {path} needs at least one feature column and one row")
    x = np.empty((len(rows), len(features)), dtype=np.float64)
    labels: list[str] = []
    for r, row in enumerate(rows):
        if len(row) != len(header):
            raise DataError(f"CSV {path} line {r + 2}: {len(row)} fields, expected {len(header)}")
        vals = [v for i, v in enumerate(row) if i != li]
        try:
            x[r] = [float(v) for v in vals]
        except ValueError as exc:
            raise DataError(f"CSV {path} line {r + 2}: non-numeric feature ({exc})") from exc
        labels.append(row[li].strip())
    if not np.isfinite(x).all():
        raise DataError(f"CSV {path} has non-finite feature values")
    return x, labels, features


def _sorted_labels(labels: list[str]) -> list[str]:
    uniq = sorted(set(labels))
    try:
        return sorted(uniq, key=float)
    except ValueError:
        return uniq


def _sha256(x: np.ndarray, y: np.ndarray, classes: list[str], features: list[str]) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(y, dtype=np.int64).tobytes())
    h.update("\x1f".join(classes).encode())
    h.update("\x1e".join(features).encode())
    return h.hexdigest()


def load_dataset(cfg: DataConfig, seed: int = 0) -> Dataset:
    """Load the configured rows; labels are mapped onto `cfg.classes` order when given."""
    if cfg.source == "sklearn":
        assert cfg.name is not None
        x, labels, order, features = _load_sklearn(cfg.name)
        name: str = cfg.name
    else:
        assert cfg.path is not None
        x, labels, features = _load_csv(cfg.path, cfg.label_column)
        order = _sorted_labels(labels)
        name = cfg.path.name
    present = set(labels)
    if cfg.classes is not None:
        unknown = present - set(cfg.classes)
        if unknown:
            raise DataError(f"data.classes does not list the labels {sorted(unknown)}")
        order = list(cfg.classes)
    else:
        order = [c for c in order if c in present]
    if len(order) < 2:
        raise DataError(f"dataset {name} needs at least two classes, found {order}")
    index = {c: i for i, c in enumerate(order)}
    y = np.array([index[v] for v in labels], dtype=np.int64)
    if cfg.max_rows is not None and cfg.max_rows < len(y):
        keep, _ = train_test_split(
            np.arange(len(y)), train_size=cfg.max_rows, stratify=y, random_state=seed
        )
        keep = np.sort(keep)
        x, y = x[keep], y[keep]
    image_shape = cfg.image_shape or (
        DEFAULT_IMAGE_SHAPES.get(cfg.name or "") if cfg.source == "sklearn" else None
    )
    if image_shape is not None and image_shape[0] * image_shape[1] != x.shape[1]:
        raise DataError(
            f"data.image_shape {list(image_shape)} does not hold {x.shape[1]} features per row"
        )
    x32 = x.astype(np.float32)
    return Dataset(name, x32, y, order, features, image_shape, _sha256(x32, y, order, features))


def split_dataset(y: np.ndarray, cfg: DataConfig, seed: int) -> Split:
    """Stratified train / validation / held-out test indices."""
    idx = np.arange(len(y))
    try:
        dev, test = train_test_split(idx, test_size=cfg.test_size, stratify=y, random_state=seed)
        train, val = train_test_split(
            dev, test_size=cfg.val_size, stratify=y[dev], random_state=seed
        )
    except ValueError as exc:
        raise DataError(f"cannot split {len(y)} rows stratified: {exc}") from exc
    return Split(np.sort(train), np.sort(val), np.sort(test))


@dataclass
class Scaler:
    """(x - mean) / scale with scale 1 where the variance is zero."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, mode: str) -> Scaler:
        x = x.astype(np.float64)
        if mode == "none":
            mean, std = np.zeros(x.shape[1]), np.ones(x.shape[1])
        elif mode == "global":
            mean = np.full(x.shape[1], x.mean())
            std = np.full(x.shape[1], x.std())
        else:
            mean, std = x.mean(axis=0), x.std(axis=0)
        # A constant feature would divide by zero; leave it centred instead.
        scale = np.where(std > 1e-12, std, 1.0)
        return cls(mean.astype(np.float32), scale.astype(np.float32))

    def transform(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.scale).astype(np.float32)
