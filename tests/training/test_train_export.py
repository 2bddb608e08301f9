"""ONNX export: parity with torch, dynamic batch, a clean self-contained graph, the refusal."""

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from training import artifact, export
from training.config import validate_config
from training.data import load_dataset, split_dataset
from training.fit import train_model
from training.pipeline import run_training


def _model(cfg_raw: dict[str, Any]) -> tuple[Any, Any]:
    cfg = validate_config(cfg_raw)
    ds = load_dataset(cfg.data, cfg.seed)
    split = split_dataset(ds.y, cfg.data, cfg.seed)
    return train_model(cfg, ds, split.train, split.val, seed=0), ds


MLP = {
    "name": "mlp",
    "data": {"name": "wine"},
    "model": {"hidden": [16, 8], "dropout": 0.3, "norm": "batch"},
    "train": {"epochs": 3, "progress": "none"},
}
CNN = {
    "name": "cnn",
    "data": {"name": "digits", "max_rows": 150},
    "model": {"type": "cnn", "channels": [4, 8], "dropout": 0.2, "head_hidden": 8},
    "train": {"epochs": 2, "progress": "none"},
}


@pytest.mark.parametrize("raw", [MLP, CNN], ids=["mlp", "cnn"])
def test_export_parity_and_dynamic_batch(raw: dict[str, Any]) -> None:
    model, ds = _model(raw)
    shape = export.input_shape(model, ds.x.shape[1])
    proto = export.export_onnx(model, ds.x.shape[1], 18)
    export.check_graph(proto, shape, len(ds.classes))
    ops = {n.op_type for n in proto.graph.node}
    assert "Dropout" not in ops and "Softmax" in ops
    assert all(len(n.metadata_props) == 0 for n in proto.graph.node)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    data = export.model_bytes(proto)
    assert b"stack_trace" not in data and b".py" not in data
    parity = export.check_parity(model, data, ds.x[:256], [1, 7, 256], 1e-4)
    assert parity["labels_equal"] and parity["max_abs_diff"] <= 1e-4
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    wrapper = export.wrap(model)
    for b in (1, 3, 50):  # batch sizes the exporter never saw
        x = ds.x[:b].reshape(b, *shape[1:])
        got = sess.run(["probabilities"], {"input": x})[0]
        with torch.no_grad():
            want = wrapper(torch.from_numpy(x)).numpy()
        assert got.shape == (b, len(ds.classes))
        np.testing.assert_allclose(got, want, atol=1e-5)
        np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)


def test_scaling_is_baked_in_with_zero_variance_guarded() -> None:
    # digits has pixels that are always 0: their std is 0 and must not divide.
    raw = {**CNN, "data": {"name": "digits", "max_rows": 150, "scaling": "feature"}}
    model, ds = _model(raw)
    assert (model.scaler.scale == 1.0).any()
    data = export.model_bytes(export.export_onnx(model, ds.x.shape[1], 18))
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": ds.x[:10].reshape(10, 1, 8, 8)})[0]
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, model.predict_proba(ds.x[:10]), atol=1e-5)


def test_parity_gate_refuses_a_different_graph() -> None:
    model, ds = _model(MLP)
    proto = export.export_onnx(model, ds.x.shape[1], 18)
    # Perturb one weight: the graph no longer computes what torch computes.
    init = max(proto.graph.initializer, key=lambda t: len(onnx.numpy_helper.to_array(t).ravel()))
    arr = onnx.numpy_helper.to_array(init).copy()
    arr.ravel()[0] += 5.0
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    with pytest.raises(export.ExportError, match="parity"):
        export.check_parity(model, export.model_bytes(proto), ds.x, [1, 7, 256], 1e-4)


def test_graph_check_refuses_dropout_and_bad_names() -> None:
    model, ds = _model(MLP)
    proto = export.export_onnx(model, ds.x.shape[1], 18)
    bad = onnx.ModelProto()
    bad.CopyFrom(proto)
    bad.graph.output[0].name = "output"
    for node in bad.graph.node:
        node.output[:] = ["output" if o == "probabilities" else o for o in node.output]
    with pytest.raises(export.ExportError, match="inputs/outputs"):
        export.check_graph(bad, [-1, 13], 3)
    bad.CopyFrom(proto)
    bad.graph.node.append(onnx.helper.make_node("Dropout", ["input"], ["dropped"]))
    with pytest.raises(export.ExportError, match="Dropout"):
        export.check_graph(bad, [-1, 13], 3)


def test_failed_export_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = validate_config({**MLP, "cv": {"folds": 0}})
    real = export.model_bytes

    def corrupted(proto: onnx.ModelProto) -> bytes:
        p = onnx.ModelProto()
        p.CopyFrom(proto)
        for init in p.graph.initializer:
            arr = onnx.numpy_helper.to_array(init) * 0
            init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
        return real(p)

    monkeypatch.setattr(export, "model_bytes", corrupted)
    out = tmp_path / "models" / "wine"
    with pytest.raises(export.ExportError):
        run_training(cfg, out, log=lambda _: None)
    assert not out.exists() or list(out.iterdir()) == []


def test_atomic_write_cleans_up_when_filling_fails(tmp_path: Path) -> None:
    root = tmp_path / "m"
    (root / "1").mkdir(parents=True)

    def fill(tmp: Path, version: int) -> None:
        (tmp / "model.onnx").write_bytes(b"x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        artifact.write_version(root, fill)
    assert sorted(p.name for p in root.iterdir()) == ["1"]
    path, version = artifact.write_version(root, lambda t, v: (t / "a").write_text(str(v)))
    assert version == 2 and (path / "a").read_text() == "2"


def test_class_and_confidence_references_by_hand() -> None:
    proba = np.array(
        [
            [0.5, 0.3, 0.2],  # class 0, top 0.5 -> bin 0 ((.., 0.5])
            [0.1, 0.85, 0.05],  # class 1, 0.85 -> bin 2 ((0.8, 0.9])
            [0.00005, 0.99995, 0.0],  # class 1, 0.99995 -> bin 7 (above 0.9999)
            [0.0, 0.04, 0.96],  # class 2, 0.96 -> bin 4 ((0.95, 0.99])
        ]
    )
    assert export.reference_classes(proba) == {"proportions": [0.25, 0.5, 0.25]}
    conf = export.reference_confidence(proba)
    assert conf["edges"] == list(export.CONFIDENCE_EDGES)
    assert conf["proportions"] == [0.25, 0.0, 0.25, 0.0, 0.25, 0.0, 0.0, 0.25]
