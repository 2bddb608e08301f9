"""Write the small payload files (real rows from scikit-learn) that the benchmark sends."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PAYLOAD_DIR = Path(__file__).resolve().parent / "payloads"
ROWS = 64


def load_rows(name: str, payload_dir: Path = PAYLOAD_DIR) -> list[list[float]]:
    """Return the stored rows for model `name` (flat feature lists, raw values)."""
    data = json.loads((payload_dir / f"{name}.json").read_text())
    rows: list[list[float]] = data["rows"]
    return rows


def _write(payload_dir: Path) -> None:
    # sklearn only here: the benchmark itself reads the committed JSON files.
    from sklearn.datasets import load_breast_cancer, load_digits

    payload_dir.mkdir(parents=True, exist_ok=True)
    for name, loader in (("breast-cancer", load_breast_cancer), ("digits", load_digits)):
        x = loader().data[:ROWS]
        body = {
            "source": f"sklearn.datasets.{loader.__name__}().data[:{ROWS}]",
            "rows": [[float(v) for v in row] for row in x],
        }
        (payload_dir / f"{name}.json").write_text(json.dumps(body) + "\n")


def main() -> None:
    """Regenerate bench/payloads/*.json from scikit-learn's bundled data sets."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=PAYLOAD_DIR)
    _write(parser.parse_args().out)


if __name__ == "__main__":
    main()
