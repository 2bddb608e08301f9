"""Artifact checks shared by the training tests: a model folder against its manifest."""

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

TOP_KEYS = {
    "schema_version",
    "name",
    "version",
    "created_at",
    "task",
    "model_file",
    "sha256",
    "opset",
    "frameworks",
    "input",
    "output",
    "decision",
    "objectives",
    "costs",
    "evaluation",
    "parity",
    "reference",
    "training",
    "files",
    "conformance",
}


def _dims(vi: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]


def check_artifact(folder: Path) -> dict[str, Any]:
    """What the service relies on, checked against the files themselves."""
    m = json.loads((folder / "manifest.json").read_text())
    assert set(m) >= TOP_KEYS
    assert m["version"] == int(folder.name) and m["schema_version"] == 1
    data = (folder / m["model_file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == m["sha256"]
    proto = onnx.load_from_string(data)
    assert [i.name for i in proto.graph.input] == [m["input"]["name"]] == ["input"]
    assert [o.name for o in proto.graph.output] == [m["output"]["name"]] == ["probabilities"]
    assert _dims(proto.graph.input[0]) == m["input"]["shape"]
    assert _dims(proto.graph.output[0]) == m["output"]["shape"] == [-1, len(m["output"]["classes"])]
    assert m["input"]["dtype"] == m["output"]["dtype"] == "float32"
    assert m["opset"] == next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    assert "Dropout" not in {n.op_type for n in proto.graph.node}
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    assert set(m["objectives"]) == {"max_fnr", "max_fpr"}
    assert set(m["costs"]) == {"cost_fp", "cost_fn"}
    for key in ("python", "torch", "onnx", "onnxruntime"):
        assert m["frameworks"][key]
    assert len(m["training"]["dataset"]["sha256"]) == 64
    assert m["training"]["dataset"]["rows"] > 0
    assert m["training"]["config"]["name"] == m["name"]
    assert m["parity"]["batch_sizes"] == [1, 7, 256] and m["parity"]["labels_equal"]
    assert m["parity"]["max_abs_diff"] <= m["parity"]["atol"] and m["parity"]["passed"] is True
    # Every file the manifest lists has its checksum; the model and the sample are among them.
    assert m["files"]["model.onnx"] == m["sha256"]
    for name, digest in m["files"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
    conf = m["conformance"]
    assert conf["sample_file"] in m["files"] and conf["atol"] > 0
    sample = json.loads((folder / conf["sample_file"]).read_text())
    x = np.asarray(sample["inputs"], dtype=np.float32)
    want = np.asarray(sample["probabilities"], dtype=np.float32)
    assert list(x.shape) == sample["input"]["shape"] == [conf["rows"], *m["input"]["shape"][1:]]
    assert want.shape == (conf["rows"], len(m["output"]["classes"]))
    got = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert np.abs(got - want).max() <= conf["atol"]
    stable = np.asarray(sample["label_stable"])
    if m["task"] == "binary":
        pos = m["output"]["classes"].index(m["output"]["positive_class"])
        labels = np.where(got[:, pos] >= m["decision"]["threshold"], pos, 1 - pos)
    else:
        labels = got.argmax(axis=1)
    assert (labels[stable] == np.asarray(sample["labels"])[stable]).all()
    assert {"cv", "holdout", "fit"} <= set(m["evaluation"])
    assert m["evaluation"]["fit"]["diagnosis"] in ("good_fit", "over_fitting", "not_learning")
    ref = m["reference"]
    bins = ref["bins"]

    def check_bins(r: dict[str, list[float]]) -> None:
        assert len(r["edges"]) == bins - 1 and len(r["proportions"]) == bins
        assert all(a < b for a, b in zip(r["edges"], r["edges"][1:], strict=False))
        assert abs(sum(r["proportions"]) - 1) < 1e-9

    if m["input"]["kind"] == "tabular":
        assert m["input"]["feature_names"] == list(ref["features"])
        assert len(m["input"]["feature_names"]) == m["input"]["shape"][1]
    else:
        assert m["input"]["feature_names"] is None and ref["features"] == {}
    for r in ref["features"].values():
        check_bins(r)
    if m["task"] == "binary":
        assert len(m["output"]["classes"]) == 2
        assert m["output"]["positive_class"] in m["output"]["classes"]
        assert 0.0 <= m["decision"]["threshold"] <= 1.0
        check_bins(ref["score"])
        assert (folder / "cost_curve.png").stat().st_size > 1000
        assert ref["classes"] is None and ref["confidence"] is None
    else:
        assert m["output"]["positive_class"] is None and m["decision"]["threshold"] is None
        assert ref["score"] is None
        shares = ref["classes"]["proportions"]
        assert len(shares) == len(m["output"]["classes"]) and abs(sum(shares) - 1) < 1e-9
        conf = ref["confidence"]
        assert len(conf["proportions"]) == len(conf["edges"]) + 1
        assert all(a < b for a, b in zip(conf["edges"], conf["edges"][1:], strict=False))
        assert abs(sum(conf["proportions"]) - 1) < 1e-9
    assert (folder / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    hist = json.loads((folder / "history.json").read_text())
    assert hist["best_epoch"] == m["evaluation"]["fit"]["best_epoch"]
    # The graph runs at a batch size of its own choosing.
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = np.zeros([5, *m["input"]["shape"][1:]], dtype=np.float32)
    p = sess.run(None, {"input": x})[0]
    assert p.shape == (5, len(m["output"]["classes"]))
    assert np.allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert not list(folder.parent.glob(".tmp-*"))
    return m
