"""Two versions of a binary model for the shadow tests: the primary decides on feature
`alpha`, the challenger on `beta`; on the shifted traffic made here the truth follows `beta`,
so the challenger is measurably cheaper."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.conftest import write_binary

MODEL = "risk"
ADMIN_KEY = "admin-s3cret"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def write_on_feature(root: Path, version: int, feature: int, name: str = MODEL) -> Path:
    """A version whose spam score is sigmoid(4 * x[feature]) (threshold 0.5)."""
    w = np.zeros((3, 2), dtype=np.float32)
    w[feature, 1] = 4.0
    b = np.zeros(2, dtype=np.float32)
    return write_binary(root, version, name=name, threshold=0.5, weights=(w, b))


def write_pair(root: Path, name: str = MODEL) -> Path:
    """v1 (primary, decides on alpha) and v2 (challenger, decides on beta)."""
    write_on_feature(root, 1, 0, name)
    write_on_feature(root, 2, 1, name)
    return root


def shifted_rows(n: int, seed: int = 0) -> tuple[list[list[float]], list[str]]:
    """Rows of the shifted traffic and their truth: spam exactly when beta > 0 (alpha is
    noise), with beta kept away from 0 so the challenger's decisions are clear-cut."""
    rng = np.random.default_rng(seed)
    alpha = rng.normal(size=n)
    beta = rng.choice([-1.0, 1.0], size=n) * rng.uniform(0.3, 2.0, size=n)
    gamma = rng.normal(size=n)
    rows = np.stack([alpha, beta, gamma], axis=1).round(4).tolist()
    return rows, ["spam" if v > 0 else "ham" for v in beta]
