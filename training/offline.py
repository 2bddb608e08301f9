"""Champion against challenger, offline, on the newest labelled production examples that
neither was trained on: each model deciding as it serves (a binary model at its own threshold,
a multiclass one by argmax), confusion matrices, error rates with their bounds, and the
expected cost per row with a paired bootstrap interval of the difference; written as a report
(Markdown, PNG, JSON) and into the challenger's model card (docs/lifecycle.md, "Offline
comparison")."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from .artifact import read_manifest, write_json
from .bounds import upper_bound, wilson
from .data import DataError
from .markdown import f4
from .offline_report import REPORT_MD, REPORT_PNG, plot, section_lines
from .production import Examples, columns_of, read_examples

REPORT_JSON = "offline_comparison.json"
RESAMPLES = 4000
LEVEL = 0.95
# What a multiclass error costs: the manifests of multiclass models carry no costs, and the
# service's promotion rule prices each of their errors at 1 (docs/lifecycle.md, "The rule").
MULTICLASS_ERROR_COST = 1.0


@dataclass
class Scored:
    """One model on the held-out rows: its decisions and what each row's error cost."""

    version: int
    threshold: float | None
    predicted: np.ndarray  # class index per row
    cost: np.ndarray  # per row

    def record(
        self, actual: np.ndarray, classes: list[str], positive: int | None, level: float
    ) -> dict[str, Any]:
        """The figures of the report: the confusion, error rates with bounds, cost per row."""
        k = len(classes)
        cm = np.zeros((k, k), dtype=np.int64)  # rows actual, columns predicted
        np.add.at(cm, (actual, self.predicted), 1)
        out: dict[str, Any] = {"version": self.version, "threshold": self.threshold}
        if positive is not None:
            tp, fn = int(cm[positive, positive]), int(cm[positive].sum() - cm[positive, positive])
            fp = int(cm[:, positive].sum() - cm[positive, positive])
            tn = int(cm.sum()) - tp - fn - fp
            out["confusion"] = {"tp": tp, "fp": fp, "tn": tn, "fn": fn}
            out.update(_rate("fnr", fn, tp + fn, level))
            out.update(_rate("fpr", fp, fp + tn, level))
        else:
            rows, wrong = cm.sum(axis=1), cm.sum(axis=1) - np.diag(cm)  # per actual class
            out["confusion"] = cm.tolist()
            out["errors"] = int(wrong.sum())
            out.update(_rate("error_rate", int(wrong.sum()), int(rows.sum()), level))
            out["per_class"] = [
                {
                    "class": c,
                    "rows": int(rows[i]),
                    "errors": int(wrong[i]),
                    **_rate("error_rate", int(wrong[i]), int(rows[i]), level),
                }
                for i, c in enumerate(classes)
            ]
        out["cost_per_row"] = float(self.cost.mean())
        return out


def _rate(key: str, k: int, n: int, level: float) -> dict[str, Any]:
    """A rate k/n with its one-sided Clopper–Pearson upper bound and its Wilson interval."""
    return {
        key: k / n if n else None,
        f"{key}_upper": upper_bound(k, n, level) if n else None,
        f"{key}_interval": list(wilson(k, n)) if n else None,
    }


