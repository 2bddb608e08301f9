"""Champion against challenger, offline, on the newest labelled production examples that
neither was trained on: each model at its own threshold, confusion matrices, FNR and FPR with
their bounds, and the expected cost per row with a paired bootstrap interval of the
difference; written as a report (Markdown, PNG, JSON) and into the challenger's model card
(docs/lifecycle.md, "Offline comparison")."""

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
from .markdown import f4, pct, table
from .production import Examples, read_examples

REPORT_JSON = "offline_comparison.json"
REPORT_MD = "offline_comparison.md"
REPORT_PNG = "offline_comparison.png"
RESAMPLES = 4000
LEVEL = 0.95


@dataclass
class Scored:
    """One model on the held-out rows."""

    label: str
    version: int
    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int
    cost: np.ndarray  # per row

    def record(self, level: float) -> dict[str, Any]:
        pos, neg = self.tp + self.fn, self.fp + self.tn
        return {
            "version": self.version,
            "threshold": self.threshold,
            "confusion": {"tp": self.tp, "fp": self.fp, "tn": self.tn, "fn": self.fn},
            "fnr": self.fn / pos if pos else None,
            "fnr_upper": upper_bound(self.fn, pos, level) if pos else None,
            "fnr_interval": list(wilson(self.fn, pos)) if pos else None,
            "fpr": self.fp / neg if neg else None,
            "fpr_upper": upper_bound(self.fp, neg, level) if neg else None,
            "fpr_interval": list(wilson(self.fp, neg)) if neg else None,
            "cost_per_row": float(self.cost.mean()),
        }


