"""The model card: MODEL_CARD.md (and its PNGs) for the business side, from an artifact folder."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .evaluate import choose_threshold, confusion_at

CARD_FILE = "MODEL_CARD.md"
HOLDOUT_FILE = "holdout.json"
CONFUSION_PNG = "confusion_matrix.png"
MAX_FAILURES = 10  # held-out errors listed in the card
MAX_FAILURE_ROWS = 200  # misclassified rows whose features the pipeline keeps
STANDOUT_FEATURES = 3
TRADEOFF_THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
# Cost scenarios for "what if the business changes the costs": (label, fp factor, fn factor).
COST_SCENARIOS = (
    ("a missed positive costs half as much", 1.0, 0.5),
    ("a missed positive costs twice as much", 1.0, 2.0),
    ("a missed positive costs 5 times as much", 1.0, 5.0),
    ("a false alarm costs twice as much", 2.0, 1.0),
    ("a false alarm costs 5 times as much", 5.0, 1.0),
)


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


# ---------------------------------------------------------------- formatting helpers


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _f4(v: float | None) -> str:
    return "–" if v is None else f"{v:.4f}"


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n (sound for small n and k near 0 or n)."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _interval(k: int, n: int) -> str:
    lo, hi = wilson(k, n)
    return f"{100 * lo:.1f}–{100 * hi:.1f}% ({k} of {n})"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(_cell(h) for h in header) + " |"]
    out.append("|" + "---|" * len(header))
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return [*out, ""]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise CardError(f"cannot read {path}: {exc}") from exc


# ---------------------------------------------------------------- sections


def _plain_model(cfg: dict[str, Any]) -> str:
    m = cfg["model"]
    act = str(m.get("activation", "relu")).replace("_", " ")
    if m.get("type") == "cnn":
        blocks = ", ".join(str(c) for c in m["channels"])
        text = (
            f"a small convolutional network: {len(m['channels'])} convolution blocks with "
            f"{blocks} filters ({m['kernel_size']}×{m['kernel_size']} kernels, "
            f"{act} activations"
            + (", batch normalisation" if m.get("batch_norm") else "")
            + (f", {m['pool']} pooling" if m.get("pool") != "none" else "")
            + ")"
        )
        if m.get("head_hidden"):
            text += f", then a dense layer of {m['head_hidden']} units"
        drops = [d for d in (m.get("dropout", 0), m.get("head_dropout", 0)) if d]
        if drops:
            text += f", with dropout ({', '.join(f'{d:g}' for d in drops)})"
        return text
    hidden = m.get("hidden", [])
    text = (
        f"a multilayer perceptron with {len(hidden)} hidden "
        f"layer{'s' if len(hidden) != 1 else ''} of {', '.join(str(h) for h in hidden)} units "
        f"and {act} activations"
    )
    if m.get("norm", "none") != "none":
        text += f", {m['norm']} normalisation"
    if m.get("dropout"):
        text += f", dropout {m['dropout']:g}"
    return text


def _plain_training(cfg: dict[str, Any], manifest: dict[str, Any]) -> list[str]:
    t = cfg["train"]
    d = cfg["data"]
    es = t.get("early_stopping", {})
    fit = manifest["evaluation"].get("fit") or {}
    split = manifest["training"].get("split", {})
    opt = {"sgd": "plain SGD", "momentum": "SGD with momentum", "adamw": "AdamW"}.get(
        t["optimizer"], t["optimizer"].capitalize()
    )
    scaling = {
        "feature": "each feature standardised with the training rows' mean and spread",
        "global": "all values standardised with one mean and spread",
        "none": "raw values, unscaled",
    }[d.get("scaling", "feature")]
    lines = [
        f"- **Network**: {_plain_model(cfg)}.",
        f"- **Input scaling**: {scaling}; the scaling is part of the exported model, so "
        "clients send raw values.",
        f"- **Optimisation**: {opt}, learning rate {t['lr']:g}"
        + (f", weight decay {t['weight_decay']:g}" if t.get("weight_decay") else "")
        + f", batches of {t['batch_size']} rows, up to {t['epochs']} passes over the data "
        "(epochs)"
        + (
            f", stopping early when the validation loss has not improved for "
            f"{es.get('patience')} epochs"
            if es.get("enabled")
            else ""
        )
        + ".",
        f"- **Kept weights**: those of epoch {fit.get('best_epoch', '–')}, where the "
        "validation loss was lowest.",
        f"- **Data split** (stratified, seed {manifest['training'].get('seed')}): "
        f"{split.get('train', '–')} rows to train, {split.get('validation', '–')} to "
        f"decide when to stop, {split.get('test', '–')} held out and never seen until the "
        "final check below.",
    ]
    if cfg.get("cv", {}).get("folds", 0) >= 2:
        lines.append(
            f"- **Cross-validation**: the training and validation rows were also split "
            f"{cfg['cv']['folds']} ways; {cfg['cv']['folds']} models were each trained on "
            "all but one part and scored on the part they had not seen."
        )
    if t.get("augment_shift"):
        lines.append(
            f"- **Augmentation**: images shifted at random by up to {t['augment_shift']} pixel."
        )
    return lines


def _per_class(cm: np.ndarray, classes: list[str]) -> list[list[Any]]:
    rows = []
    for i, c in enumerate(classes):
        tp = int(cm[i, i])
        predicted = int(cm[:, i].sum())
        actual = int(cm[i, :].sum())
        precision = tp / predicted if predicted else None
        recall = tp / actual if actual else None
        rows.append([c, actual, predicted, _f4(precision), _f4(recall)])
    return rows


def _rates(y_pos: np.ndarray, scores: np.ndarray, t: float, cfp: float, cfn: float) -> list[Any]:
    c = confusion_at(y_pos, scores, t)
    n = len(scores)
    fpr = c["fp"] / (c["fp"] + c["tn"]) if c["fp"] + c["tn"] else 0.0
    fnr = c["fn"] / (c["fn"] + c["tp"]) if c["fn"] + c["tp"] else 0.0
    cost = 1000 * (cfp * c["fp"] + cfn * c["fn"]) / n
    flagged = (c["tp"] + c["fp"]) / n
    return [fpr, fnr, cost, flagged]


def _target_check(
    ev: dict[str, Any], obj: dict[str, Any], n_pos: int, n_neg: int, pos_name: str
) -> list[str]:
    """A warning line per target the held-out cases already miss, with what one case weighs."""
    out = []
    for key, rate, n, what in (
        ("max_fnr", ev.get("fnr"), n_pos, f"{pos_name} cases"),
        ("max_fpr", ev.get("fpr"), n_neg, "other cases"),
    ):
        target = obj.get(key)
        if target is None or rate is None or rate <= target:
            continue
        step = f"; with {n} {what} held out, one case moves it by {_pct(1 / n)}" if n else ""
        out.append(
            f"- **Warning**: the held-out {key[4:].upper()} {_pct(rate)} is above the target "
            f"{_pct(target)}{step}. Expect `Verdict{key[4:].upper()}AboveTarget` to fire in "
            "production unless more data or a lower-risk threshold closes the gap."
        )
    return out


def tradeoff_rows(
    y_pos: np.ndarray, scores: np.ndarray, chosen: float, cfp: float, cfn: float
) -> list[dict[str, Any]]:
    """Threshold -> FPR, FNR, expected cost per 1,000 predictions, share flagged."""
    # The chosen threshold exactly as the manifest has it, so its row matches the manifest.
    ts = sorted({*(t for t in TRADEOFF_THRESHOLDS if abs(t - chosen) > 1e-9), chosen})
    out = []
    for t in ts:
        fpr, fnr, cost, flagged = _rates(y_pos, scores, t, cfp, cfn)
        out.append(
            {
                "threshold": t,
                "fpr": fpr,
                "fnr": fnr,
                "cost_per_1000": cost,
                "flagged": flagged,
                "chosen": t == chosen,
            }
        )
    return out


def _operating_point(
    manifest: dict[str, Any], hold: dict[str, Any], name: str
) -> tuple[list[str], list[str]]:
    """The binary operating point section and the summary sentences it yields."""
    dec = manifest["decision"]
    costs = manifest["costs"]
    obj = manifest["objectives"]
    ev = manifest["evaluation"]["holdout"]
    cfp, cfn = float(costs["cost_fp"]), float(costs["cost_fn"])
    t = float(dec["threshold"])
    pos = int(hold["positive"])
    pos_name = hold["classes"][pos]
    y_pos = np.asarray(hold["y"]) == pos
    scores = np.asarray(hold["proba"])[:, pos]
    targets = []
    if obj.get("max_fnr") is not None:
        targets.append(f"miss at most {_pct(obj['max_fnr'])} of {pos_name} cases (max FNR)")
    if obj.get("max_fpr") is not None:
        targets.append(f"flag at most {_pct(obj['max_fpr'])} of the other cases wrongly (max FPR)")
    lines = [
        "## The operating point in business terms",
        "",
        f"The model gives each case a **score**: its estimated probability of being "
        f"**{pos_name}**. A case is flagged {pos_name} when its score is at or above the "
        f"**threshold {t:.4f}**.",
        "",
        f"- **Costs** set at training time: a false alarm (false positive) costs {cfp:g}, a "
        f"missed {pos_name} case (false negative) costs {cfn:g}.",
        f"- **Targets**: {'; '.join(targets) if targets else 'none; costs alone decide'}.",
        f"- **Why this threshold**: it {dec['reason']}.",
        f"- **Expected** (on the scores it was chosen on): FPR {_pct(dec.get('expected_fpr'))}, "
        f"FNR {_pct(dec.get('expected_fnr'))}"
        + ("" if dec.get("constraints_met", True) else "; **the targets could not all be met**")
        + ".",
        f"- **Measured on the held-out cases** ({ev['n']}): FPR {_pct(ev['fpr'])} "
        f"(FPR {_f4(ev['fpr'])}), FNR {_pct(ev['fnr'])} (FNR {_f4(ev['fnr'])}).",
        *_target_check(ev, obj, int(y_pos.sum()), int((~y_pos).sum()), pos_name),
        "",
        "FPR (false positive rate): the share of cases that are *not* "
        f"{pos_name} which the model flags anyway. FNR (false negative rate): the share of "
        f"{pos_name} cases the model lets through.",
        "",
        "### Trade-off table (held-out cases)",
        "",
        "What each threshold would have done on the held-out cases, with today's costs. "
        "Lower thresholds flag more cases: fewer misses, more false alarms.",
        "",
    ]
    rows = tradeoff_rows(y_pos, scores, t, cfp, cfn)
    lines += _table(
        ["threshold", "FPR", "FNR", "expected cost per 1,000 predictions", "share flagged"],
        [
            [
                (f"**{r['threshold']:.4f} (chosen)**" if r["chosen"] else f"{r['threshold']:.2f}"),
                _pct(r["fpr"]),
                _pct(r["fnr"]),
                f"{r['cost_per_1000']:.1f}",
                _pct(r["flagged"]),
            ]
            for r in rows
        ],
    )
    lines += ["![Cost, FPR and FNR against the threshold](cost_curve.png)", ""]
    sel = hold.get("selection")
    if sel:
        sy = np.asarray(sel["y_pos"], dtype=bool)
        ss = np.asarray(sel["scores"], dtype=np.float64)
        lines += [
            "### If the business changes the costs",
            "",
            f"The threshold is re-chosen the same way (on the {sel.get('source', '')} scores, "
            "with the same targets) under other costs. Where a target binds, cost changes "
            "that would loosen it move nothing: the target wins.",
            "",
        ]
        scen_rows = []
        for label, ffp, ffn in COST_SCENARIOS:
            c2fp, c2fn = cfp * ffp, cfn * ffn
            ch = choose_threshold(
                sy, ss, c2fp, c2fn, obj.get("max_fnr"), obj.get("max_fpr"), sel.get("source", "")
            )
            scen_rows.append(
                [
                    f"{label} (FP {c2fp:g}, FN {c2fn:g})",
                    f"{ch.threshold:.4f}",
                    _pct(ch.expected_fpr),
                    _pct(ch.expected_fnr),
                    f"{1000 * ch.expected_cost:.1f}",
                ]
            )
        if obj.get("max_fnr") is not None or obj.get("max_fpr") is not None:
            ch = choose_threshold(sy, ss, cfp, cfn, None, None, sel.get("source", ""))
            scen_rows.append(
                [
                    f"targets dropped, costs unchanged (FP {cfp:g}, FN {cfn:g})",
                    f"{ch.threshold:.4f}",
                    _pct(ch.expected_fpr),
                    _pct(ch.expected_fnr),
                    f"{1000 * ch.expected_cost:.1f}",
                ]
            )
        lines += _table(
            ["scenario", "threshold", "FPR", "FNR", "expected cost per 1,000"], scen_rows
        )
    chosen = next(r for r in rows if r["chosen"])
    summary = [
        f"On {ev['n']} held-out cases it let through {_pct(ev['fnr'])} of {pos_name} cases "
        f"(FNR) and wrongly flagged {_pct(ev['fpr'])} of the others (FPR), flagging "
        f"{_pct(chosen['flagged'])} of all cases; expected cost "
        f"{chosen['cost_per_1000']:.1f} per 1,000 predictions at today's costs.",
    ]
    return lines, summary


def _failures(hold: dict[str, Any], manifest: dict[str, Any]) -> list[str]:
    classes = hold["classes"]
    proba = np.asarray(hold["proba"])
    pos = hold.get("positive")
    wrong = hold.get("wrong", [])
    names = hold.get("feature_names") or []
    mean = np.asarray(hold["train_stats"]["mean"])
    scale = np.asarray(hold["train_stats"]["scale"])
    n_wrong = int(sum(1 for y, p in zip(hold["y"], hold["pred"], strict=True) if y != p))
    lines = [
        "## How the model fails",
        "",
        f"It got **{n_wrong} of {len(hold['y'])}** held-out cases wrong. The most confident "
        f"mistakes (up to {MAX_FAILURES}), with the features that stand out most: how many "
        "standard deviations (z) each sits from the training rows' average.",
        "",
    ]
    if wrong:
        score_head = f"score ({classes[pos]})" if pos is not None else "p(predicted) / p(actual)"
        rows = []
        for w in wrong[:MAX_FAILURES]:
            i = w["position"]
            y, p = hold["y"][i], hold["pred"][i]
            if pos is not None:
                score = f"{proba[i, pos]:.4f}"
            else:
                score = f"{proba[i, p]:.4f} / {proba[i, y]:.4f}"
            z = (np.asarray(w["x"]) - mean) / scale
            top = np.argsort(-np.abs(z), kind="stable")[:STANDOUT_FEATURES]
            stand = ", ".join(
                f"{names[j] if j < len(names) else f'x{j}'} (z {z[j]:+.1f})" for j in top
            )
            rows.append([w["row"], classes[y], classes[p], score, stand])
        lines += _table(["data row", "actual", "predicted", score_head, "stand-out features"], rows)
    fit = manifest["evaluation"].get("fit") or {}
    lines += [
        "### Fit diagnosis",
        "",
        f"From the loss curves: **{str(fit.get('diagnosis', '–')).replace('_', ' ')}**"
        f" ({fit.get('message', '')}).",
        "",
        "![Training and validation loss per epoch](loss_curve.png)",
        "",
    ]
    return lines


def _monitoring(manifest: dict[str, Any]) -> list[str]:
    name = manifest["name"]
    obj = manifest["objectives"]
    binary = manifest.get("task") == "binary"
    lines = [
        "## What to monitor after launch",
        "",
        "The service exports Prometheus metrics; the rules and alerts shipped in "
        "`deploy/prometheus/` (see `docs/monitoring.md`) watch this model against the targets "
        "above once true labels come back through `POST /feedback`.",
        "",
    ]
    rows: list[list[Any]] = []
    if binary:
        rows += [
            [
                "outcomes once labels arrive",
                f'`verdict_outcomes_total{{model="{name}",outcome=~"tp|fp|tn|fn"}}`',
                "the raw counts every rate below comes from",
            ],
            [
                "miss rate (FNR), last hour",
                f'`model:verdict_fnr:ratio_rate1h{{model="{name}"}}`',
                (
                    f"alert `VerdictFNRAboveTarget` when above {_pct(obj['max_fnr'])}; "
                    "`VerdictRecallBudgetFastBurn` / `SlowBurn` on its error budget"
                    if obj.get("max_fnr") is not None
                    else "no FNR target for this model, so `VerdictFNRAboveTarget` stays quiet"
                ),
            ],
            [
                "false alarm rate (FPR), last hour",
                f'`model:verdict_fpr:ratio_rate1h{{model="{name}"}}`',
                (
                    f"alert `VerdictFPRAboveTarget` when above {_pct(obj['max_fpr'])}"
                    if obj.get("max_fpr") is not None
                    else "no FPR target for this model, so `VerdictFPRAboveTarget` stays quiet"
                ),
            ],
            [
                "business cost of errors",
                f'`model:verdict_error_cost:avg_rate1h{{model="{name}"}}`',
                "cost per prediction with the manifest's costs",
            ],
            [
                "score distribution",
                f'`verdict_prediction_score{{model="{name}"}}`',
                "a shift means the flagged share will move",
            ],
        ]
    else:
        rows.append(
            [
                "confusion once labels arrive",
                f'`verdict_labeled_predictions_total{{model="{name}"}}`',
                "predicted against actual label",
            ]
        )
    rows += [
        [
            "targets as series",
            f'`verdict_objective_ratio{{model="{name}"}}`, '
            f'`verdict_outcome_cost{{model="{name}"}}`',
            "the manifest's targets and costs, so rules follow the model",
        ],
        [
            "labels coming back",
            f'`verdict_feedback_items_total{{model="{name}"}}`, '
            f'`verdict_label_delay_seconds{{model="{name}"}}`',
            "no labels means the rates above are blind",
        ],
        [
            "input drift",
            f'`verdict_feature_bin_total{{model="{name}"}}` against `verdict_reference_bin_ratio`',
            "alert `VerdictFeatureDrift`",
        ],
        [
            "speed and errors",
            "`verdict_inference_duration_seconds`, `verdict_http_request_duration_seconds`",
            "alerts `VerdictLatencyHigh`, `VerdictHTTPErrorsHigh`",
        ],
    ]
    return lines + _table(["what", "metric or rule", "alert / why"], rows)


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
        op_lines, summary = _operating_point(manifest, hold, name)
    else:
        summary = [
            f"On {ho['n']} held-out cases it picked the right class {_pct(ho['accuracy'])} "
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
        f"- **Classes** (in the model's output order): {', '.join(classes)}.",
        "- **Held-out cases per class**: " + ", ".join(f"{c} {n}" for c, n in counts.items()) + ".",
        "",
        "## How it was trained",
        "",
        *_plain_training(cfg, manifest),
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
        lines += _table(["metric", "mean ± std"], metric_rows)
    else:
        lines += ["Cross-validation was off for this run; only the held-out check below.", ""]
    correct = int(np.trace(cm))
    held = [
        [
            "accuracy" + (" at the threshold" if binary else ""),
            _f4(ho["accuracy"]),
            _interval(correct, int(cm.sum())),
        ],
        ["macro F1", _f4(ho.get("macro_f1")), ""],
    ]
    if ho.get("roc_auc") is not None:
        held.append(["ROC AUC", _f4(ho["roc_auc"]), ""])
    if binary:
        pos_i = classes.index(manifest["output"]["positive_class"])
        neg = 1 - pos_i
        fp, tn = int(cm[neg, pos_i]), int(cm[neg, neg])
        fn, tp = int(cm[pos_i, neg]), int(cm[pos_i, pos_i])
        held += [
            ["FPR at the threshold", _f4(ho["fpr"]), _interval(fp, fp + tn)],
            ["FNR at the threshold", _f4(ho["fnr"]), _interval(fn, fn + tp)],
        ]
    lines += [
        f"**Held-out check** ({ho['n']} cases never used in training; the interval is where "
        "the true rate lies with 95% confidence, given how few cases there are):",
        "",
    ]
    lines += _table(["metric", "value", "95% interval"], held)
    lines += ["**Confusion matrix** (held-out; rows: actual, columns: predicted):", ""]
    lines += _table(
        ["actual \\ predicted", *classes],
        [[c, *[int(v) for v in cm[i]]] for i, c in enumerate(classes)],
    )
    lines += [f"![Held-out confusion matrix]({CONFUSION_PNG})", ""]
    lines += [
        "**Per class** (precision: of the cases it called this class, the share that were; "
        "recall: of the cases that were this class, the share it found):",
        "",
    ]
    lines += _table(
        ["class", "actual", "predicted", "precision", "recall"], _per_class(cm, classes)
    )
    lines += op_lines
    lines += _failures(hold, manifest)
    lines += _monitoring(manifest)
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
