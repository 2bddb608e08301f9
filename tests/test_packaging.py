"""The serving install: the exact versions the tests run on, inside the declared ranges."""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, pinned = line.partition("==")
            pins[canonicalize_name(name)] = pinned
    return pins


def test_every_runtime_dependency_is_pinned_inside_its_declared_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _pins()
    for text in project["dependencies"]:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in constraints.txt"
        assert req.specifier.contains(pins[name]), (text, pins[name])
        assert any(spec.operator == "<" for spec in req.specifier), f"{text}: no upper bound"


def test_the_tests_run_on_the_pinned_versions() -> None:
    for name, pinned in _pins().items():
        assert version(name) == pinned, f"{name} {version(name)} installed, {pinned} pinned"
