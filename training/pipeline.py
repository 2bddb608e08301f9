"""One training run end to end: data, CV, final fit, threshold, export, artifact folder."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from . import artifact, card, export, report, sample
from .config import Config
from .data import Dataset, load_dataset, split_dataset
from .evaluate import CVResult, cross_validate, diagnose, holdout_report
from .fit import train_model
from .tb import open_log
from .threshold import ThresholdChoice, choose_threshold, cross_fitted_rates


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class RunResult:
    """Where the artifact went and its manifest."""

    path: Path
    version: int
    manifest: dict[str, Any]


def positive_index(cfg: Config, ds: Dataset) -> int | None:
    """Index of the positive class for binary tasks (None for multiclass)."""
    if len(ds.classes) != 2:
        if cfg.decision.positive_class is not None:
            raise ValueError(
                "decision.positive_class is only for binary tasks; "
                f"this dataset has {len(ds.classes)} classes"
            )
        return None
    pc = cfg.decision.positive_class
    if pc is None:
        return 1
    if pc not in ds.classes:
        raise ValueError(f"decision.positive_class {pc!r} is not one of the classes {ds.classes}")
    return ds.classes.index(pc)


def run_training(
    cfg: Config,
    out: Path,
    log: Callable[[str], None] = _log,
    dataset: Dataset | None = None,
    provenance: dict[str, Any] | None = None,
) -> RunResult:
    """Train, evaluate, export and write `out/<next version>/`; nothing is left on failure.

    `dataset` replaces the config's data (a challenger's: the training data plus labelled
    production examples, `training.production`); `provenance` then goes to the manifest's
    `training.production`."""
    t0 = time.monotonic()
    ds = dataset if dataset is not None else load_dataset(cfg.data, cfg.seed)
    pos = positive_index(cfg, ds)
    split = split_dataset(ds.y, cfg.data, cfg.seed)
    dev = np.sort(np.concatenate([split.train, split.val]))
    log(
        f"{cfg.name}: {ds.name}, {ds.rows} rows, {len(ds.classes)} classes {ds.classes}; "
        f"train {len(split.train)} / validation {len(split.val)} / held-out {len(split.test)}"
    )

    cv: CVResult | None = None
    if cfg.cv.folds >= 2:
        cv = cross_validate(cfg, ds, dev, pos, train_model, log)
        s = cv.summary
        log(
            f"cv: accuracy {s['accuracy_mean']:.4f} ± {s['accuracy_std']:.4f}, "
            f"macro_f1 {s['macro_f1_mean']:.4f} ± {s['macro_f1_std']:.4f}"
        )

    tb_log = open_log(cfg)
    on_epoch = tb_log.on_epoch if tb_log is not None else None
    model = train_model(
        cfg, ds, split.train, split.val, cfg.seed, label=cfg.name, on_epoch=on_epoch
    )
    if tb_log is not None:
        tb_log.finish(cfg, model, ds.x[split.train[:8]])
        log(f"tensorboard: {tb_log.path} (tensorboard --logdir {cfg.tensorboard.log_dir})")
    hist = model.history
    diag = diagnose(hist.epochs, hist.train_loss, hist.val_loss)
    log(f"fit: {diag.message}")

    choice: ThresholdChoice | None = None
    threshold_check: dict[str, Any] | None = None
    threshold: float | None = None
    selection: dict[str, Any] | None = None
    if pos is not None:
        d = cfg.decision
        use_oof = cv is not None and d.scores in ("auto", "oof")
        if d.scores == "oof" and cv is None:
            raise ValueError("decision.scores is 'oof' but cv.folds is 0")
        if use_oof and cv is not None:
            y_s, p_s, source = ds.y[dev], cv.oof_proba[:, pos], "out-of-fold"
        else:
            y_s, p_s, source = (
                ds.y[split.val],
                model.predict_proba(ds.x[split.val])[:, pos],
                ("validation"),
            )
        choice = choose_threshold(
            y_s == pos,
            p_s,
            d.cost_fp,
            d.cost_fn,
            d.max_fnr,
            d.max_fpr,
            source,
            meet_targets_on=d.meet_targets_on,
            level=d.confidence_level,
        )
        threshold = choice.threshold
        selection = {"source": source, "y_pos": (y_s == pos).tolist(), "scores": p_s.tolist()}
        if use_oof and cv is not None:
            threshold_check = cross_fitted_rates(
                y_s == pos,
                p_s,
                cv.fold_ids,
                d.cost_fp,
                d.cost_fn,
                d.max_fnr,
                d.max_fpr,
                meet_targets_on=d.meet_targets_on,
                level=d.confidence_level,
            )
            log(
                f"threshold procedure, cross-fitted over folds: FPR {threshold_check['fpr']:.4f} "
                f"FNR {threshold_check['fnr']:.4f}"
            )
        ev = choice.evidence
        log(
            f"threshold {threshold:.4f}: {choice.reason}; expected FPR {choice.expected_fpr:.4f} "
            f"(upper bound {ev['fpr']['upper']:.4f}), FNR {choice.expected_fnr:.4f} "
            f"(upper bound {ev['fnr']['upper']:.4f}); one-sided {choice.level:.0%} bounds"
        )
        for warning in choice.warnings:
            log(f"warning: {warning}")

    test_proba = model.predict_proba(ds.x[split.test])
    holdout = holdout_report(
        ds.y[split.test], test_proba, pos, threshold, cfg.decision.confidence_level
    )
    card_data = card.holdout_record(
        classes=ds.classes,
        feature_names=ds.feature_names,
        test_rows=split.test,
        y_test=ds.y[split.test],
        proba=test_proba,
        x_test=ds.x[split.test],
        x_train=ds.x[split.train],
        positive=pos,
        threshold=threshold,
        selection=selection,
    )
    log(
        f"held-out: accuracy {holdout['accuracy']:.4f}"
        + (f", FPR {holdout['fpr']:.4f}, FNR {holdout['fnr']:.4f}" if pos is not None else "")
    )

    proto = export.export_onnx(model, ds.x.shape[1], cfg.export.opset)
    shape = export.input_shape(model, ds.x.shape[1])
    export.check_graph(proto, shape, len(ds.classes))
    data = export.model_bytes(proto)
    rng = np.random.default_rng(cfg.seed)
    parity_rows = ds.x[rng.choice(ds.rows, size=max(cfg.export.parity_batch_sizes))]
    parity = export.check_parity(
        model, data, parity_rows, cfg.export.parity_batch_sizes, cfg.export.parity_atol
    )
    log(f"parity: max |Δp| {parity['max_abs_diff']:.2e} at batch sizes {parity['batch_sizes']}")
    atol = cfg.export.conformance_atol
    sample_x, kinds, sample_rows = sample.choose_rows(
        model,
        ds.x[split.train],
        ds.x[split.test],
        split.test,
        pos,
        threshold,
        atol,
        cfg.export.sample_rows,
        cfg.seed,
    )
    sample_record, conformance = sample.build_sample(
        model, data, sample_x, kinds, sample_rows, pos, threshold, atol
    )
    sample_bytes = sample.dumps(sample_record)
    log(
        f"reference sample: {conformance['rows']} rows, onnxruntime CPU within "
        f"{conformance['measured']['max_abs_diff']:.2e} of torch (tolerance {atol:g})"
    )

    bins = cfg.export.reference_bins
    x_test = ds.x[split.test]
    features = (
        {}
        if model.image_shape is not None
        else {f: export.reference_bins(x_test[:, j], bins) for j, f in enumerate(ds.feature_names)}
    )
    score_ref = export.reference_bins(test_proba[:, pos], bins) if pos is not None else None
    # Multiclass models drift on what they predict and how sure they are (docs/monitoring.md).
    class_ref = export.reference_classes(test_proba) if pos is None else None
    confidence_ref = export.reference_confidence(test_proba) if pos is None else None
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    binary = pos is not None
    d = cfg.decision
    decision: dict[str, Any]
    if choice is not None:
        decision = {
            "threshold": choice.threshold,
            "method": choice.method,
            "reason": choice.reason,
            **choice.rates(),
        }
    else:
        decision = {"threshold": None, "method": "argmax", "reason": "multiclass: highest prob"}
    cv_dict = cv.to_dict() if cv is not None else None
    history = {**hist.to_dict(), "diagnosis": diag.to_dict()}

    def manifest_for(version: int) -> dict[str, Any]:
        return {
            "schema_version": export.SCHEMA_VERSION,
            "name": cfg.name,
            "version": version,
            "created_at": datetime.now(UTC).replace(microsecond=0).isoformat(),
            "task": "binary" if binary else "multiclass",
            "model_file": artifact.MODEL_FILE,
            "sha256": artifact.sha256_hex(data),
            "files": {
                artifact.MODEL_FILE: artifact.sha256_hex(data),
                artifact.SAMPLE_FILE: artifact.sha256_hex(sample_bytes),
            },
            "opset": opset,
            "frameworks": export.frameworks(),
            "input": {
                "name": export.INPUT_NAME,
                "shape": shape,
                "dtype": "float32",
                "kind": "image" if model.image_shape is not None else "tabular",
                "feature_names": None if model.image_shape is not None else ds.feature_names,
            },
            "output": {
                "name": export.OUTPUT_NAME,
                "shape": [-1, len(ds.classes)],
                "dtype": "float32",
                "classes": ds.classes,
                "positive_class": ds.classes[pos] if pos is not None else None,
            },
            "decision": decision,
            "objectives": {
                "max_fnr": d.max_fnr if binary else None,
                "max_fpr": d.max_fpr if binary else None,
            },
            "costs": {
                "cost_fp": d.cost_fp if binary else None,
                "cost_fn": d.cost_fn if binary else None,
            },
            "evaluation": {
                "cv": cv.summary if cv is not None else None,
                "holdout": holdout,
                "fit": diag.to_dict(),
                "threshold_cross_fitted": threshold_check,
                "threshold_evidence": choice.evidence_record() if choice is not None else None,
            },
            "parity": parity,
            "conformance": conformance,
            "reference": {
                "bins": bins,
                "features": features,
                "score": score_ref,
                "classes": class_ref,
                "confidence": confidence_ref,
            },
            "training": {
                "config": cfg.model_dump(mode="json"),
                "dataset": {"name": ds.name, "sha256": ds.sha256, "rows": ds.rows},
                "seed": cfg.seed,
                "split": {
                    "train": len(split.train),
                    "validation": len(split.val),
                    "test": len(split.test),
                },
                "duration_s": round(time.monotonic() - t0, 1),
                **({"production": provenance} if provenance is not None else {}),
            },
        }

    manifest: dict[str, Any] = {}

    def fill(tmp: Path, version: int) -> None:
        (tmp / artifact.MODEL_FILE).write_bytes(data)
        (tmp / artifact.SAMPLE_FILE).write_bytes(sample_bytes)
        manifest.clear()
        manifest.update(manifest_for(version))
        artifact.write_json(tmp / artifact.MANIFEST_FILE, manifest)
        artifact.write_json(tmp / "history.json", history)
        report.plot_loss_curve(hist, diag, tmp / "loss_curve.png", cfg.name)
        if cv_dict is not None:
            artifact.write_json(tmp / "cv_report.json", cv_dict)
            (tmp / "cv_report.md").write_text(report.cv_markdown(cfg.name, cv_dict))
        if choice is not None and pos is not None:
            artifact.write_json(tmp / "threshold.json", {**decision, "curve": choice.curve})
            report.plot_cost_curve(
                choice, tmp / "cost_curve.png", cfg.name, ds.classes, pos, d.max_fnr, d.max_fpr
            )
        artifact.write_json(tmp / card.HOLDOUT_FILE, card_data)
        card.write_card(tmp)

    path, version = artifact.write_version(out, fill)
    log(f"wrote {path} in {time.monotonic() - t0:.1f}s")
    return RunResult(path, version, manifest)
