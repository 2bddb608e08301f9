"""Conformance at load: the manifest's checksums and parity gate, and its reference sample
re-run on the execution provider that will serve (the rule of docs/manifest.md).

A manifest written before these fields existed (no `files`, no `conformance`) is not refused
for lacking them: its version serves `unchecked`, which the metadata and a warning say, and it
exports no `verdict_conformance_max_abs_diff` (docs/serving.md). A field that is present and
fails refuses the version.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson

from service.errors import ModelLoadError, scrub_paths
from service.models.runtime import ModelSession

PASSED, FAILED, UNCHECKED = "passed", "failed", "unchecked"


@dataclass(frozen=True, slots=True)
class Conformance:
    """What the reference sample showed on this server's execution provider."""

    status: str  # passed, failed or unchecked (a manifest without a sample)
    provider: str  # the first provider of the session that serves
    rows: int = 0
    atol: float | None = None
    max_abs_diff: float | None = None
    stable_rows: int = 0  # rows whose label must not change
    label_mismatches: int = 0  # stable rows whose label changed
    reason: str = ""

    def describe(self) -> str:
        """One line for logs and refusals."""
        if self.status == UNCHECKED:
            return f"not conformance-checked: {self.reason}"
        diff = "non-finite" if self.max_abs_diff is None else f"{self.max_abs_diff:.3g}"
        text = (
            f"reference sample ({self.rows} rows) on {self.provider}: max |p - expected| "
            f"{diff} (atol {self.atol:g}), labels differ on {self.label_mismatches} of "
            f"{self.stable_rows} stable rows"
        )
        return text if not self.reason else f"{text}: {self.reason}"

    def record(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """The metadata view: status, tolerance and the difference measured per provider
        (at training, from the manifest, and here)."""
        block = manifest.get("conformance") or {}
        measured = []
        training = block.get("measured")
        if isinstance(training, dict):
            measured.append({"where": "training", **training})
        if self.status != UNCHECKED:
            measured.append(
                {
                    "where": "server",
                    "provider": self.provider,
                    "onnxruntime": ort.__version__,
                    "max_abs_diff": self.max_abs_diff,
                    "labels_equal": self.label_mismatches == 0,
                }
            )
        return {
            "status": self.status,
            "rows": self.rows,
            "atol": self.atol,
            "measured": measured,
            **({"reason": self.reason} if self.reason else {}),
        }


def _plain_name(name: Any) -> bool:
    return isinstance(name, str) and bool(name) and "/" not in name and not name.startswith(".")


def check_parity(manifest: dict[str, Any]) -> list[str]:
    """A failed parity gate recorded by the manifest (`passed: false`, or `labels_equal:
    false` in a manifest written before `passed` existed)."""
    parity = manifest.get("parity")
    if isinstance(parity, dict) and (
        parity.get("passed") is False or parity.get("labels_equal") is False
    ):
        return [
            "the manifest records a failed parity gate (torch and onnxruntime disagreed at "
            f"training: max_abs_diff {parity.get('max_abs_diff')!r}, labels_equal "
            f"{parity.get('labels_equal')!r})"
        ]
    return []


def check_blocks(manifest: dict[str, Any]) -> list[str]:
    """Problems with the form of the `files` and `conformance` blocks, when present."""
    problems: list[str] = []
    files = manifest.get("files")
    if files is not None and (
        not isinstance(files, dict)
        or not all(_plain_name(k) and isinstance(v, str) for k, v in files.items())
    ):
        problems.append("files must map file names inside the version folder to sha256 values")
    block = manifest.get("conformance")
    if block is not None:
        atol = block.get("atol") if isinstance(block, dict) else None
        if not isinstance(block, dict) or not _plain_name(block.get("sample_file")):
            problems.append("conformance.sample_file must name a file in the version folder")
        elif not isinstance(atol, int | float) or isinstance(atol, bool) or not atol > 0:
            problems.append(f"conformance.atol must be a positive number; got {atol!r}")
    return problems


def sha256_hex(data: bytes) -> str:
    """The hex sha256 of some bytes."""
    return hashlib.sha256(data).hexdigest()


def read_checked_files(
    folder: Path, manifest: dict[str, Any], model_file: str, model_bytes: bytes
) -> dict[str, bytes]:
    """Every file listed in `files` read and checked against its sha256 (the model file's
    bytes are the ones already read); returns the bytes read, by name. Raises ModelLoadError
    (check `files`) when a listed file is missing or differs."""
    where = f"{manifest.get('name')} v{manifest.get('version')} refused"
    files: dict[str, str] = manifest.get("files") or {}
    listed = files.get(model_file)
    if listed is not None and listed.lower() != str(manifest.get("sha256")).lower():
        raise ModelLoadError(
            f"{where}: files[{model_file!r}] and sha256 disagree (a doctored manifest?)", "files"
        )
    read: dict[str, bytes] = {model_file: model_bytes}
    for name, digest in files.items():
        if name not in read:
            try:
                read[name] = (folder / name).read_bytes()
            except OSError as exc:
                reason = "is missing" if isinstance(exc, FileNotFoundError) else "is unreadable"
                raise ModelLoadError(f"{where}: {name} {reason}", "files") from None
        got = sha256_hex(read[name])
        if got != digest.lower():
            raise ModelLoadError(
                f"{where}: sha256 of {name} is {got}, the manifest says {digest}", "files"
            )
    return read


def check_conformance(
    folder: Path,
    manifest: dict[str, Any],
    session: ModelSession,
    read: dict[str, bytes],
    positive_index: int | None,
    threshold: float | None,
) -> Conformance:
    """Run the reference sample on `session` and apply the conformance rule.

    Returns the result (status `passed`, or `unchecked` for a manifest without a sample);
    raises ModelLoadError (check `conformance`, the result in `measured`) when the version
    does not conform or its sample cannot be used.
    """
    provider = session.providers[0] if session.providers else "unknown"
    block = manifest.get("conformance")
    if block is None:
        return Conformance(
            UNCHECKED,
            provider,
            reason="the manifest has no reference sample (written before conformance checks)",
        )
    where = f"{manifest.get('name')} v{manifest.get('version')} refused: conformance"
    name = block["sample_file"]
    atol = float(block["atol"])
    try:
        raw = read[name] if name in read else (folder / name).read_bytes()
        x, expected, labels, stable = _sample_arrays(raw, manifest, threshold)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        text = "it is missing" if isinstance(exc, FileNotFoundError) else scrub_paths(str(exc))
        raise ModelLoadError(
            f"{where}: cannot use the reference sample {name}: {text}", "conformance"
        ) from None
    try:
        got = session.run(x)
    except Exception as exc:
        raise ModelLoadError(
            f"{where}: the reference sample's run failed: {scrub_paths(str(exc))}", "conformance"
        ) from None
    finite = got.shape == expected.shape and bool(np.isfinite(got).all())
    diff = float(np.abs(got.astype(np.float64) - expected).max()) if finite else None
    got_labels = _decide(got, positive_index, threshold) if finite else None
    mismatches = int(((got_labels != labels) & stable).sum()) if got_labels is not None else len(x)
    ok = diff is not None and diff <= atol and mismatches == 0
    result = Conformance(
        PASSED if ok else FAILED,
        provider,
        rows=len(x),
        atol=atol,
        max_abs_diff=diff,
        stable_rows=int(stable.sum()),
        label_mismatches=mismatches,
        reason="" if finite else f"output shape {list(got.shape)} or non-finite values",
    )
    if not ok:
        raise ModelLoadError(f"{where}: {result.describe()}", "conformance", measured=result)
    return result


def _sample_arrays(
    raw: bytes, manifest: dict[str, Any], threshold: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The sample's inputs (float32), expected probabilities, labels and stable-row mask,
    checked against the manifest's shapes and decision (ValueError when they do not fit)."""
    sample = orjson.loads(raw)
    if not isinstance(sample, dict):
        raise ValueError("not a JSON object")
    x = np.asarray(sample["inputs"], dtype=np.float32)
    expected = np.asarray(sample["probabilities"], dtype=np.float64)
    labels = np.asarray(sample["labels"], dtype=np.int64)
    stable = np.asarray(sample["label_stable"], dtype=bool)
    rows = len(x)
    dims = tuple(manifest["input"]["shape"][1:])
    classes = len(manifest["output"]["classes"])
    if rows == 0 or x.shape != (rows, *dims):
        raise ValueError(f"inputs have shape {list(x.shape)}; the model takes [rows, *{dims}]")
    if expected.shape != (rows, classes) or labels.shape != (rows,) or stable.shape != (rows,):
        raise ValueError("probabilities, labels and label_stable do not match the inputs")
    if not np.isfinite(x).all() or not np.isfinite(expected).all():
        raise ValueError("non-finite values")
    if sample.get("threshold") != threshold:
        raise ValueError(
            f"its labels are for threshold {sample.get('threshold')!r} and the manifest's "
            f"decision.threshold is {threshold!r} (retrain rather than edit the threshold)"
        )
    return x, expected, labels, stable


def _decide(proba: np.ndarray, positive: int | None, threshold: float | None) -> np.ndarray:
    """The served decision: score >= threshold for binary models, argmax otherwise."""
    if positive is not None and threshold is not None:
        return np.where(proba[:, positive] >= threshold, positive, 1 - positive)
    return proba.argmax(axis=1)
