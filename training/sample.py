"""The reference sample: rows and the probabilities the trained model gives them.

A server re-runs the sample on the execution provider that will serve and compares (the
conformance check, see docs/manifest.md). The rows are the ones most likely to expose a
provider that computes differently: the extremes of the training data, scores near the
decision threshold (or classes nearly tied), the most confident rows, and a seeded draw of
held-out rows.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from .artifact import SAMPLE_FILE
from .export import INPUT_NAME, OUTPUT_NAME, ExportError, wrap
from .fit import TrainedModel

FORMAT = 1
NEAR_DECISION = 8  # rows nearest the threshold (binary) or nearest a tie (multiclass)


def _f32(values: np.ndarray) -> list[Any]:
    """Nested lists of the shortest decimals that read back as the same float32 values."""
    a = np.asarray(values, dtype=np.float32)
    flat = np.array([float(str(v)) for v in a.ravel()], dtype=np.float64)
    out: list[Any] = flat.reshape(a.shape).tolist()  # type: ignore[assignment]
    return out


def _margins(proba: np.ndarray, positive: int | None, threshold: float | None) -> np.ndarray:
    """How far each row's decision is from flipping: |score - threshold|, or top-1 - top-2."""
    if positive is not None and threshold is not None:
        return np.abs(proba[:, positive] - threshold)
    top2 = np.sort(proba, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def _labels(proba: np.ndarray, positive: int | None, threshold: float | None) -> np.ndarray:
    if positive is not None and threshold is not None:
        return np.where(proba[:, positive] >= threshold, positive, 1 - positive)
    return proba.argmax(axis=1)


def _predict(model: TrainedModel, x: np.ndarray) -> np.ndarray:
    rows = np.asarray(x, dtype=np.float32)
    if model.image_shape is not None:
        rows = rows.reshape(len(rows), 1, *model.image_shape)
    with torch.no_grad():
        out: np.ndarray = wrap(model)(torch.from_numpy(rows)).numpy()
    return out


def choose_rows(
    model: TrainedModel,
    x_train: np.ndarray,
    x_test: np.ndarray,
    test_rows: np.ndarray,
    positive: int | None,
    threshold: float | None,
    atol: float,
    size: int,
    seed: int,
) -> tuple[np.ndarray, list[str], list[int | None]]:
    """The sample's raw rows, why each is there, and its held-out data row (else None)."""
    x_train = np.asarray(x_train, dtype=np.float32)
    picked: list[tuple[str, int | None, np.ndarray]] = [
        ("every feature at its training minimum", None, x_train.min(axis=0)),
        ("every feature at its training maximum", None, x_train.max(axis=0)),
        ("every feature at its training mean", None, x_train.mean(axis=0)),
    ]
    z = (x_train - x_train.mean(axis=0)) / np.where(x_train.std(axis=0) > 0, x_train.std(0), 1)
    for i in np.argsort(-np.abs(z).max(axis=1), kind="stable")[:2]:
        picked.append(("training row farthest from the training mean", None, x_train[i]))
    proba = _predict(model, x_test)
    margin = _margins(proba, positive, threshold)
    taken: set[int] = set()

    def take(kind: str, order: np.ndarray, count: int) -> None:
        for i in order:
            if count == 0 or len(picked) >= size:
                return
            if int(i) not in taken:
                taken.add(int(i))
                picked.append((kind, int(test_rows[i]), x_test[i]))
                count -= 1

    # Near the decision, but clear of the tolerance, so the label must not flip.
    clear = np.flatnonzero(margin > 2 * atol)
    near = clear[np.argsort(margin[clear], kind="stable")]
    if positive is not None and threshold is not None:
        score = proba[:, positive]
        below = [i for i in near if score[i] < threshold]
        above = [i for i in near if score[i] >= threshold]
        take("held-out row just below the threshold", np.asarray(below), NEAR_DECISION // 2)
        take("held-out row just above the threshold", np.asarray(above), NEAR_DECISION // 2)
        take("held-out row with the lowest score", np.argsort(score, kind="stable"), 2)
        take("held-out row with the highest score", np.argsort(-score, kind="stable"), 2)
    else:
        take("held-out row with two classes nearly tied", near, NEAR_DECISION)
        top = proba.argmax(axis=1)
        for c in range(proba.shape[1]):
            rows_c = np.flatnonzero(top == c)
            order = rows_c[np.argsort(-proba[rows_c, c], kind="stable")]
            take(f"held-out row most confidently class {c}", order, 1)
    rng = np.random.default_rng(seed)
    take("held-out row drawn at random", rng.permutation(len(x_test)), size)
    kinds = [k for k, _, _ in picked]
    rows = [r for _, r, _ in picked]
    return np.stack([x for _, _, x in picked]).astype(np.float32), kinds, rows


def build_sample(
    model: TrainedModel,
    model_bytes: bytes,
    x: np.ndarray,
    kinds: list[str],
    rows: list[int | None],
    positive: int | None,
    threshold: float | None,
    atol: float,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The sample file's record and the manifest's `conformance` block.

    Expected probabilities are the torch model's. The exported graph is run on the
    onnxruntime CPU provider here too: a graph that already misses the tolerance on the
    training machine is refused (ExportError), and what it measured goes to the manifest.
    """
    shape = [len(x), *([1, *model.image_shape] if model.image_shape else [x.shape[1]])]
    rows_in = x.reshape(shape).astype(np.float32)
    want = _predict(model, x)
    labels = _labels(want, positive, threshold)
    margin = _margins(want, positive, threshold)
    stable = margin > (atol if positive is not None else 2 * atol)
    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    got = sess.run([OUTPUT_NAME], {INPUT_NAME: rows_in})[0]
    diff = float(np.abs(got - want).max())
    same = bool((_labels(got, positive, threshold)[stable] == labels[stable]).all())
    if not diff <= atol or not same:
        raise ExportError(
            f"conformance: onnxruntime CPU differs from torch by {diff:.3g} on the reference "
            f"sample (tolerance {atol:g}){'' if same else ' and changes a label'}"
        )
    record = {
        "format": FORMAT,
        "input": {"name": INPUT_NAME, "shape": shape, "dtype": "float32"},
        "output": {"name": OUTPUT_NAME, "shape": [len(x), want.shape[1]], "dtype": "float32"},
        "threshold": threshold,
        "positive_index": positive,
        "atol": atol,
        "expected_from": "torch",
        "inputs": _f32(rows_in),
        "probabilities": _f32(want),
        "labels": [int(v) for v in labels],
        "label_stable": [bool(v) for v in stable],
        "kinds": kinds,
        "data_rows": rows,
    }
    conformance = {
        "sample_file": SAMPLE_FILE,
        "rows": len(x),
        "atol": atol,
        "expected_from": "torch",
        "measured": {
            "provider": "CPUExecutionProvider",
            "onnxruntime": ort.__version__,
            "max_abs_diff": diff,
            "labels_equal": same,
        },
    }
    return record, conformance


def dumps(record: dict[str, Any]) -> bytes:
    """The sample file's bytes: one key per line, one row per line (readable, diffable)."""
    parts = []
    for key, value in record.items():
        if key in ("inputs", "probabilities"):
            body = ",\n".join(f"    {json.dumps(row, allow_nan=False)}" for row in value)
            text = f"[\n{body}\n  ]"
        else:
            text = json.dumps(value, allow_nan=False)
        parts.append(f"  {json.dumps(key)}: {text}")
    return ("{\n" + ",\n".join(parts) + "\n}\n").encode("utf-8")
