"""The README and docs/serving.md list every setting."""

from __future__ import annotations

from pathlib import Path

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_is_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in Settings.model_fields:
        assert f"`VERDICT_{name.upper()}`" in readme, name
    assert "not verified on a GPU" in (ROOT / "docs" / "serving.md").read_text()