def _probabilities(folder: Path, manifest: dict[str, Any], x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(
        str(folder / manifest.get("model_file", "model.onnx")),
        providers=["CPUExecutionProvider"],
    )
    shape = [len(x), *manifest["input"]["shape"][1:]]  # an image's flat rows, as it reads them
    probs = session.run([manifest["output"]["name"]], {manifest["input"]["name"]: x.reshape(shape)})
    return np.asarray(probs[0], dtype=np.float64)


def _score(
    folder: Path,
    manifest: dict[str, Any],
    ex: Examples,
    positive: int | None,
    costs: dict[str, float],
) -> Scored:
    """Each row decided as the version serves it, and the cost of its error."""
    probs = _probabilities(folder, manifest, ex.x)
    if positive is None:
        predicted = probs.argmax(axis=1)
        cost = (predicted != ex.y) * MULTICLASS_ERROR_COST
        return Scored(int(manifest["version"]), None, predicted, cost.astype(np.float64))
    threshold = float(manifest["decision"]["threshold"])
    flagged = probs[:, positive] >= threshold
    other = 1 - positive  # binary: the other of the two classes
    predicted = np.where(flagged, positive, other)
    actual = ex.y == positive
    wrong = costs["cost_fp"] * (flagged & ~actual) + costs["cost_fn"] * (~flagged & actual)
    return Scored(int(manifest["version"]), threshold, predicted, wrong.astype(np.float64))


def _check_unseen(manifest: dict[str, Any], ex: Examples, who: str) -> None:
    """Refuse rows the model may have been trained on (captured up to its last example)."""
    production = (manifest.get("training") or {}).get("production")
    if not production or ex.rows == 0:
        return
    until = production.get("captured_until")
    if until is not None and float(ex.captured_at.min()) <= float(until):
        raise DataError(
            f"the {who} (version {manifest['version']}) was trained on production examples "
            f"captured up to {until}, and some held-out rows are no newer: export a later "
            "window, so that neither model has seen the rows it is judged on"
        )


def bootstrap_mean_interval(
    values: np.ndarray, resamples: int, seed: int, level: float
) -> tuple[float, float]:
    """Percentile interval of the mean of `values` over seeded bootstrap resamples of rows."""
    rng = np.random.default_rng(seed)
    n = len(values)
    means = np.empty(resamples)
    for start in range(0, resamples, 500):
        k = min(500, resamples - start)
        idx = rng.integers(0, n, size=(k, n))
        means[start : start + k] = values[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1.0 - alpha))


def _task(a: dict[str, Any], b: dict[str, Any]) -> str:
    """The task both versions share (binary with a threshold, or multiclass), else refused."""
    tasks = {a.get("task"), b.get("task")}
    if len(tasks) != 1 or tasks - {"binary", "multiclass"}:
        raise DataError(
            f"the offline comparison needs two binary or two multiclass versions; got "
            f"{a.get('task')} and {b.get('task')}"
        )
    task = str(a["task"])
    if task == "binary" and any(m["decision"].get("threshold") is None for m in (a, b)):
        raise DataError("a binary version without a threshold cannot be compared")
    if a["output"]["classes"] != b["output"]["classes"]:
        raise DataError("the two versions have different classes")
    return task