def _scores(folder: Path, manifest: dict[str, Any], x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(
        str(folder / manifest.get("model_file", "model.onnx")),
        providers=["CPUExecutionProvider"],
    )
    probs = session.run([manifest["output"]["name"]], {manifest["input"]["name"]: x})[0]
    pos = manifest["output"]["classes"].index(manifest["output"]["positive_class"])
    return np.asarray(probs[:, pos], dtype=np.float64)


def _score(
    label: str, folder: Path, manifest: dict[str, Any], ex: Examples, cost_fp: float, cost_fn: float
) -> Scored:
    classes = manifest["output"]["classes"]
    pos = classes.index(manifest["output"]["positive_class"])
    threshold = float(manifest["decision"]["threshold"])
    flagged = _scores(folder, manifest, ex.x) >= threshold
    actual = ex.y == pos
    fp = flagged & ~actual
    fn = ~flagged & actual
    cost = cost_fp * fp + cost_fn * fn
    return Scored(
        label,
        int(manifest["version"]),
        threshold,
        int((flagged & actual).sum()),
        int(fp.sum()),
        int((~flagged & ~actual).sum()),
        int(fn.sum()),
        cost.astype(np.float64),
    )


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


def compare_versions(
    champion: Path,
    challenger: Path,
    examples_path: Path,
    out: Path | None = None,
    seed: int = 0,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
) -> dict[str, Any]:
    """Compare two versions of a binary model on the `holdout` rows of an export; write the
    report into `out` (default: the challenger's folder, whose model card gets the section)
    and return its figures."""
    a, b = read_manifest(champion), read_manifest(challenger)
    for m in (a, b):
        if m.get("task") != "binary" or m["decision"].get("threshold") is None:
            raise DataError("the offline comparison is for binary models with a threshold")
    if a["output"]["classes"] != b["output"]["classes"]:
        raise DataError("the two versions have different classes")
    costs_a, costs_b = a.get("costs") or {}, b.get("costs") or {}
    if (costs_a.get("cost_fp"), costs_a.get("cost_fn")) != (
        costs_b.get("cost_fp"),
        costs_b.get("cost_fn"),
    ):
        raise DataError(
            f"the versions were trained for different costs ({costs_a} and {costs_b}); "
            "their expected costs are not on one scale"
        )
    cost_fp, cost_fn = float(costs_a["cost_fp"]), float(costs_a["cost_fn"])
    classes = a["output"]["classes"]
    ex_a = read_examples(examples_path, a["input"]["feature_names"], classes, split="holdout")
    ex_b = read_examples(examples_path, b["input"]["feature_names"], classes, split="holdout")
    if ex_a.rows == 0:
        raise DataError(f"{examples_path} has no rows marked split=holdout to compare on")
    _check_unseen(a, ex_a, "champion")
    _check_unseen(b, ex_b, "challenger")
    sa = _score("champion", champion, a, ex_a, cost_fp, cost_fn)
    sb = _score("challenger", challenger, b, ex_b, cost_fp, cost_fn)
    diff = sb.cost - sa.cost
    lo, hi = bootstrap_mean_interval(diff, resamples, seed, level)
    mean = float(diff.mean())
    if hi < 0:
        verdict = "challenger_cheaper"
        says = (
            f"The challenger costs less: {f4(-mean)} less per row, between {f4(-hi)} and "
            f"{f4(-lo)} with {level:.0%} confidence."
        )
    elif lo > 0:
        verdict = "champion_cheaper"
        says = (
            f"The champion costs less: the challenger costs {f4(mean)} more per row, between "
            f"{f4(lo)} and {f4(hi)} with {level:.0%} confidence."
        )
    else:
        verdict = "no_clear_difference"
        says = (
            f"No clear difference: the challenger's cost per row differs by {f4(mean)}, "
            f"between {f4(lo)} and {f4(hi)} with {level:.0%} confidence (the interval holds 0)."
        )
    report: dict[str, Any] = {
        "model": a["name"],
        "created_at": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "examples": {
            "file": examples_path.name,
            "sha256": ex_a.sha256,
            "rows": ex_a.rows,
            "positives": int((ex_a.y == classes.index(a["output"]["positive_class"])).sum()),
            "captured_from": float(ex_a.captured_at.min()),
            "captured_until": float(ex_a.captured_at.max()),
        },
        "costs": {"cost_fp": cost_fp, "cost_fn": cost_fn},
        "level": level,
        "champion": sa.record(level),
        "challenger": sb.record(level),
        "difference": {
            "cost_per_row": mean,
            "interval": [lo, hi],
            "method": f"paired bootstrap of per-row cost differences, {resamples} resamples, "
            f"seed {seed}, percentile interval",
        },
        "verdict": verdict,
        "summary": says,
    }
    target = out if out is not None else challenger
    target.mkdir(parents=True, exist_ok=True)
    for_cis = {
        "champion": bootstrap_mean_interval(sa.cost, resamples, seed + 1, level),
        "challenger": bootstrap_mean_interval(sb.cost, resamples, seed + 2, level),
    }
    report["champion"]["cost_interval"] = list(for_cis["champion"])
    report["challenger"]["cost_interval"] = list(for_cis["challenger"])
    write_json(target / REPORT_JSON, report)
    (target / REPORT_MD).write_text(
        "\n".join([f"# Offline comparison: {a['name']}", "", *section_lines(report, 2)]),
        encoding="utf-8",
    )
    _plot(report, classes, a["output"]["positive_class"], target / REPORT_PNG)
    if out is None and (challenger / "MODEL_CARD.md").exists():
        from .card import write_card

        write_card(challenger)
    return report


def section_lines(report: dict[str, Any], depth: int = 2) -> list[str]:
    """The comparison as Markdown lines (the report's body, and the model card's section)."""
    h = "#" * depth
    ex = report["examples"]
    c, k = report["champion"], report["challenger"]
    when = " to ".join(
        datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")
        for t in (ex["captured_from"], ex["captured_until"])
    )
    lines = [
        f"{h} Against the champion on recent production traffic",
        "",
        f"**{report['summary']}**",
        "",
        f"Champion version {c['version']} and challenger version {k['version']}, each at its "
        f"own threshold, on the {ex['rows']} newest labelled production examples "
        f"({ex['positives']} positive; captured {when}; `{ex['file']}`), which neither was "
        f"trained on. Costs: a false positive {report['costs']['cost_fp']:g}, a false "
        f"negative {report['costs']['cost_fn']:g}. Bounds are one-sided {report['level']:.0%} "
        "Clopper–Pearson upper bounds; intervals are two-sided.",
        "",
    ]
    rows = []
    for name, r in (("champion", c), ("challenger", k)):
        m = r["confusion"]
        rows.append(
            [
                f"{name} v{r['version']}",
                f4(r["threshold"]),
                m["tp"],
                m["fp"],
                m["tn"],
                m["fn"],
                f"{pct(r['fnr'])} (≤ {pct(r['fnr_upper'])})",
                f"{pct(r['fpr'])} (≤ {pct(r['fpr_upper'])})",
                f"{f4(r['cost_per_row'])} ({f4(r['cost_interval'][0])}–"
                f"{f4(r['cost_interval'][1])})",
            ]
        )
    lines += table(
        ["model", "threshold", "TP", "FP", "TN", "FN", "FNR (bound)", "FPR (bound)", "cost/row"],
        rows,
    )
    d = report["difference"]
    lines += [
        f"Challenger minus champion, expected cost per row: **{f4(d['cost_per_row'])}** "
        f"({report['level']:.0%} interval {f4(d['interval'][0])} to {f4(d['interval'][1])}; "
        f"{d['method']}).",
        "",
        f"![Offline comparison]({REPORT_PNG})",
        "",
    ]
    return lines


def _plot(report: dict[str, Any], classes: list[str], positive: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6), dpi=100)
    negative = next(c for c in classes if c != positive)
    for ax, key in zip(axes[:2], ("champion", "challenger"), strict=True):
        m = report[key]["confusion"]
        cm = np.array([[m["tn"], m["fp"]], [m["fn"], m["tp"]]])
        ax.imshow(cm, cmap="Blues")
        for i in range(2):
            for j in range(2):
                color = "white" if cm[i, j] > cm.max() / 2 else "black"
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=color)
        ax.set_xticks([0, 1], [negative, positive])
        ax.set_yticks([0, 1], [negative, positive])
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        ax.set_title(f"{key} v{report[key]['version']}")
    ax = axes[2]
    names = ["champion", "challenger"]
    means = [report[n]["cost_per_row"] for n in names]
    lows = [means[i] - report[n]["cost_interval"][0] for i, n in enumerate(names)]
    highs = [report[n]["cost_interval"][1] - means[i] for i, n in enumerate(names)]
    ax.bar(names, means, yerr=[lows, highs], capsize=6, color=["tab:gray", "tab:blue"])
    ax.set_ylabel("expected cost per row")
    ax.set_title(f"{report['level']:.0%} intervals")
    fig.suptitle(report["summary"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


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
