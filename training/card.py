"""The model card: MODEL_CARD.md (and its PNGs) for the business side, from an artifact folder."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .card_sections import failures, monitoring, per_class, plain_training
from .markdown import f4, interval, pct, table
from .operating_point import operating_point

CARD_FILE = "MODEL_CARD.md"
HOLDOUT_FILE = "holdout.json"
CONFUSION_PNG = "confusion_matrix.png"
MAX_FAILURE_ROWS = 200  # misclassified rows whose features the pipeline keeps


class CardError(ValueError):
    """The artifact folder lacks what the card needs."""


# ---------------------------------------------------------------- what the pipeline saves


def holdout_record(
    *,
    classes: list[str],
    feature_names: list[str],
    test_rows: np.ndarray,
    y_test: np.ndarray,
    proba: np.ndarray,
    x_test: np.ndarray,
    x_train: np.ndarray,
    positive: int | None,
    threshold: float | None,
    selection: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What the card needs from training: held-out labels and scores, the wrong rows' features.

    Per-feature mean and spread of the training rows (whatever the model's own scaling) let
    the card say how far, in standard deviations, a wrong row's features sit from what the
    model was trained on. `selection`
    holds the labels and scores the threshold was chosen on, to replay other costs.
    """
    x64 = np.asarray(x_train, dtype=np.float64)
    mean, std = x64.mean(axis=0), x64.std(axis=0)
    scale = np.where(std > 1e-12, std, 1.0)  # a constant feature: distance in its own units
    if positive is not None and threshold is not None:
        pred = np.where(proba[:, positive] >= threshold, positive, 1 - positive)
    else:
        pred = proba.argmax(axis=1)
    wrong = np.flatnonzero(pred != y_test)
    # Most confident mistakes first: those are the ones the business will ask about.
    confidence = proba[wrong, pred[wrong]]
    wrong = wrong[np.argsort(-confidence, kind="stable")][:MAX_FAILURE_ROWS]
    return {
        "classes": classes,
        "positive": positive,
        "threshold": threshold,
        "feature_names": feature_names,
        "rows": [int(r) for r in test_rows],
        "y": [int(v) for v in y_test],
        "pred": [int(v) for v in pred],
        "proba": [[float(p) for p in row] for row in proba],
        "train_stats": {"mean": [float(v) for v in mean], "scale": [float(v) for v in scale]},
        "wrong": [
            {"position": int(i), "row": int(test_rows[i]), "x": [float(v) for v in x_test[i]]}
            for i in wrong
        ],
        "selection": selection,
    }


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise CardError(f"cannot read {path}: {exc}") from exc


# ---------------------------------------------------------------- the card


