"""Adding a trained version folder to a model repository as its next version.

Nothing is retrained: the files are copied, the manifest's `version` is rewritten (every
checksum stays valid, since the checksummed files are copied byte for byte), the model card
is re-rendered for the new version number, and the result is checked the way the service
checks a version before it is renamed into place. A copy whose model and decision are the
same as the latest version's adds nothing.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import artifact

CARD_FILE = "MODEL_CARD.md"
# What a server acts on besides the graph: a copy that changes none of it is the same model.
SERVED_KEYS = ("task", "input", "output", "objectives", "costs")


class AddError(ValueError):
    """The folder cannot be added: not a trained version, corrupt, or the wrong model."""


@dataclass
class AddResult:
    """Where the version is, and whether this call added it."""

    path: Path
    version: int
    added: bool


def _served(manifest: dict[str, Any]) -> tuple[Any, ...]:
    decision = manifest.get("decision") or {}
    return (
        manifest.get("sha256"),
        decision.get("threshold"),
        *(manifest.get(k) for k in SERVED_KEYS),
    )


def _render_card(folder: Path) -> None:
    from .card import CardError, write_card

    try:
        write_card(folder)
    except CardError as exc:
        raise AddError(f"cannot re-render the model card: {exc}") from exc


def add_version(source: Path, model_folder: Path) -> AddResult:
    """Copy the trained version folder `source` into `model_folder` as its next version.

    `model_folder` is `<repository>/<name>` and must carry the manifest's model name (the
    service requires it). When the latest version there has the same model.onnx (sha256)
    and the same decision, nothing is written and `added` is False.
    """
    manifest = _read(source)
    name = manifest.get("name")
    if not isinstance(name, str) or not name:
        raise AddError(f"{source / artifact.MANIFEST_FILE} names no model")
    if model_folder.name != name:
        raise AddError(
            f"the manifest names the model {name!r}, and the service wants a model's folder "
            f"to carry its name: add it to REPOSITORY/{name} (e.g. {model_folder / name} if "
            f"{model_folder} is the repository)"
        )
    problems = artifact.check_files(source, manifest)
    if problems:
        raise AddError(f"{source} is not a sound trained version: {'; '.join(problems)}")
    existing = artifact.versions(model_folder)
    if existing:
        latest = model_folder / str(existing[-1])
        if _served(_read(latest)) == _served(manifest):
            return AddResult(latest, existing[-1], added=False)

    def fill(tmp: Path, version: int) -> None:
        for f in sorted(source.iterdir()):
            if f.is_file() and not f.name.startswith("."):
                shutil.copy2(f, tmp / f.name)
        artifact.write_json(tmp / artifact.MANIFEST_FILE, {**manifest, "version": version})
        if (tmp / CARD_FILE).exists():
            _render_card(tmp)
        problems = artifact.check_version(tmp, artifact.read_manifest(tmp), name, version)
        if problems:
            raise AddError(f"the copy would be refused: {'; '.join(problems)}")

    path, version = artifact.write_version(model_folder, fill)
    return AddResult(path, version, added=True)


def _read(folder: Path) -> dict[str, Any]:
    try:
        return artifact.read_manifest(folder)
    except artifact.ArtifactError as exc:
        raise AddError(str(exc)) from exc
