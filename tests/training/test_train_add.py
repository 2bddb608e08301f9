"""`verdict-train add`: a trained version folder becomes a repository's next version."""

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from artifact_checks import check_artifact

from training.__main__ import UNCHANGED, main
from training.config import load_config
from training.pipeline import run_training

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _train(root: Path, *overrides: str) -> Path:
    cfg = load_config(CONFIGS / "tiny-binary.yaml", ["train.progress=none", *overrides])
    return run_training(cfg, root / cfg.name, log=lambda m: None).path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two trained versions of tiny-binary from different runs, each in its own folder."""
    a = _train(tmp_path_factory.mktemp("run-a"))
    b = _train(tmp_path_factory.mktemp("run-b"), "train.epochs=3")
    return a, b


def _manifest(folder: Path) -> dict[str, Any]:
    m: dict[str, Any] = json.loads((folder / "manifest.json").read_text())
    return m


def test_add_makes_the_next_version_and_refuses_the_same_model_twice(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = trained
    repo = tmp_path / "models"
    target = repo / "tiny-binary"
    assert main(["add", str(a), str(target)]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == str(target / "1") and "as version 1" in out.err
    m1 = check_artifact(target / "1")
    assert (target / "1" / "model.onnx").read_bytes() == (a / "model.onnx").read_bytes()
    # Only the version may differ from the trained folder's manifest.
    assert {**_manifest(a), "version": 1} == m1

    # The same model again: nothing added, exit 3; with --skip-unchanged exit 0.
    assert main(["add", str(a), str(target)]) == UNCHANGED
    err = capsys.readouterr().err
    assert err.startswith(f"unchanged: {target / '1'} already has this model")
    assert main(["add", str(a), str(target), "--skip-unchanged"]) == 0
    assert capsys.readouterr().out.strip() == str(target / "1")
    assert sorted(p.name for p in target.iterdir()) == ["1"]

    # Another model is version 2; the first one again (a rollback) is version 3.
    assert main(["add", str(b), str(target)]) == 0
    assert main(["add", str(a), str(target)]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in target.iterdir()) == ["1", "2", "3"]
    m3 = check_artifact(target / "3")
    assert m3["version"] == 3 and m3["sha256"] == m1["sha256"] and m3["files"] == m1["files"]
    card = (target / "3" / "MODEL_CARD.md").read_text()
    assert card.startswith("# Model card: tiny-binary, version 3\n")
    card2 = (target / "2" / "MODEL_CARD.md").read_text()
    assert card2.startswith("# Model card: tiny-binary, version 2\n")
    assert not list(target.glob(".tmp-*"))


def test_same_graph_with_another_decision_is_a_new_version(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, _ = trained
    target = tmp_path / "models" / "tiny-binary"
    assert main(["add", str(a), str(target)]) == 0
    # Other costs, same training: the same model.onnx with another threshold answers
    # differently, so it is a new version, not "unchanged".
    other = _train(tmp_path / "costs", "decision.cost_fn=1", "decision.max_fnr=null")
    m = _manifest(other)
    assert m["sha256"] == _manifest(a)["sha256"]
    assert m["decision"]["threshold"] != _manifest(a)["decision"]["threshold"]
    assert main(["add", str(other), str(target)]) == 0
    assert _manifest(target / "2")["decision"] == m["decision"]
    capsys.readouterr()

    # Editing the threshold by hand leaves the reference sample's labels behind: refused.
    edited = tmp_path / "edited"
    shutil.copytree(a, edited)
    m = _manifest(edited)
    m["decision"]["threshold"] = 0.5
    (edited / "manifest.json").write_text(json.dumps(m))
    assert main(["add", str(edited), str(target)]) == 1
    assert "the reference sample's labels are for threshold" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("doctor", "message"),
    [
        ("model", "model.onnx does not match its sha256 in the manifest"),
        ("sample", "reference_sample.json does not match its sha256 in the manifest"),
        ("parity", "the manifest records a failed parity gate"),
        ("manifest", "has no manifest.json"),
    ],
)
def test_add_refuses_a_folder_it_cannot_trust(
    doctor: str,
    message: str,
    trained: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    a, _ = trained
    src = tmp_path / "copy"
    shutil.copytree(a, src)
    if doctor == "model":
        data = bytearray((src / "model.onnx").read_bytes())
        data[-1] ^= 1
        (src / "model.onnx").write_bytes(bytes(data))
    elif doctor == "sample":
        with (src / "reference_sample.json").open("a") as f:
            f.write(" ")
    elif doctor == "parity":
        m = _manifest(src)
        m["parity"]["passed"] = False
        (src / "manifest.json").write_text(json.dumps(m))
    else:
        (src / "manifest.json").unlink()
    target = tmp_path / "models" / "tiny-binary"
    assert main(["add", str(src), str(target)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not target.exists() or list(target.iterdir()) == []


def test_add_refuses_a_folder_named_for_another_model(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, _ = trained
    assert main(["add", str(a), str(tmp_path / "models")]) == 1
    err = capsys.readouterr().err
    assert "names the model 'tiny-binary'" in err and "add it to REPOSITORY/tiny-binary" in err
    assert str(tmp_path / "models" / "tiny-binary") in err
    assert not (tmp_path / "models").exists()