def _confusion_png(cm: np.ndarray, classes: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    size = max(3.5, 0.5 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    ax.imshow(cm, cmap="Blues")
    for i in range(n):
        for j in range(n):
            color = "white" if cm[i, j] > cm.max() / 2 else "black"
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=color, fontsize=8)
    ax.set_xticks(range(n), classes, rotation=45 if n > 4 else 0)
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def _production_lines(manifest: dict[str, Any]) -> list[str]:
    """What a challenger retrained on production examples adds to the Data section."""
    prod = (manifest.get("training") or {}).get("production")
    if not prod:
        return []
    base, champ = prod["base_dataset"], prod["champion"]
    counts = ", ".join(f"{c} {n}" for c, n in prod["class_counts"].items())
    return [
        f"- **Production examples**: {prod['rows']} labelled production rows ({counts}) "
        f"from `{prod['examples_file']}` added to `{base['name']}` ({base['rows']} rows); "
        f"a challenger of version {champ['version']}, with its config. "
        f"{prod['held_out_rows']} newer rows were held out for the offline comparison."
    ]


def render_card(folder: Path) -> str:
    """MODEL_CARD.md's text for an artifact folder (writes confusion_matrix.png beside it)."""
    manifest = _read_json(folder / "manifest.json")
    if manifest is None:
        raise CardError(f"{folder} has no manifest.json")
    hold = _read_json(folder / HOLDOUT_FILE)
    if hold is None:
        raise CardError(f"{folder} has no {HOLDOUT_FILE}; retrain to regenerate the card")
    name, version = manifest["name"], manifest["version"]
    classes = manifest["output"]["classes"]
    cfg = manifest["training"]["config"]
    ev = manifest["evaluation"]
    cv = ev.get("cv")
    ho = ev["holdout"]
    binary = manifest.get("task") == "binary"
    ds = manifest["training"]["dataset"]
    cm = np.asarray(ho["confusion_matrix"], dtype=int)
    _confusion_png(cm, classes, folder / CONFUSION_PNG, f"{name} v{version}: held-out")
    y = np.asarray(hold["y"])
    counts = {c: int((y == i).sum()) for i, c in enumerate(classes)}

    op_lines: list[str] = []
    summary: list[str] = []
    if binary:
        op_lines, summary = operating_point(manifest, hold, name)
    else:
        summary = [
            f"On {ho['n']} held-out cases it picked the right class {pct(ho['accuracy'])} "
            "of the time."
        ]
        op_lines = [
            "## The operating point in business terms",
            "",
            "A multiclass model: each case gets the class with the highest probability; there "
            "is no threshold to tune and every mistake is counted alike. The per-class "
            "precision and recall above say which classes it confuses.",
            "",
        ]

    if cv:
        summary.append(
            f"Across {cv['folds']} cross-validation folds its accuracy was "
            f"{cv['accuracy_mean']:.4f} ± {cv['accuracy_std']:.4f} (mean ± std)."
        )
    pos_class = manifest["output"].get("positive_class")
    features = manifest["input"].get("feature_names")
    kind = manifest["input"].get("kind", "tabular")
    inp = (
        f"an image of {manifest['input']['shape'][-2]}×{manifest['input']['shape'][-1]} pixels"
        if kind == "image"
        else f"{len(features or [])} numeric features"
    )
    lines = [
        f"# Model card: {name}, version {version}",
        "",
        f"Generated {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} from the model's "
        f"manifest (created {manifest.get('created_at', '–')}).",
        "",
        "## Summary",
        "",
        f"**{name}** sorts cases into {len(classes)} classes ({', '.join(classes)})"
        + (f" and flags **{pos_class}**." if pos_class else ".")
        + " "
        + " ".join(summary),
        "",
        "## Intended use",
        "",
        f"- **What it does**: reads {inp} per case and returns a probability for each class"
        + (f"; the probability of {pos_class} is its score." if pos_class else ".")
        + (
            f" A case is flagged {pos_class} when the score reaches "
            f"{manifest['decision']['threshold']:.4f}."
            if binary
            else ""
        ),
        f"- **Trained for**: cases like those in the `{ds['name']}` data set. Cases from "
        "another population, another measuring process or another time may score "
        "differently; watch the drift alert below.",
        "- **Not for**: decisions without a person able to review them where a mistake is "
        "costly, or any input the model was not trained on.",
        "",
        "## Data",
        "",
        f"- **Data set**: `{ds['name']}`, {ds['rows']} rows (sha256 `{ds['sha256'][:12]}…`).",
        *_production_lines(manifest),
        f"- **Classes** (in the model's output order): {', '.join(classes)}.",
        "- **Held-out cases per class**: " + ", ".join(f"{c} {n}" for c, n in counts.items()) + ".",
        "",
        "## How it was trained",
        "",
        *plain_training(cfg, manifest),
        "",
        "The full configuration:",
        "",
        "```yaml",
        yaml.safe_dump(cfg, sort_keys=False).rstrip(),
        "```",
        "",
        "## Quality, with its uncertainty",
        "",
    ]
    if cv:
        lines += [
            f"**Cross-validation** ({cv['folds']} folds; mean ± standard deviation across "
            "folds, so the spread shows how much the result depends on which rows it saw):",
            "",
        ]
        metric_rows = []
        for key, label in (
            ("accuracy", "accuracy"),
            ("macro_f1", "macro F1"),
            ("roc_auc", "ROC AUC"),
            ("log_loss", "log loss (lower is better)"),
        ):
            m, s = cv.get(f"{key}_mean"), cv.get(f"{key}_std")
            if m is not None:
                metric_rows.append([label, f"{m:.4f} ± {s:.4f}"])
        lines += table(["metric", "mean ± std"], metric_rows)
    else:
        lines += ["Cross-validation was off for this run; only the held-out check below.", ""]
    correct = int(np.trace(cm))
    held = [
        [
            "accuracy" + (" at the threshold" if binary else ""),
            f4(ho["accuracy"]),
            interval(correct, int(cm.sum())),
        ],
        ["macro F1", f4(ho.get("macro_f1")), ""],
    ]
    if ho.get("roc_auc") is not None:
        held.append(["ROC AUC", f4(ho["roc_auc"]), ""])
    if binary:
        pos_i = classes.index(manifest["output"]["positive_class"])
        neg = 1 - pos_i
        fp, tn = int(cm[neg, pos_i]), int(cm[neg, neg])
        fn, tp = int(cm[pos_i, neg]), int(cm[pos_i, pos_i])
        held += [
            ["FPR at the threshold", f4(ho["fpr"]), interval(fp, fp + tn)],
            ["FNR at the threshold", f4(ho["fnr"]), interval(fn, fn + tp)],
        ]
    lines += [
        f"**Held-out check** ({ho['n']} cases never used in training; the interval is where "
        "the true rate lies with 95% confidence, given how few cases there are):",
        "",
    ]
    lines += table(["metric", "value", "95% interval"], held)
    lines += ["**Confusion matrix** (held-out; rows: actual, columns: predicted):", ""]
    lines += table(
        ["actual \\ predicted", *classes],
        [[c, *[int(v) for v in cm[i]]] for i, c in enumerate(classes)],
    )
    lines += [f"![Held-out confusion matrix]({CONFUSION_PNG})", ""]
    lines += [
        "**Per class** (precision: of the cases it called this class, the share that were; "
        "recall: of the cases that were this class, the share it found):",
        "",
    ]
    lines += table(["class", "actual", "predicted", "precision", "recall"], per_class(cm, classes))
    lines += op_lines
    lines += failures(hold, manifest)
    lines += monitoring(manifest)
    from .offline import card_section  # after a `verdict-train compare-versions`

    lines += card_section(folder)
    lines += [
        "## Files",
        "",
        "`model.onnx` (the model), `manifest.json` (every number above, machine-readable), "
        f"`{HOLDOUT_FILE}` (held-out scores), `history.json` (loss per epoch) and the plots.",
        "",
    ]
    return "\n".join(lines)


def rebuild_holdout(folder: str | Path, log: Callable[[str], None] | None = None) -> Path:
    """Recreate a version's holdout.json by retraining from its manifest's config.

    For versions trained before the pipeline saved held-out records. Training is seeded and
    deterministic, so the retrained graph must have the manifest's sha256; if it does not,
    the record would describe another model and nothing is written.
    """
    from .config import TensorBoardConfig, validate_config
    from .pipeline import run_training

    folder = Path(folder)
    manifest = _read_json(folder / "manifest.json")
    if manifest is None:
        raise CardError(f"{folder} has no manifest.json")
    try:
        raw = manifest["training"]["config"]
        want = manifest["sha256"]
    except (KeyError, TypeError) as exc:
        raise CardError(f"{folder}/manifest.json has no training config or sha256") from exc
    cfg = validate_config(raw, source=f"{folder}/manifest.json training.config")
    cfg = cfg.model_copy(update={"tensorboard": TensorBoardConfig()})
    with tempfile.TemporaryDirectory(prefix="verdict-card-") as tmp:
        result = run_training(cfg, Path(tmp), log=log or (lambda m: None))
        got = result.manifest["sha256"]
        if got != want:
            raise CardError(
                f"{folder}: retraining its config gave another graph (sha256 {got[:12]}… not "
                f"{want[:12]}…), so a held-out record would describe another model; retrain "
                "the model instead (make models)"
            )
        target = folder / HOLDOUT_FILE
        shutil.copyfile(result.path / HOLDOUT_FILE, target)
    return target


def write_card(folder: str | Path) -> Path:
    """Write MODEL_CARD.md (and confusion_matrix.png) into an artifact folder; return its path."""
    folder = Path(folder)
    try:
        text = render_card(folder)
    except (KeyError, IndexError, TypeError) as exc:
        raise CardError(
            f"{folder}: manifest.json or {HOLDOUT_FILE} lacks what the card needs ({exc!r}); "
            "retrain this version to regenerate them"
        ) from exc
    path = folder / CARD_FILE
    path.write_text(text, encoding="utf-8")
    return path
