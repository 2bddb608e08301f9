"""Labelled production examples out of the feedback store (captured inputs joined with their
labels), written as a CSV file that retraining reads (docs/lifecycle.md, "Export"): one column
per feature of a tabular model, one per value of an image model's input."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.monitoring.store import LabelledExample
from service.monitoring.stores import LabelStore

# Columns before the features, in this order; the features follow in the manifest's order.
META_COLUMNS = (
    "prediction_id",
    "version",
    "captured_at",
    "observed_at",
    "predicted",
    "score",
    "split",
    "label",
)
TRAIN, HOLDOUT = "train", "holdout"


class ExportError(ValueError):
    """Nothing sound to export (no examples, a version without a manifest, ...)."""


@dataclass(frozen=True, slots=True)
class ExportSummary:
    """What an export wrote."""

    path: Path
    rows: int
    train_rows: int
    holdout_rows: int
    holdout_from: float | None  # captured_at of the first held-out row
    features: list[str]
    missing: dict[str, int]  # feature -> rows without it (dropped before storing)


def holdout_start(times: list[float], fraction: float) -> float | None:
    """The capture time from which rows are held out: the latest `fraction` of the rows,
    whole time stamps (the rows of one request share one) on the held-out side."""
    if not times or fraction <= 0:
        return None
    k = max(1, math.ceil(len(times) * fraction))
    return sorted(times)[len(times) - k]


def export_examples(
    store: LabelStore,
    model: str,
    manifest_of: Callable[[int], dict[str, Any] | None],
    out: Path,
    version: int | None = None,
    since: float | None = None,
    until: float | None = None,
    holdout_fraction: float = 0.3,
) -> ExportSummary:
    """Write the labelled examples of `model` (optionally one version, captured in [since,
    until)) to the CSV file `out`, oldest first; the latest `holdout_fraction` of them, by
    capture time, are marked `split=holdout` for the offline comparison and never trained on.
    `manifest_of(version)` gives each version's manifest (its classes and features)."""
    if not 0.0 <= holdout_fraction < 1.0:
        raise ExportError(f"the held-out fraction must be in [0, 1); got {holdout_fraction}")
    examples = store.labelled_examples(model, version, since, until)
    if not examples:
        raise ExportError(
            f"no labelled captured predictions of {model!r} in the store for that window: "
            "is capture on for it (VERDICT_CAPTURE_RATES), and have labels arrived?"
        )
    manifests: dict[int, dict[str, Any]] = {}
    for v in sorted({e.version for e in examples}):
        manifest = manifest_of(v)
        if manifest is None:
            raise ExportError(f"{model} version {v} has labelled examples but no manifest here")
        manifests[v] = manifest
    image = _image_input(model, manifests)
    features: list[str] = []
    for v in sorted(manifests, reverse=True):  # the newest version's order first
        for name in input_columns(manifests[v]):
            if name not in features:
                features.append(name)
    start = holdout_start([e.captured_at for e in examples], holdout_fraction)
    missing = dict.fromkeys(features, 0)
    train = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([*META_COLUMNS, *features])
        for e in examples:
            split = HOLDOUT if start is not None and e.captured_at >= start else TRAIN
            train += split == TRAIN
            writer.writerow(_row(e, manifests[e.version], split, features, missing, image))
    tmp.replace(out)
    return ExportSummary(
        out,
        len(examples),
        train,
        len(examples) - train,
        start,
        features,
        {f: n for f, n in missing.items() if n},
    )


def input_columns(manifest: dict[str, Any]) -> list[str]:
    """The export's columns for a version's input: its feature names (tabular), or one column
    per value of an image input, `<input name>[i][j][k]` over the shape without its batch
    axis, in the order of the flat row the model reads (training/production.py reads them)."""
    spec = manifest.get("input") or {}
    names = spec.get("feature_names")
    if names:
        return [str(n) for n in names]
    shape = spec.get("shape") or []
    dims = [int(d) for d in shape[1:]]
    if not dims or any(d < 1 for d in dims):
        raise ExportError(
            f"the manifest's input has neither feature names nor a fixed shape ({shape}): "
            "its rows cannot be written as columns"
        )
    name = str(spec.get("name") or "input")
    return [name + "".join(f"[{i}]" for i in index) for index in np.ndindex(*dims)]


def _image_input(model: str, manifests: dict[int, dict[str, Any]]) -> str | None:
    """The input name when the versions take an image (one flat list per capture), None when
    they are tabular; versions whose inputs cannot share the columns are refused."""
    kinds = {v: not (m.get("input") or {}).get("feature_names") for v, m in manifests.items()}
    if not any(kinds.values()):
        return None
    columns = {v: input_columns(m) for v, m in manifests.items()}
    first = min(manifests)
    for v in manifests:
        if not kinds[v] or columns[v] != columns[first]:
            raise ExportError(
                f"{model} versions {first} and {v} take different inputs "
                f"({manifests[first]['input'].get('shape')} and "
                f"{manifests[v]['input'].get('shape')}): export one version (--version)"
            )
    return str(manifests[first]["input"].get("name") or "input")


def _row(
    e: LabelledExample,
    manifest: dict[str, Any],
    split: str,
    features: list[str],
    missing: dict[str, int],
    image: str | None,
) -> list[Any]:
    classes = manifest["output"]["classes"]
    inputs = json.loads(e.inputs)
    values: list[Any] = []
    if image is not None:  # no value of an image is ever dropped: all of them, or none
        flat = inputs.get(image)
        if not isinstance(flat, list) or len(flat) != len(features):
            got = len(flat) if isinstance(flat, list) else 0
            raise ExportError(
                f"the capture of prediction {e.prediction_id} (version {e.version}) holds "
                f"{got} values of {image!r}, not the {len(features)} of its shape"
            )
        values = [repr(float(v)) for v in flat]
    else:
        for name in features:
            value = inputs.get(name)
            if value is None:
                missing[name] += 1
                values.append("")
            else:
                values.append(repr(float(value)))
    return [
        e.prediction_id,
        e.version,
        repr(e.captured_at),
        repr(e.observed_at),
        classes[e.predicted],
        repr(e.score),
        split,
        classes[e.actual],
        *values,
    ]
