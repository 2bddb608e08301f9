"""The compare subcommand: same folds for our net and the baselines, tables written in place."""

from pathlib import Path

from training.__main__ import main
from training.compare import END, START, write_between_markers


def test_write_between_markers_replaces_only_the_block(tmp_path: Path) -> None:
    doc = tmp_path / "q.md"
    doc.write_text(f"# Title\n\nbefore\n\n{START}\nold table\n{END}\n\nafter\n")
    write_between_markers(doc, "| new | table |\n")
    text = doc.read_text()
    assert "old table" not in text and "| new | table |" in text
    assert text.startswith("# Title\n\nbefore") and text.rstrip().endswith("after")
    fresh = tmp_path / "fresh.md"
    write_between_markers(fresh, "body")
    assert fresh.read_text() == f"{START}\nbody\n{END}\n"


def test_compare_cli_writes_tables(tmp_path: Path) -> None:
    cfg = tmp_path / "iris.yaml"
    cfg.write_text(
        "name: iris\ndata: {name: iris}\nmodel: {hidden: [8]}\n"
        "train: {epochs: 20, lr: 0.05, progress: none}\ncv: {folds: 3}\n"
    )
    doc = tmp_path / "quality.md"
    doc.write_text(f"intro\n{START}\n{END}\n")
    assert main(["compare", str(cfg), "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert "### iris (iris, 3-fold CV, seed 0)" in text
    for row in ("| ours (MLP) |", "| LogisticRegression |", "| SVC (rbf) |"):
        assert row in text
    assert text.startswith("intro\n")
