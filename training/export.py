"""ONNX export (dynamo), the parity gate, reference bins and the framework versions."""

from __future__ import annotations

import io
import logging
import platform
import warnings
from importlib import metadata
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from .fit import TrainedModel
from .nets import Exported

INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
SCHEMA_VERSION = 1
_QUIET_LOGGERS = ("torch.onnx", "torch.onnx._internal.exporter._registration")


class ExportError(RuntimeError):
    """The exported graph is not faithful to the torch model, or not self-contained."""


def wrap(model: TrainedModel) -> Exported:
    """The torch module that goes into ONNX: scaling, network, softmax; in eval mode."""
    return Exported(model.net, model.scaler.mean, model.scaler.scale, model.image_shape).eval()


def input_shape(model: TrainedModel, n_features: int) -> list[int]:
    """The ONNX input shape with -1 for the batch axis."""
    if model.image_shape is not None:
        return [-1, 1, *model.image_shape]
    return [-1, n_features]


def strip_metadata(proto: onnx.ModelProto) -> None:
    """Drop the exporter's per-node metadata (stack traces, FX node dumps, namespaces)."""

    def graph(g: onnx.GraphProto) -> None:
        for node in g.node:
            del node.metadata_props[:]
            node.doc_string = ""
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    graph(attr.g)
                for sub in attr.graphs:
                    graph(sub)
        for vi in [*g.input, *g.output, *g.value_info]:
            del vi.metadata_props[:]
            vi.doc_string = ""
        for init in g.initializer:
            del init.metadata_props[:]
        del g.metadata_props[:]
        g.doc_string = ""

    graph(proto.graph)
    for fn in proto.functions:
        for node in fn.node:
            del node.metadata_props[:]
        del fn.metadata_props[:]
    del proto.metadata_props[:]
    proto.doc_string = ""


def _has_stack_traces(proto: onnx.ModelProto) -> bool:
    return any(
        "stack_trace" in p.key or 'File "' in p.value
        for node in proto.graph.node
        for p in node.metadata_props
    )


def export_onnx(model: TrainedModel, n_features: int, opset: int) -> onnx.ModelProto:
    """Export with the dynamo exporter: dynamic batch axis, named input/output, one file."""
    module = wrap(model)
    shape = input_shape(model, n_features)
    example = torch.zeros([3, *shape[1:]], dtype=torch.float32)
    # The exporter logs about optional torchvision ops at WARNING; keep the terminal clean.
    quiet = [logging.getLogger(n) for n in _QUIET_LOGGERS]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                (example,),
                dynamo=True,
                dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                optimize=True,
                verbose=False,
            )
    finally:
        for q, lv in zip(quiet, levels, strict=True):
            q.setLevel(lv)
    if program is None:
        raise ExportError("the exporter returned no program")
    proto = program.model_proto
    # The service loads one file: weights must live in the graph, never as external data.
    for init in proto.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL or init.external_data:
            raise ExportError(f"initializer {init.name} uses external data")
    strip_metadata(proto)
    return proto


def check_graph(proto: onnx.ModelProto, shape: list[int], n_classes: int) -> None:
    """Structure the service relies on: names, dtypes, dynamic batch, no Dropout, one file."""
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the ONNX checker refuses the graph: {exc}") from exc
    g = proto.graph
    if [i.name for i in g.input] != [INPUT_NAME] or [o.name for o in g.output] != [OUTPUT_NAME]:
        raise ExportError(
            f"graph inputs/outputs are {[i.name for i in g.input]}/{[o.name for o in g.output]}"
        )
    for vi, want in ((g.input[0], shape), (g.output[0], [-1, n_classes])):
        tt = vi.type.tensor_type
        if tt.elem_type != onnx.TensorProto.FLOAT:
            raise ExportError(f"{vi.name} is not float32")
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        if dims != want or not tt.shape.dim[0].dim_param:
            raise ExportError(f"{vi.name} has shape {dims}, expected {want} with a named batch")
    ops = {n.op_type for n in g.node}
    if "Dropout" in ops:
        raise ExportError("the graph holds a Dropout node")
    if _has_stack_traces(proto):
        raise ExportError("the graph still holds stack traces")
    if any(i.data_location == onnx.TensorProto.EXTERNAL for i in g.initializer):
        raise ExportError("the graph uses external data")


