"""The model version folder on disk: file names, checksums, the atomic write and its checks.

Standard library only, so that adding a version to a repository needs no torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
SAMPLE_FILE = "reference_sample.json"


class ArtifactError(RuntimeError):
    """A version folder that cannot be claimed, read or trusted."""


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of some bytes."""
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json(path: Path, obj: Any) -> None:
    """JSON with two-space indents and a final newline; NaN is an error."""
    path.write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a version folder; ArtifactError when absent or not a JSON object."""
    path = folder / MANIFEST_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{folder} has no {MANIFEST_FILE}: not a version folder") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"cannot read {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise ArtifactError(f"{path} is not a JSON object")
    return doc


def versions(root: Path) -> list[int]:
    """The integer-named version folders under a model folder, in increasing order."""
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(root: Path) -> int:
    """One more than the highest integer-named folder under root (1 when none)."""
    return max(versions(root), default=0) + 1


def write_version(
    root: Path, fill: Callable[[Path, int], None], attempts: int = 5
) -> tuple[Path, int]:
    """Write a new version folder atomically: fill a temp dir beside it, then rename it.

    `fill(tmpdir, version)` writes every file; if it raises, the temp dir is removed and
    nothing is left under root.
    """
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the service may run as another user
        for _ in range(attempts):
            version = next_version(root)
            fill(tmp, version)
            target = root / str(version)
            try:
                os.rename(tmp, target)  # atomic on one filesystem; fails if target exists
            except OSError:
                if target.exists():
                    for child in tmp.iterdir():
                        child.unlink()
                    continue  # another run took this version: refill with the next one
                raise
            return target, version
        raise ArtifactError(f"could not claim a new version under {root}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _plain_name(name: Any) -> bool:
    return isinstance(name, str) and bool(name) and "/" not in name and not name.startswith(".")


def check_files(folder: Path, manifest: dict[str, Any]) -> list[str]:
    """Problems with a folder's files against its manifest: checksums and the parity gate.

    Every checksum must hold (the model file's `sha256`, each entry of `files`), and the
    parity gate must not have failed.
    """
    problems: list[str] = []
    model_file = manifest.get("model_file", MODEL_FILE)
    checks: dict[str, Any] = {model_file: manifest.get("sha256")}
    files = manifest.get("files", {})
    if not isinstance(files, dict):
        problems.append("manifest files must map file names to sha256")
        files = {}
    for file, digest in files.items():
        if file in checks and checks[file] != digest:
            problems.append(f"files[{file!r}] and sha256 disagree")
        checks.setdefault(file, digest)
    for file, digest in checks.items():
        if not _plain_name(file):
            problems.append(f"{file!r} is not a file name inside the version folder")
        elif not isinstance(digest, str):
            problems.append(f"no sha256 for {file}")
        elif not (folder / file).is_file():
            problems.append(f"{file} is missing")
        elif file_sha256(folder / file) != digest.lower():
            problems.append(f"{file} does not match its sha256 in the manifest (changed?)")
    parity = manifest.get("parity")
    if isinstance(parity, dict) and parity.get("passed") is False:
        problems.append("the manifest records a failed parity gate")
    return problems + _sample_problems(folder, manifest)


def _sample_problems(folder: Path, manifest: dict[str, Any]) -> list[str]:
    """The reference sample's labels must be the manifest's decision's."""
    sample_file = (manifest.get("conformance") or {}).get("sample_file")
    if sample_file is None:
        return []
    path = folder / str(sample_file)
    if not _plain_name(sample_file) or not path.is_file():
        return [f"the reference sample {sample_file!r} is missing"]
    try:
        sample = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return [f"cannot read the reference sample: {exc}"]
    want = (manifest.get("decision") or {}).get("threshold")
    if sample.get("threshold") != want:
        return [
            f"the reference sample's labels are for threshold {sample.get('threshold')!r}, "
            f"the manifest's decision is {want!r} (retrain rather than edit the threshold)"
        ]
    return []


def check_version(folder: Path, manifest: dict[str, Any], name: str, version: int) -> list[str]:
    """Problems that would make the service refuse this folder as `name`/`version`.

    The folder's name and version must be the manifest's, and check_files must pass.
    """
    problems: list[str] = []
    if manifest.get("name") != name:
        problems.append(f"manifest name {manifest.get('name')!r} is not the folder name {name!r}")
    if manifest.get("version") != version:
        problems.append(f"manifest version {manifest.get('version')!r} is not the folder {version}")
    return problems + check_files(folder, manifest)
