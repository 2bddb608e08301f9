"""The manifest of a model version: read it, check it on its own, and against its graph.

What a manifest holds is the contract of docs/manifest.md (written by training/).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from service.errors import ModelLoadError
from service.models.codecs import ORT_TO_DTYPE
from service.models.runtime import ModelSession

MANIFEST = "manifest.json"


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a version folder; raises ModelLoadError when absent or not an object.

    Messages name the folder relative to the repository (`name/version`), never the full path.
    """
    where = f"{folder.parent.name}/{folder.name}"
    try:
        doc = orjson.loads((folder / MANIFEST).read_bytes())
    except FileNotFoundError:
        raise ModelLoadError(f"{where}: no {MANIFEST}") from None
    except OSError as exc:
        raise ModelLoadError(f"{where}: {MANIFEST} is unreadable: {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise ModelLoadError(f"{where}: {MANIFEST} is unreadable: {exc}") from None
    if not isinstance(doc, dict):
        raise ModelLoadError(f"{where}: {MANIFEST} is not a JSON object")
    return doc


def check_manifest(manifest: dict[str, Any], name: str, version: int) -> list[str]:
    """Problems with a manifest on its own (before looking at the graph)."""
    problems: list[str] = []
    if manifest.get("name") != name:
        problems.append(f"manifest name {manifest.get('name')!r} is not the folder name {name!r}")
    if manifest.get("version") != version:
        problems.append(f"manifest version {manifest.get('version')!r} is not the folder {version}")
    model_file = manifest.get("model_file", "model.onnx")
    if not isinstance(model_file, str) or "/" in model_file or model_file.startswith("."):
        problems.append("model_file must be a file name inside the version folder")
    elif not model_file.endswith(".onnx"):
        problems.append(f"model_file must be an ONNX file (*.onnx); got {model_file!r}")
    if not isinstance(manifest.get("sha256"), str):
        problems.append("sha256 is missing")
    inp = manifest.get("input")
    out = manifest.get("output")
    if not isinstance(inp, dict) or not isinstance(out, dict):
        return [*problems, "input and output must be objects"]
    shape = inp.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) < 2
        or shape[0] != -1
        or not all(isinstance(d, int) and d > 0 for d in shape[1:])
    ):
        problems.append(f"input.shape must be [-1, d1, ...] with positive dims; got {shape!r}")
    if inp.get("dtype") != "float32":
        problems.append(f"input.dtype must be float32; got {inp.get('dtype')!r}")
    if not isinstance(inp.get("name"), str):
        problems.append("input.name is missing")
    features = inp.get("feature_names")
    if features is not None:
        if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            problems.append("input.feature_names must be a list of names or null")
        elif isinstance(shape, list) and len(shape) == 2 and len(features) != shape[1]:
            problems.append(
                f"input.feature_names has {len(features)} names but the input has {shape[1]}"
            )
        elif len(set(features)) != len(features):
            problems.append("input.feature_names has duplicates")
    classes = out.get("classes")
    if (
        not isinstance(classes, list)
        or len(classes) < 2
        or not all(isinstance(c, str) for c in classes)
        or len(set(classes)) != len(classes)
    ):
        problems.append("output.classes must be at least two distinct labels")
        classes = None
    oshape = out.get("shape")
    if not isinstance(oshape, list) or len(oshape) != 2 or oshape[0] != -1:
        problems.append(f"output.shape must be [-1, C]; got {oshape!r}")
    elif classes is not None and oshape[1] != len(classes):
        problems.append(f"output.shape has {oshape[1]} classes but output.classes {len(classes)}")
    if out.get("dtype") != "float32":
        problems.append(f"output.dtype must be float32; got {out.get('dtype')!r}")
    if not isinstance(out.get("name"), str):
        problems.append("output.name is missing")
    task = manifest.get("task")
    threshold = (manifest.get("decision") or {}).get("threshold")
    if task == "binary":
        if classes is not None and len(classes) != 2:
            problems.append("a binary model needs exactly two classes")
        if classes is not None and out.get("positive_class") not in classes:
            problems.append("output.positive_class must be one of output.classes")
        if (
            not isinstance(threshold, int | float)
            or isinstance(threshold, bool)
            or not 0 <= threshold <= 1
        ):
            problems.append(f"decision.threshold must be in [0, 1]; got {threshold!r}")
    elif task != "multiclass":
        problems.append(f"task must be binary or multiclass; got {task!r}")
    return problems


def check_graph(manifest: dict[str, Any], session: ModelSession) -> list[str]:
    """Problems between the manifest and the graph ONNX Runtime loaded."""
    problems: list[str] = []
    inp, out = manifest["input"], manifest["output"]
    graph_inputs = session.graph_inputs()
    names = [i[0] for i in graph_inputs]
    if names != [inp["name"]]:
        problems.append(f"graph inputs are {names}; the manifest says [{inp['name']!r}]")
    else:
        _, gtype, gshape = graph_inputs[0]
        problems += _compare("input", inp, gtype, gshape)
    graph_outputs = {o[0]: o for o in session.graph_outputs()}
    if out["name"] not in graph_outputs:
        problems.append(f"graph outputs are {sorted(graph_outputs)}; no {out['name']!r}")
    else:
        _, gtype, gshape = graph_outputs[out["name"]]
        problems += _compare("output", out, gtype, gshape)
    return problems


def _compare(what: str, spec: dict[str, Any], gtype: str, gshape: list[Any]) -> list[str]:
    problems = []
    dtype = ORT_TO_DTYPE.get(gtype, gtype)
    if dtype != spec["dtype"]:
        problems.append(f"graph {what} dtype is {dtype}; the manifest says {spec['dtype']}")
    shape = spec["shape"]
    if len(gshape) != len(shape):
        problems.append(f"graph {what} has rank {len(gshape)}; the manifest shape is {shape}")
        return problems
    if isinstance(gshape[0], int) and gshape[0] > 0:
        problems.append(f"graph {what} has a fixed batch axis {gshape[0]}; it must be dynamic")
    for i, (g, m) in enumerate(zip(gshape[1:], shape[1:], strict=True), start=1):
        if isinstance(g, int) and g > 0 and g != m:
            problems.append(f"graph {what} axis {i} is {g}; the manifest says {m}")
    return problems


class ManifestCache:
    """Manifests read from disk, kept until their file changes (for versions not loaded)."""

    def __init__(self) -> None:
        self._docs: dict[Path, tuple[int, dict[str, Any]]] = {}

    def read(self, folder: Path) -> dict[str, Any] | None:
        """The manifest of a version folder, or None when it is absent or unreadable."""
        try:
            mtime = (folder / MANIFEST).stat().st_mtime_ns
        except OSError:
            return None
        cached = self._docs.get(folder)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        try:
            doc = read_manifest(folder)
        except ModelLoadError:
            return None
        self._docs[folder] = (mtime, doc)
        return doc
