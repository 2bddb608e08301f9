"""The reference sample: which rows, what it expects, its checksum and its refusal."""

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from training import artifact, export, sample
from training.config import load_config
from training.data import load_dataset, split_dataset
from training.pipeline import run_training

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
QUIET = ["train.progress=none", "decision.cost_fn=1", "decision.max_fnr=null"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    # Even costs and no target put the threshold among the scores, with rows on either side.
    cfg = load_config(CONFIGS / "tiny-binary.yaml", [*QUIET, "train.epochs=30"])
    result = run_training(cfg, tmp_path_factory.mktemp("models") / cfg.name, log=lambda m: None)
    return result.path, result.manifest


def _sample(folder: Path) -> dict[str, Any]:
    return json.loads((folder / artifact.SAMPLE_FILE).read_text())


def test_sample_holds_the_extremes_and_the_rows_nearest_the_threshold(
    trained: tuple[Path, dict[str, Any]],
) -> None:
    folder, m = trained
    s = _sample(folder)
    conf = m["conformance"]
    assert conf == {
        "sample_file": "reference_sample.json",
        "rows": 32,
        "atol": 5e-3,
        "expected_from": "torch",
        "measured": conf["measured"],
    }
    assert conf["measured"]["provider"] == "CPUExecutionProvider"
    assert conf["measured"]["max_abs_diff"] <= 1e-5 and conf["measured"]["labels_equal"]
    assert len(s["inputs"]) == len(s["kinds"]) == len(s["labels"]) == 32
    assert s["threshold"] == m["decision"]["threshold"] and s["positive_index"] == 1

    cfg = load_config(CONFIGS / "tiny-binary.yaml")
    ds = load_dataset(cfg.data, cfg.seed)
    split = split_dataset(ds.y, cfg.data, cfg.seed)
    x = np.asarray(s["inputs"], dtype=np.float32)
    train = ds.x[split.train]
    assert s["kinds"][:3] == [
        "every feature at its training minimum",
        "every feature at its training maximum",
        "every feature at its training mean",
    ]
    assert (x[0] == train.min(axis=0)).all() and (x[1] == train.max(axis=0)).all()
    # Real rows are the data set's rows, exactly.
    for i, row in enumerate(s["data_rows"]):
        if row is not None:
            assert (x[i] == ds.x[row]).all()
            assert row in split.test.tolist()

    # The rows just below / above the threshold are the held-out rows nearest it on each
    # side, among those clear of twice the tolerance.
    hold = json.loads((folder / "holdout.json").read_text())
    score = np.asarray(hold["proba"])[:, 1]
    t, atol = m["decision"]["threshold"], conf["atol"]
    margin = np.abs(score - t)
    for kind, side in (("below", score < t), ("above", score >= t)):
        ok = np.flatnonzero(side & (margin > 2 * atol))
        assert len(ok) >= 4, kind  # the fixture's premise: rows on both sides
        nearest = [hold["rows"][i] for i in ok[np.argsort(margin[ok])][:4]]
        got = [r for k, r in zip(s["kinds"], s["data_rows"], strict=True) if kind in k]
        assert got == nearest, kind
    p = np.asarray(s["probabilities"])[:, 1]
    near = [i for i, k in enumerate(s["kinds"]) if "threshold" in k]
    assert len(near) == 8 and all(s["label_stable"][i] for i in near)
    assert all(abs(p[i] - t) > atol for i in near)
    assert s["labels"] == [int(v >= t) for v in p]
    assert any("lowest score" in k for k in s["kinds"])
    assert any("highest score" in k for k in s["kinds"])


def test_the_manifest_checksums_cover_the_sample(trained: tuple[Path, dict[str, Any]]) -> None:
    folder, m = trained
    assert artifact.check_version(folder, m, m["name"], 1) == []
    assert m["files"][artifact.SAMPLE_FILE] == artifact.file_sha256(folder / artifact.SAMPLE_FILE)
    doctored = dict(m, files={**m["files"], artifact.SAMPLE_FILE: "0" * 64})
    assert artifact.check_version(folder, doctored, m["name"], 1) == [
        "reference_sample.json does not match its sha256 in the manifest (changed?)"
    ]
    failed = dict(m, parity={**m["parity"], "passed": False})
    assert artifact.check_version(folder, failed, m["name"], 2) == [
        "manifest version 1 is not the folder 2",
        "the manifest records a failed parity gate",
    ]


def test_a_graph_that_misses_the_tolerance_is_refused(trained: tuple[Path, dict[str, Any]]) -> None:
    from training.fit import train_model

    cfg = load_config(CONFIGS / "tiny-binary.yaml", QUIET)
    ds = load_dataset(cfg.data, cfg.seed)
    split = split_dataset(ds.y, cfg.data, cfg.seed)
    model = train_model(cfg, ds, split.train, split.val, cfg.seed)
    other = train_model(cfg, ds, split.train, split.val, cfg.seed + 1)
    wrong = export.model_bytes(export.export_onnx(other, ds.x.shape[1], 18))
    right = export.model_bytes(export.export_onnx(model, ds.x.shape[1], 18))
    x, kinds, rows = sample.choose_rows(
        model, ds.x[split.train], ds.x[split.test], split.test, 1, 0.5, 1e-3, 16, 0
    )
    record, conf = sample.build_sample(model, right, x, kinds, rows, 1, 0.5, 1e-3)
    assert conf["measured"]["max_abs_diff"] < 1e-5 and len(record["inputs"]) == 16
    with pytest.raises(export.ExportError, match="conformance: onnxruntime CPU differs"):
        sample.build_sample(model, wrong, x, kinds, rows, 1, 0.5, 1e-3)