def check_parity(
    model: TrainedModel,
    model_bytes: bytes,
    x: np.ndarray,
    batch_sizes: list[int],
    atol: float,
) -> dict[str, Any]:
    """Compare torch and onnxruntime on the same raw rows at each batch size.

    Raises ExportError when any probability differs by more than `atol` or any argmax label
    differs; otherwise returns the parity record for the manifest.
    """
    module = wrap(model)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    worst = 0.0
    labels_equal = True
    for b in batch_sizes:
        rows = x[np.arange(b) % len(x)].astype(np.float32)
        if model.image_shape is not None:
            rows = rows.reshape(b, 1, *model.image_shape)
        with torch.no_grad():
            want = module(torch.from_numpy(rows)).numpy()
        got = sess.run([OUTPUT_NAME], {INPUT_NAME: rows})[0]
        if got.shape != want.shape:
            raise ExportError(f"batch {b}: onnxruntime gave shape {got.shape}, torch {want.shape}")
        worst = max(worst, float(np.abs(got - want).max()))
        labels_equal = labels_equal and bool((got.argmax(1) == want.argmax(1)).all())
    if not worst <= atol:
        raise ExportError(f"parity: max |torch - onnxruntime| = {worst:.3g} > {atol:g}")
    if not labels_equal:
        raise ExportError("parity: onnxruntime and torch disagree on a label")
    return {
        "max_abs_diff": worst,
        "batch_sizes": list(batch_sizes),
        "labels_equal": True,
        "atol": atol,
        "passed": True,  # a failed gate raises above; the field lets a server check it
    }


def reference_bins(values: np.ndarray, bins: int) -> dict[str, list[float]]:
    """B-1 strictly increasing interior edges (quantiles) and B proportions summing to 1.

    Bin i is (edges[i-1], edges[i]]; the outer bins are open-ended. Tied quantiles are nudged
    apart by one ulp, which leaves empty bins rather than fewer of them.
    """
    v = np.asarray(values, dtype=np.float64)
    q = np.quantile(v, np.arange(1, bins) / bins)
    edges = np.empty_like(q)
    for i, e in enumerate(q):
        edges[i] = e if i == 0 or e > edges[i - 1] else np.nextafter(edges[i - 1], np.inf)
    idx = np.searchsorted(edges, v, side="left")
    counts = np.bincount(idx, minlength=bins).astype(np.float64)
    props = counts / counts.sum()
    return {"edges": [float(e) for e in edges], "proportions": [float(p) for p in props]}


# Fixed edges of the top-class probability for the confidence reference of multiclass models:
# readable bins ("more than 99.9% sure"), and, unlike quantiles of a distribution piled up
# near 1, edges that a difference of 1e-7 between torch and a server's provider cannot move
# rows across.
CONFIDENCE_EDGES = (0.5, 0.8, 0.9, 0.95, 0.99, 0.999, 0.9999)


def reference_classes(proba: np.ndarray) -> dict[str, list[float]]:
    """The share of each predicted class (the argmax) on held-out rows, in class order."""
    counts = np.bincount(np.asarray(proba).argmax(axis=1), minlength=proba.shape[1])
    return {"proportions": [float(c) for c in counts / counts.sum()]}


def reference_confidence(proba: np.ndarray) -> dict[str, list[float]]:
    """Bins of the top-class probability on held-out rows: the fixed CONFIDENCE_EDGES (bin i
    is (edges[i-1], edges[i]], as for the other reference bins) and their proportions."""
    top = np.asarray(proba, dtype=np.float64).max(axis=1)
    edges = np.asarray(CONFIDENCE_EDGES)
    counts = np.bincount(np.searchsorted(edges, top, side="left"), minlength=len(edges) + 1)
    return {
        "edges": [float(e) for e in edges],
        "proportions": [float(c) for c in counts / counts.sum()],
    }


def frameworks() -> dict[str, str]:
    """Versions of the tools that produced the artifact."""
    out = {"python": platform.python_version()}
    for pkg in ("torch", "onnx", "onnxscript", "onnxruntime", "scikit-learn", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def model_bytes(proto: onnx.ModelProto) -> bytes:
    """Serialise the graph as one self-contained file."""
    buf = io.BytesIO()
    onnx.save_model(proto, buf)
    return buf.getvalue()
