"""The model card's descriptive sections: how it was trained, how it fails, what to watch."""

from __future__ import annotations

from typing import Any

import numpy as np

from .markdown import f4, pct, table

MAX_FAILURES = 10  # held-out errors listed in the card
STANDOUT_FEATURES = 3


def plain_model(cfg: dict[str, Any]) -> str:
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


def plain_training(cfg: dict[str, Any], manifest: dict[str, Any]) -> list[str]:
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
        f"- **Network**: {plain_model(cfg)}.",
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


def per_class(cm: np.ndarray, classes: list[str]) -> list[list[Any]]:
    rows = []
    for i, c in enumerate(classes):
        tp = int(cm[i, i])
        predicted = int(cm[:, i].sum())
        actual = int(cm[i, :].sum())
        precision = tp / predicted if predicted else None
        recall = tp / actual if actual else None
        rows.append([c, actual, predicted, f4(precision), f4(recall)])
    return rows


def failures(hold: dict[str, Any], manifest: dict[str, Any]) -> list[str]:
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
        lines += table(["data row", "actual", "predicted", score_head, "stand-out features"], rows)
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


def monitoring(manifest: dict[str, Any]) -> list[str]:
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
                    f"alert `VerdictFNRAboveTarget` when above {pct(obj['max_fnr'])}; "
                    "`VerdictRecallBudgetFastBurn` / `SlowBurn` on its error budget"
                    if obj.get("max_fnr") is not None
                    else "no FNR target for this model, so `VerdictFNRAboveTarget` stays quiet"
                ),
            ],
            [
                "false alarm rate (FPR), last hour",
                f'`model:verdict_fpr:ratio_rate1h{{model="{name}"}}`',
                (
                    f"alert `VerdictFPRAboveTarget` when above {pct(obj['max_fpr'])}"
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
    return lines + table(["what", "metric or rule", "alert / why"], rows)
