"""The CLI end to end on tiny configs: artifact folder, manifest fields, versions, CSV input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from artifact_checks import check_artifact

from training.__main__ import main
from training.bounds import upper_bound

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"


def test_cli_binary_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "models" / "tiny"
    assert main(["train", str(CONFIGS / "tiny-binary.yaml"), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "epoch 6/6" in captured.err or "epoch" in captured.err
    m = check_artifact(out / "1")
    assert m["task"] == "binary"
    assert m["output"]["classes"] == ["benign", "malignant"]
    assert m["output"]["positive_class"] == "malignant"
    assert m["costs"] == {"cost_fp": 1.0, "cost_fn": 20.0}
    assert m["objectives"] == {"max_fnr": 0.1, "max_fpr": None}
    assert m["decision"]["method"] in ("min_cost_subject_to_constraints", "closest_to_constraints")
    assert "expected_fnr" in m["decision"] and "expected_fpr" in m["decision"]
    # Both the estimate and its one-sided 95% upper bound, from the same counts.
    dec, ev = m["decision"], m["evaluation"]["threshold_evidence"]
    assert dec["meet_targets_on"] == "estimate"
    assert dec["confidence"] == {"level": 0.95, "method": "clopper-pearson", "side": "upper"}
    assert ev["source"] == "out-of-fold" and ev["level"] == 0.95
    fnr = ev["fnr"]
    assert fnr["estimate"] == dec["expected_fnr"] == fnr["errors"] / fnr["labelled"]
    assert fnr["upper"] == dec["expected_fnr_upper"] == upper_bound(fnr["errors"], fnr["labelled"])
    assert ev["fpr"]["upper"] == dec["expected_fpr_upper"]
    assert fnr["target"] == 0.1 and fnr["min_labelled"] == 29
    assert dec["constraints_met_with_confidence"] == fnr["met_with_confidence"]
    assert isinstance(dec["warnings"], list)
    hold = m["evaluation"]["holdout"]
    (tn, fp), (fn, tp) = hold["confusion_matrix"]
    assert hold["fnr_upper"] == upper_bound(fn, fn + tp)
    assert hold["fpr_upper"] == upper_bound(fp, fp + tn)
    assert m["evaluation"]["cv"]["folds"] == 2 and m["evaluation"]["cv"]["roc_auc_mean"] > 0.5
    assert len(m["evaluation"]["holdout"]["confusion_matrix"]) == 2
    assert m["reference"]["bins"] == 5
    cv = json.loads((out / "1" / "cv_report.json").read_text())
    assert len(cv["folds"]) == 2 and "accuracy_std" in cv["summary"]
    assert "mean ± std" in (out / "1" / "cv_report.md").read_text()
    # A second run is the next version; the first is untouched.
    assert (
        main(
            [
                "train",
                str(CONFIGS / "tiny-binary.yaml"),
                "--out",
                str(out),
                "--set",
                "train.epochs=2",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == ["1", "2"]
    assert check_artifact(out / "2")["training"]["config"]["train"]["epochs"] == 2


def test_module_entry_point_with_toml_cnn(tmp_path: Path) -> None:
    out = tmp_path / "digits"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "train",
            str(CONFIGS / "tiny-digits.toml"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out / "1")
    m = check_artifact(out / "1")
    assert m["task"] == "multiclass"
    assert m["input"]["shape"] == [-1, 1, 8, 8] and m["input"]["kind"] == "image"
    assert m["output"]["classes"] == [str(i) for i in range(10)]
    assert m["evaluation"]["cv"] is None


def test_csv_dataset(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 120
    x = rng.normal(size=(n, 3))
    label = np.where(x[:, 0] + x[:, 1] > 0, "yes", "no")
    csv = tmp_path / "rows.csv"
    lines = ["alpha,beta,outcome,gamma"] + [
        f"{a:.5f},{b:.5f},{lab},{c:.5f}" for (a, b, c), lab in zip(x, label, strict=True)
    ]
    csv.write_text("\n".join(lines) + "\n")
    cfg = tmp_path / "csv.yaml"
    cfg.write_text(
        f"name: csv-model\ndata: {{source: csv, path: {csv}, label_column: outcome}}\n"
        "model: {hidden: [8]}\n"
        "train: {epochs: 30, lr: 0.05, progress: none}\ncv: {folds: 2}\n"
        "decision: {positive_class: 'yes', cost_fp: 1, cost_fn: 2}\n"
    )
    out = tmp_path / "m"
    assert main(["train", str(cfg), "--out", str(out)]) == 0
    m = check_artifact(out / "1")
    assert m["input"]["feature_names"] == ["alpha", "beta", "gamma"]
    assert m["output"]["classes"] == ["no", "yes"] and m["output"]["positive_class"] == "yes"
    assert m["evaluation"]["holdout"]["accuracy"] > 0.8


def test_bad_data_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "rows.csv"
    csv.write_text("a,b,label\n1,2,x\n3,oops,y\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"name: bad\ndata: {{source: csv, path: {csv}}}\n")
    assert main(["train", str(cfg), "--out", str(tmp_path / "m")]) == 1
    assert "line 3" in capsys.readouterr().err
    cfg.write_text(f"name: bad\ndata: {{source: csv, path: {csv}, label_column: nope}}\n")
    assert main(["train", str(cfg), "--out", str(tmp_path / "m")]) == 1
    assert "no label column 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def _without(modules: list[str], tmp_path: Path) -> dict[str, str]:
    """An environment whose Python finds these modules missing: stand-ins that shadow them
    on PYTHONPATH (ahead of site-packages) and fail the way a missing module does."""
    shadow = tmp_path / "shadow"
    shadow.mkdir(exist_ok=True)
    for name in modules:
        (shadow / f"{name}.py").write_text(
            f"raise ModuleNotFoundError(\"No module named '{name}'\", name={name!r})\n"
        )
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow), str(ROOT)])}


@pytest.mark.parametrize(
    ("missing", "argv"),
    [
        (["sklearn"], ["train", "configs/tiny-binary.yaml", "--out", "OUT"]),
        (["torch"], ["train", "configs/tiny-binary.yaml", "--out", "OUT"]),
        (["yaml"], ["card", "models/breast-cancer/1"]),
        (["sklearn", "torch"], ["add", "models/breast-cancer/1", "OUT/breast-cancer"]),
    ],
    ids=["sklearn", "torch", "yaml", "add"],
)
def test_missing_training_extra_says_what_to_install(
    missing: list[str], argv: list[str], tmp_path: Path
) -> None:
    argv = [a.replace("OUT", str(tmp_path / "out")) for a in argv]
    proc = subprocess.run(
        [sys.executable, "-m", "training", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=_without(missing, tmp_path),
        timeout=120,
        check=False,
    )
    python = sys.executable
    if python.startswith(str(ROOT) + os.sep):
        python = os.path.relpath(python, ROOT)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (
        "error: verdict-train needs the training extra, which is not installed (no module "
        f"'{missing[0]}'); install it with: {python} -m pip install -e '.[train]'\n"
    )
    assert proc.stdout == "" and not (tmp_path / "out").exists()


def test_help_needs_no_training_extra(tmp_path: Path) -> None:
    env = _without(["sklearn", "torch", "yaml", "onnx", "matplotlib"], tmp_path)
    for argv in (["--help"], ["add", "--help"]):
        proc = subprocess.run(
            [sys.executable, "-m", "training", *argv],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=env,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        assert "usage: verdict-train" in proc.stdout
