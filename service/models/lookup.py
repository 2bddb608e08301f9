"""Lookup of the served model versions by name and version: the version a request runs on,
pinning it for the request, and what is served and ready."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from service.errors import (
    BadRequestError,
    ModelNotFoundError,
    ModelNotReadyError,
    VersionNotFoundError,
)
from service.models.manifest import ManifestCache
from service.models.version import NAME_RE, ModelVersion


class VersionLookup:
    """The read side of `models.repository.Repository`, over the maps it keeps: the served
    versions of each model, the version that answers requests without one, and the models
    expected to serve."""

    root: Path
    started: bool
    _served: dict[str, dict[int, ModelVersion]]
    _latest: dict[str, ModelVersion]
    _expected: set[str]
    _manifests: ManifestCache

    def resolve(self, name: str | None, version: int | str | None = None) -> ModelVersion:
        """The version a request runs on (latest unless given)."""
        if name is None:
            if len(self._latest) == 1:
                return next(iter(self._latest.values()))
            if not self._latest:
                raise ModelNotReadyError("no model is loaded")
            raise BadRequestError(f"`model` is required: this server serves {sorted(self._latest)}")
        if name not in self._latest:
            if name in self._expected:
                raise ModelNotReadyError(f"model {name!r} is not loaded yet")
            raise ModelNotFoundError(f"unknown model {name!r}; served: {sorted(self._latest)}")
        if version is None or version == "":
            return self._latest[name]
        number = _version_number(version)
        mv = self._served[name].get(number) if number is not None else None
        if mv is None:
            raise VersionNotFoundError(
                f"model {name!r} has no served version {version!r}; "
                f"served: {sorted(self._served[name])}"
            )
        return mv

    def acquire(self, name: str | None, version: int | str | None = None) -> ModelVersion:
        """Resolve and pin a version so that it is not closed under the request."""
        mv = self.resolve(name, version)
        mv.active += 1
        return mv

    def release(self, mv: ModelVersion) -> None:
        """Unpin a version taken with acquire."""
        mv.active -= 1
        if mv.active == 0 and mv.retiring:
            mv.idle.set()

    def served(self) -> dict[str, dict[int, ModelVersion]]:
        """Model name -> version -> loaded version."""
        return self._served

    def versions(self, name: str) -> list[int]:
        """Served versions of a model."""
        return sorted(self._served.get(name, {}))

    def predictions_issued(self, model: str, version: int) -> tuple[int, float] | None:
        """(rows this process predicted on a served version, since when), or None."""
        mv = self._served.get(model, {}).get(version)
        return None if mv is None else (mv.issued, mv.loaded_at)

    @property
    def ready(self) -> bool:
        """True once loading finished and every configured model serves a version."""
        return self.started and all(name in self._latest for name in self._expected)

    def not_ready(self) -> list[str]:
        """Configured models that serve no version."""
        return sorted(n for n in self._expected if n not in self._latest)

    def manifest(self, model: str, version: int) -> dict[str, Any] | None:
        """A version's manifest: from memory when loaded, else from disk; None when unknown."""
        mv = self._served.get(model, {}).get(version)
        if mv is not None:
            return mv.manifest
        if not NAME_RE.match(model) or not isinstance(version, int) or version < 1:
            return None
        return self._manifests.read(self.root / model / str(version))


def _version_number(version: int | str) -> int | None:
    if isinstance(version, bool):
        return None
    if isinstance(version, int):
        return version
    if isinstance(version, str) and version.isascii() and version.isdigit():
        return int(version)
    if isinstance(version, float) and math.isfinite(version) and version.is_integer():
        return int(version)
    return None
