"""The offline comparison as people read it: the report's Markdown (also the challenger's
model card section) and its PNG, for binary and multiclass models (training/offline.py makes
the figures)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from .markdown import f4, pct, table

REPORT_MD = "offline_comparison.md"
REPORT_PNG = "offline_comparison.png"
# Up to this many classes the Markdown holds the confusion matrices and the PNG their counts;
# beyond, the matrices are in the JSON and drawn without numbers.
MATRIX_CLASSES = 12
ROLES = ("champion", "challenger")


def section_lines(report: dict[str, Any], depth: int = 2) -> list[str]:
    """The comparison as Markdown lines (the report's body, and the model card's section)."""
    multiclass = report.get("task") == "multiclass"
    h = "#" * depth
    ex = report["examples"]
    c, k = report["champion"], report["challenger"]
    when = " to ".join(
        datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")
        for t in (ex["captured_from"], ex["captured_until"])
    )
    if multiclass:
        decides = "each deciding by its most probable class"
        what = f"{len(report['classes'])} classes"
        priced = (
            "Every misclassification costs 1 (multiclass manifests state no costs; the "
            "promotion rule prices their errors the same way), so the cost per row is the "
            "error rate."
        )
    else:
        decides = "each at its own threshold"
        what = f"{ex['positives']} positive"
        priced = (
            f"Costs: a false positive {report['costs']['cost_fp']:g}, a false negative "
            f"{report['costs']['cost_fn']:g}."
        )
    lines = [
        f"{h} Against the champion on recent production traffic",
        "",
        f"**{report['summary']}**",
        "",
        f"Champion version {c['version']} and challenger version {k['version']}, {decides}, "
        f"on the {ex['rows']} newest labelled production examples ({what}; captured {when}; "
        f"`{ex['file']}`), which neither was trained on. {priced} Bounds are one-sided "
        f"{report['level']:.0%} Clopper–Pearson upper bounds; intervals are two-sided.",
        "",
    ]
    lines += _multiclass_tables(report) if multiclass else _binary_table(report)
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


def _cost(r: dict[str, Any]) -> str:
    return f"{f4(r['cost_per_row'])} ({f4(r['cost_interval'][0])}–{f4(r['cost_interval'][1])})"


def _binary_table(report: dict[str, Any]) -> list[str]:
    rows = []
    for name in ROLES:
        r = report[name]
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
                _cost(r),
            ]
        )
    return table(
        ["model", "threshold", "TP", "FP", "TN", "FN", "FNR (bound)", "FPR (bound)", "cost/row"],
        rows,
    )


def _multiclass_tables(report: dict[str, Any]) -> list[str]:
    classes = report["classes"]
    rows = []
    for name in ROLES:
        r = report[name]
        lo, hi = r["error_rate_interval"] or (None, None)
        rows.append(
            [
                f"{name} v{r['version']}",
                f"{r['errors']} of {report['examples']['rows']}",
                f"{pct(r['error_rate'])} (≤ {pct(r['error_rate_upper'])})",
                f"{pct(lo)}–{pct(hi)}",
                _cost(r),
            ]
        )
    lines = table(["model", "errors", "error rate (bound)", "interval", "cost/row"], rows)
    lines += ["Per class, the share of its rows given another class (bound):", ""]
    per = [report[name]["per_class"] for name in ROLES]
    lines += table(
        ["class", "rows", *(f"{name} v{report[name]['version']}" for name in ROLES)],
        [
            [
                a["class"],
                a["rows"],
                *(f"{pct(x['error_rate'])} (≤ {pct(x['error_rate_upper'])})" for x in (a, b)),
            ]
            for a, b in zip(*per, strict=True)
        ],
    )
    if len(classes) > MATRIX_CLASSES:
        return [*lines, "The confusion matrices are in the report's JSON and PNG.", ""]
    for name in ROLES:
        cm = report[name]["confusion"]
        lines += [f"Confusion of the {name} v{report[name]['version']} (rows: actual):", ""]
        lines += table(
            ["actual \\ predicted", *classes],
            [[c, *row] for c, row in zip(classes, cm, strict=True)],
        )
    return lines


def _matrix(report: dict[str, Any], role: str) -> tuple[np.ndarray, list[str]]:
    """A role's confusion matrix (rows actual, columns predicted) and its class labels."""
    m = report[role]["confusion"]
    if report.get("task") == "multiclass":
        return np.asarray(m), list(report["classes"])
    classes = report.get("classes") or ["negative", "positive"]
    positive = report.get("positive_class") or classes[-1]
    negative = next(c for c in classes if c != positive)
    return np.array([[m["tn"], m["fp"]], [m["fn"], m["tp"]]]), [negative, positive]


def plot(report: dict[str, Any], path: Path) -> None:
    """The two confusion matrices and the costs per row with their intervals, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(report.get("classes") or [0, 1])
    side = 3.6 if k <= 4 else 4.6
    fig, axes = plt.subplots(1, 3, figsize=(3 * side, side), dpi=100)
    for ax, key in zip(axes[:2], ROLES, strict=True):
        cm, labels = _matrix(report, key)
        ax.imshow(cm, cmap="Blues")
        if len(labels) <= MATRIX_CLASSES:
            for i in range(len(labels)):
                for j in range(len(labels)):
                    color = "white" if cm[i, j] > cm.max() / 2 else "black"
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=color, size=8)
            ticks = list(range(len(labels)))
            ax.set_xticks(ticks, labels)
            ax.set_yticks(ticks, labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        ax.set_title(f"{key} v{report[key]['version']}")
    ax = axes[2]
    means = [report[n]["cost_per_row"] for n in ROLES]
    lows = [means[i] - report[n]["cost_interval"][0] for i, n in enumerate(ROLES)]
    highs = [report[n]["cost_interval"][1] - means[i] for i, n in enumerate(ROLES)]
    ax.bar(list(ROLES), means, yerr=[lows, highs], capsize=6, color=["tab:gray", "tab:blue"])
    ax.set_ylabel("expected cost per row")
    ax.set_title(f"{report['level']:.0%} intervals")
    fig.suptitle(report["summary"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None}, bbox_inches="tight")
    plt.close(fig)
