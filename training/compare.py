"""Our networks against scikit-learn's LogisticRegression and SVC on the same CV folds."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from .config import Config
from .data import load_dataset, split_dataset
from .evaluate import classification_metrics, cross_validate, cv_folds, summarise
from .fit import train_model
from .pipeline import positive_index

START = "<!-- compare:start -->"
END = "<!-- compare:end -->"


def _baselines(seed: int) -> dict[str, Callable[[], Any]]:
    return {
        "LogisticRegression": lambda: make_pipeline(
            StandardScaler(), LogisticRegression(max_iter=5000)
        ),
        # Platt-scaled SVC probabilities (what SVC(probability=True) did before 1.9).
        "SVC (rbf)": lambda: make_pipeline(
            StandardScaler(),
            CalibratedClassifierCV(SVC(random_state=seed), method="sigmoid", ensemble=False),
        ),
    }


def compare(cfg: Config, log: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """CV summaries of the configured net and the baselines on identical folds."""
    ds = load_dataset(cfg.data, cfg.seed)
    pos = positive_index(cfg, ds)
    split = split_dataset(ds.y, cfg.data, cfg.seed)
    dev = np.sort(np.concatenate([split.train, split.val]))
    k = cfg.cv.folds if cfg.cv.folds >= 2 else 5
    cfg = cfg.model_copy(update={"cv": cfg.cv.model_copy(update={"folds": k})})
    out: dict[str, dict[str, Any]] = {}
    net = cross_validate(cfg, ds, dev, pos, train_model, log)
    out[f"ours ({cfg.model.type.upper()})"] = net.summary
    x, y = ds.x[dev].astype(np.float64), ds.y[dev]
    for name, make in _baselines(cfg.seed).items():
        folds = []
        for tr, te in cv_folds(y, k, cfg.seed):
            est = make().fit(x[tr], y[tr])
            folds.append(classification_metrics(y[te], est.predict_proba(x[te]), pos))
        out[name] = summarise(folds)
    return out


def _cell(s: dict[str, Any], key: str) -> str:
    m = s.get(f"{key}_mean")
    return "–" if m is None else f"{m:.4f} ± {s[f'{key}_std']:.4f}"


def markdown(cfg: Config, results: dict[str, dict[str, Any]]) -> str:
    """One table per config."""
    k = next(iter(results.values()))["folds"]
    lines = [
        f"### {cfg.name} ({cfg.data.name or cfg.data.path}, {k}-fold CV, seed {cfg.seed})",
        "",
        "| model | accuracy | macro-F1 | log-loss | ROC AUC |",
        "|---|---|---|---|---|",
    ]
    for name, s in results.items():
        cells = " | ".join(_cell(s, key) for key in ("accuracy", "macro_f1", "log_loss", "roc_auc"))
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines) + "\n"


def write_between_markers(doc: Path, body: str) -> None:
    """Replace what lies between the compare markers in `doc` (append them when missing)."""
    text = doc.read_text(encoding="utf-8") if doc.exists() else ""
    block = f"{START}\n{body.rstrip()}\n{END}"
    if START in text and END in text:
        text = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + ("\n\n" if text else "") + block + "\n"
    doc.write_text(text, encoding="utf-8")


def run_compare(configs: list[Config], doc: Path | None) -> str:
    """Compare every config; print the tables and optionally write them into `doc`."""
    tables = []
    for cfg in configs:
        print(f"comparing {cfg.name} ...", file=sys.stderr, flush=True)
        tables.append(markdown(cfg, compare(cfg)))
    body = "\n".join(tables)
    if doc is not None:
        write_between_markers(doc, body)
    return body
