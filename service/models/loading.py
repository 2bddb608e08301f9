"""Loading one model version: checksum, session, checks against the manifest, warm-up, cost.

Everything here blocks (file reads, ONNX Runtime): the repository calls `load_version`
from a worker thread, never on the event loop.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import ModelLoadError, scrub_paths
from service.models.codecs import InputSpec
from service.models.conformance import (
    Conformance,
    check_blocks,
    check_conformance,
    check_parity,
    read_checked_files,
    sha256_hex,
)
from service.models.manifest import MANIFEST, check_graph, check_manifest, read_manifest
from service.models.runtime import ModelSession, RuntimeOptions, create_session

WARMUP_ROWS = (1, 8)
# Batch sizes and runs per size timed after warm-up to predict what a run costs.
COST_ROWS = (1, 16)
COST_RUNS = 7
PROBABILITY_TOLERANCE = 1e-3
MODEL_FILE = "model.onnx"
SAMPLE_FILE = "reference_sample.json"  # the reference sample's name when a manifest names none

# mtime and size of each file a version's checks read: the manifest, the model file and the
# reference sample (0, 0 for a file that is absent).
Fingerprint = tuple[int, ...]


@dataclass(slots=True)
class LoadedVersion:
    """What the loading thread hands back: a session that passed every check."""

    manifest: dict[str, Any]
    spec: InputSpec
    classes: list[str]
    task: str
    threshold: float | None
    positive_index: int | None
    session: ModelSession
    fingerprint: Fingerprint
    cost: tuple[float, float]  # seconds per run: fixed, per row (see Batcher.calibrate)
    conformance: Conformance


def checked_files(manifest: dict[str, Any]) -> tuple[str, str]:
    """The model file and the reference sample a manifest names (the defaults otherwise)."""
    block = manifest.get("conformance")
    sample = block.get("sample_file") if isinstance(block, dict) else None
    return (
        str(manifest.get("model_file", MODEL_FILE)),
        sample if isinstance(sample, str) else SAMPLE_FILE,
    )


def file_fingerprint(
    folder: Path, model_file: str = MODEL_FILE, sample_file: str = SAMPLE_FILE
) -> Fingerprint:
    """mtime and size of the manifest, the model file and the reference sample: what polling
    compares (a changed sample is re-checked like a changed model)."""
    out: list[int] = []
    for name in (MANIFEST, model_file, sample_file):
        try:
            st = (folder / name).stat()
            out += [st.st_mtime_ns, st.st_size]
        except OSError:
            out += [0, 0]
    return tuple(out)


def _warm_up(session: ModelSession, spec: InputSpec, n_classes: int) -> list[str]:
    for rows in WARMUP_ROWS:
        x = np.zeros((rows, *spec.dims), dtype=np.float32)
        try:
            y = session.run(x)
        except Exception as exc:
            return [f"warm-up run on {rows} rows failed: {scrub_paths(str(exc))}"]
        if y.shape != (rows, n_classes):
            expected = [rows, n_classes]
            return [f"warm-up on {rows} rows gave shape {list(y.shape)}; expected {expected}"]
        if not np.isfinite(y).all() or not np.allclose(
            y.sum(axis=1), 1.0, atol=PROBABILITY_TOLERANCE
        ):
            return ["warm-up output is not a probability distribution (softmax missing?)"]
    return []


def _measure_cost(session: ModelSession, spec: InputSpec) -> tuple[float, float]:
    """Seconds one run takes, as fixed + per row: medians of a few timed runs at two sizes."""
    medians = []
    for rows in COST_ROWS:
        x = np.zeros((rows, *spec.dims), dtype=np.float32)
        times = []
        for _ in range(COST_RUNS):
            start = time.perf_counter()
            session.run(x)
            times.append(time.perf_counter() - start)
        medians.append(sorted(times)[len(times) // 2])
    (r1, t1), (r2, t2) = zip(COST_ROWS, medians, strict=True)
    per_row = max(t2 - t1, 0.0) / (r2 - r1)
    return max(t1 - per_row * r1, 0.0), per_row


def load_version(folder: Path, name: str, version: int, options: RuntimeOptions) -> LoadedVersion:
    """Read, check, conformance-check and warm up one version folder (blocking; call from a
    worker thread). Raises ModelLoadError, whose `check` names the check that refused it."""
    manifest = read_manifest(folder)
    problems = check_manifest(manifest, name, version)
    if problems:
        raise ModelLoadError(f"{name} v{version} refused: " + "; ".join(problems))
    problems = check_blocks(manifest)
    if problems:
        raise ModelLoadError(f"{name} v{version} refused: " + "; ".join(problems))
    problems = check_parity(manifest)
    if problems:
        raise ModelLoadError(f"{name} v{version} refused: " + "; ".join(problems), "parity")
    model_file, sample_file = checked_files(manifest)
    fingerprint = file_fingerprint(folder, model_file, sample_file)
    try:
        raw = (folder / model_file).read_bytes()
    except OSError as exc:
        reason = f"{name} v{version} refused: cannot read {model_file}: {exc.strerror}"
        raise ModelLoadError(reason, "files") from None
    digest = sha256_hex(raw)
    if digest != manifest["sha256"].lower():
        raise ModelLoadError(
            f"{name} v{version} refused: sha256 of {model_file} is {digest}, "
            f"the manifest says {manifest['sha256']}",
            "files",
        )
    read = read_checked_files(folder, manifest, model_file, raw)
    try:
        session, providers = create_session(raw, options)
    except Exception as exc:
        raise ModelLoadError(
            f"{name} v{version} refused: onnxruntime cannot load {model_file}: "
            + scrub_paths(str(exc)),
            "graph",
        ) from None
    inp, out = manifest["input"], manifest["output"]
    ms = ModelSession(session, providers, inp["name"], out["name"])
    problems = check_graph(manifest, ms)
    if problems:
        raise ModelLoadError(f"{name} v{version} refused: " + "; ".join(problems), "graph")
    features = inp.get("feature_names")
    spec = InputSpec(
        inp["name"], tuple(inp["shape"][1:]), tuple(features) if features is not None else None
    )
    classes = list(out["classes"])
    problems = _warm_up(ms, spec, len(classes))
    if problems:
        raise ModelLoadError(f"{name} v{version} refused: " + "; ".join(problems), "warmup")
    task = manifest["task"]
    threshold = float(manifest["decision"]["threshold"]) if task == "binary" else None
    positive = classes.index(out["positive_class"]) if task == "binary" else None
    conformance = check_conformance(folder, manifest, ms, read, positive, threshold)
    try:
        cost = _measure_cost(ms, spec)
    except Exception as exc:
        raise ModelLoadError(
            f"{name} v{version} refused: timing runs failed: {scrub_paths(str(exc))}", "warmup"
        ) from None
    return LoadedVersion(
        manifest, spec, classes, task, threshold, positive, ms, fingerprint, cost, conformance
    )


def scan_folder(root: Path, name_re: re.Pattern[str]) -> dict[str, list[int]]:
    """Model names (matching `name_re`) and their version numbers found under `root`."""
    found: dict[str, list[int]] = {}
    if not root.is_dir():
        return found
    for model_dir in sorted(root.iterdir()):
        if not model_dir.is_dir() or not name_re.match(model_dir.name):
            continue
        versions = [
            int(v.name)
            for v in model_dir.iterdir()
            if v.is_dir() and v.name.isascii() and v.name.isdigit() and int(v.name) > 0
        ]
        if versions:
            found[model_dir.name] = sorted(versions)
    return found


def model_fingerprint(folder: Path) -> tuple[Fingerprint, ...]:
    """The fingerprints of every version folder of a model: what polling compares."""
    if not folder.is_dir():
        return ()
    return tuple(
        file_fingerprint(v)
        for v in sorted(folder.iterdir())
        if v.is_dir() and v.name.isascii() and v.name.isdigit()
    )
