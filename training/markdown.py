"""Markdown and number formatting shared by the model card's sections."""

from __future__ import annotations

from typing import Any

from .bounds import wilson


def pct(v: float | None) -> str:
    """A share as a percentage with one decimal; a dash for None."""
    return "–" if v is None else f"{100 * v:.1f}%"


def f4(v: float | None) -> str:
    """A number with four decimals; a dash for None."""
    return "–" if v is None else f"{v:.4f}"


def interval(k: int, n: int) -> str:
    """The two-sided 95% Wilson interval of k/n, with the counts."""
    lo, hi = wilson(k, n)
    return f"{100 * lo:.1f}–{100 * hi:.1f}% ({k} of {n})"


def cell(text: Any) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A markdown table as lines, with a blank line after it."""
    out = ["| " + " | ".join(cell(h) for h in header) + " |"]
    out.append("|" + "---|" * len(header))
    out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return [*out, ""]
