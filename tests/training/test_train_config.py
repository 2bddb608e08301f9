"""Training configs: YAML and TOML, overrides, and bad configs rejected with the field named."""

from pathlib import Path

import pytest

from training.__main__ import main
from training.config import ConfigError, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_bundled_configs_validate() -> None:
    bc = load_config(CONFIGS / "breast-cancer.yaml")
    assert bc.decision.positive_class == "malignant"
    assert (bc.decision.cost_fp, bc.decision.cost_fn, bc.decision.max_fnr) == (1.0, 20.0, 0.02)
    assert bc.data.classes == ["benign", "malignant"]
    assert bc.cv.folds == 5
    digits = load_config(CONFIGS / "digits.yaml")
    assert digits.model.type == "cnn"
    assert digits.cv.folds == 5


def test_toml_and_overrides(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS / "tiny-digits.toml", ["train.lr=0.5", "model.channels=[2, 3]"])
    assert cfg.train.lr == 0.5
    assert cfg.model.type == "cnn" and cfg.model.channels == [2, 3]
    cfg = load_config(CONFIGS / "tiny-binary.yaml", ["decision.max_fpr=0.3", "seed=9"])
    assert cfg.decision.max_fpr == 0.3 and cfg.seed == 9


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("train.lr=-1", "train.lr"),
        ("train.optimizer=lbfgs", "train.optimizer"),
        ("model.activation=swish", "model.activation"),
        ("model.norm=group", "model.norm"),
        ("model.hidden=[8, 0]", "model.hidden.1"),
        ("train.early_stopping.patience=0", "train.early_stopping.patience"),
        ("train.typo=1", "train.typo"),
        ("cv.folds=1", "cv"),
        ("decision.max_fnr=1.5", "decision.max_fnr"),
        ("data.name=mnist", "data.name"),
        ("name=Bad Name", "name"),
    ],
)
def test_bad_config_names_the_field(override: str, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(CONFIGS / "tiny-binary.yaml", [override])
    assert f"{field}:" in str(err.value)


def test_missing_required_fields(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("name: x\ndata: {source: csv}\n")
    with pytest.raises(ConfigError, match=r"data\.path is required"):
        load_config(p)
    p.write_text("name: x\n")
    with pytest.raises(ConfigError, match=r"data: Field required"):
        load_config(p)
    p.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"key\.sub=value"):
        load_config(CONFIGS / "tiny-binary.yaml", ["novalue"])


def test_cli_rejects_bad_config_without_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "models" / "m"
    rc = main(
        ["train", str(CONFIGS / "tiny-binary.yaml"), "--out", str(out), "--set", "model.dropout=2"]
    )
    assert rc == 2
    assert "model.dropout:" in capsys.readouterr().err
    assert not out.exists()