def _costs(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    """The binary versions' shared costs (else their expected costs are not on one scale)."""
    costs_a, costs_b = a.get("costs") or {}, b.get("costs") or {}
    pair_a = (costs_a.get("cost_fp"), costs_a.get("cost_fn"))
    if pair_a != (costs_b.get("cost_fp"), costs_b.get("cost_fn")) or None in pair_a:
        raise DataError(
            f"the versions were trained for different costs ({costs_a} and {costs_b}); "
            "their expected costs are not on one scale"
        )
    return {"cost_fp": float(pair_a[0]), "cost_fn": float(pair_a[1])}  # type: ignore[arg-type]


def _verdict(mean: float, lo: float, hi: float, level: float) -> tuple[str, str]:
    if hi < 0:
        return "challenger_cheaper", (
            f"The challenger costs less: {f4(-mean)} less per row, between {f4(-hi)} and "
            f"{f4(-lo)} with {level:.0%} confidence."
        )
    if lo > 0:
        return "champion_cheaper", (
            f"The champion costs less: the challenger costs {f4(mean)} more per row, between "
            f"{f4(lo)} and {f4(hi)} with {level:.0%} confidence."
        )
    return "no_clear_difference", (
        f"No clear difference: the challenger's cost per row differs by {f4(mean)}, "
        f"between {f4(lo)} and {f4(hi)} with {level:.0%} confidence (the interval holds 0)."
    )


def compare_versions(
    champion: Path,
    challenger: Path,
    examples_path: Path,
    out: Path | None = None,
    seed: int = 0,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
) -> dict[str, Any]:
    """Compare two versions of a model (binary or multiclass, tabular or image) on the
    `holdout` rows of an export; write the report into `out` (default: the challenger's
    folder, whose model card gets the section) and return its figures."""
    a, b = read_manifest(champion), read_manifest(challenger)
    task = _task(a, b)
    classes = list(a["output"]["classes"])
    positive = classes.index(a["output"]["positive_class"]) if task == "binary" else None
    costs = _costs(a, b) if task == "binary" else {"error": MULTICLASS_ERROR_COST}
    columns_a, columns_b = columns_of(a), columns_of(b)
    image = not (a["input"].get("feature_names") and b["input"].get("feature_names"))
    if image and columns_a != columns_b:
        raise DataError(
            f"the two versions take different inputs ({a['input']['shape']} and "
            f"{b['input']['shape']})"
        )
    ex_a = read_examples(examples_path, columns_a, classes, split="holdout", image=image)
    ex_b = read_examples(examples_path, columns_b, classes, split="holdout", image=image)
    if ex_a.rows == 0:
        raise DataError(f"{examples_path} has no rows marked split=holdout to compare on")
    _check_unseen(a, ex_a, "champion")
    _check_unseen(b, ex_b, "challenger")
    sa = _score(champion, a, ex_a, positive, costs)
    sb = _score(challenger, b, ex_b, positive, costs)
    diff = sb.cost - sa.cost
    lo, hi = bootstrap_mean_interval(diff, resamples, seed, level)
    mean = float(diff.mean())
    verdict, says = _verdict(mean, lo, hi, level)
    examples: dict[str, Any] = {
        "file": examples_path.name,
        "sha256": ex_a.sha256,
        "rows": ex_a.rows,
        "captured_from": float(ex_a.captured_at.min()),
        "captured_until": float(ex_a.captured_at.max()),
    }
    if positive is not None:
        examples["positives"] = int((ex_a.y == positive).sum())
    else:
        examples["class_counts"] = {c: int((ex_a.y == i).sum()) for i, c in enumerate(classes)}
    report: dict[str, Any] = {
        "model": a["name"],
        "task": task,
        "classes": classes,
        "positive_class": a["output"]["positive_class"] if positive is not None else None,
        "created_at": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "examples": examples,
        "costs": costs,
        "level": level,
        "champion": sa.record(ex_a.y, classes, positive, level),
        "challenger": sb.record(ex_b.y, classes, positive, level),
        "difference": {
            "cost_per_row": mean,
            "interval": [lo, hi],
            "method": f"paired bootstrap of per-row cost differences, {resamples} resamples, "
            f"seed {seed}, percentile interval",
        },
        "verdict": verdict,
        "summary": says,
    }
    report["champion"]["cost_interval"] = list(
        bootstrap_mean_interval(sa.cost, resamples, seed + 1, level)
    )
    report["challenger"]["cost_interval"] = list(
        bootstrap_mean_interval(sb.cost, resamples, seed + 2, level)
    )
    target = out if out is not None else challenger
    target.mkdir(parents=True, exist_ok=True)
    write_json(target / REPORT_JSON, report)
    (target / REPORT_MD).write_text(
        "\n".join([f"# Offline comparison: {a['name']}", "", *section_lines(report, 2)]),
        encoding="utf-8",
    )
    plot(report, target / REPORT_PNG)
    if out is None and (challenger / "MODEL_CARD.md").exists():
        from .card import write_card

        write_card(challenger)
    return report


def card_section(folder: Path) -> list[str]:
    """The model card's section for a version that was compared with its champion."""
    path = folder / REPORT_JSON
    if not path.exists():
        return []
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        return section_lines(report, 2)
    except (OSError, ValueError, KeyError, TypeError):
        return []
