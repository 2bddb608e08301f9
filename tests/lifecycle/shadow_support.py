"""Two versions of a binary model for the shadow tests: the primary decides on feature
`alpha`, the challenger on `beta`; on the shifted traffic made here the truth follows `beta`,
so the challenger is measurably cheaper."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.conftest import (
    BIN_CLASSES,
    BIN_FEATURES,
    add_reference_sample,
    make_manifest,
    write_version,
)

MODEL = "risk"
ADMIN_KEY = "admin-s3cret"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def linear_graph(w: np.ndarray, b: np.ndarray) -> bytes:
    """softmax(x @ w + b) on [batch, 3] float32 inputs, as ONNX bytes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("MatMul", ["input", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_on_feature(root: Path, version: int, feature: int, name: str = MODEL) -> Path:
    """A version whose spam score is sigmoid(4 * x[feature]) (threshold 0.5)."""
    w = np.zeros((3, 2), dtype=np.float32)
    w[feature, 1] = 4.0
    b = np.zeros(2, dtype=np.float32)
    graph = linear_graph(w, b)
    manifest = make_manifest(
        name,
        version,
        graph,
        task="binary",
        in_dims=(3,),
        classes=BIN_CLASSES,
        feature_names=BIN_FEATURES,
        threshold=0.5,
        positive_class="spam",
    )
    folder = write_version(root, name, version, graph, manifest)
    add_reference_sample(folder, w, b)
    return folder


def write_pair(root: Path, name: str = MODEL) -> Path:
    """v1 (primary, decides on alpha) and v2 (challenger, decides on beta)."""
    write_on_feature(root, 1, 0, name)
    write_on_feature(root, 2, 1, name)
    return root


def shifted_rows(n: int, seed: int = 0) -> tuple[list[list[float]], list[str]]:
    """Rows of the shifted traffic and their truth: spam exactly when beta > 0 (alpha is
    noise), with beta kept away from 0 so the challenger's decisions are clear-cut."""
    rng = np.random.default_rng(seed)
    alpha = rng.normal(size=n)
    beta = rng.choice([-1.0, 1.0], size=n) * rng.uniform(0.3, 2.0, size=n)
    gamma = rng.normal(size=n)
    rows = np.stack([alpha, beta, gamma], axis=1).round(4).tolist()
    return rows, ["spam" if v > 0 else "ham" for v in beta]
