"""Model cards as web pages: find a version's MODEL_CARD.md and its PNGs, and render the card
as a safe, self-contained HTML page (no torch)."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from pathlib import Path

from service.errors import (
    BadRequestError,
    ModelNotFoundError,
    NotFoundError,
    VersionNotFoundError,
)

CARD_FILE = "MODEL_CARD.md"
MANIFEST_FILE = "manifest.json"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
ASSET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.png$")
# The page carries no script and loads nothing but its own images.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)

_STYLE = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;max-width:60rem;margin:2rem auto;
padding:0 1rem;color:#1b1f24}
h1{border-bottom:2px solid #d0d7de;padding-bottom:.3rem}h2{margin-top:2rem;
border-bottom:1px solid #d0d7de}
table{border-collapse:collapse;margin:.5rem 0 1rem}th,td{border:1px solid #d0d7de;
padding:.25rem .6rem;text-align:left;vertical-align:top}th{background:#f6f8fa}
tr:nth-child(even) td{background:#fbfcfd}code{background:#f3f4f6;padding:0 .2rem;
border-radius:3px;font-size:90%}pre{background:#f6f8fa;padding:.8rem;overflow:auto;
max-height:24rem}pre code{background:none;padding:0}img{max-width:100%;height:auto}
figure{margin:1rem 0}
"""


def parse_version(version: str | None) -> int | None:
    """`?version=N` as a positive integer, None when absent."""
    if version is None or version == "":
        return None
    if not (version.isascii() and version.isdigit()) or len(version) > 9 or int(version) < 1:
        raise BadRequestError(f"version must be a positive integer, got {version[:40]!r}")
    return int(version)


def _versions(model_dir: Path) -> list[int]:
    return sorted(
        int(p.name)
        for p in model_dir.iterdir()
        if p.name.isascii() and p.name.isdigit() and p.is_dir() and (p / MANIFEST_FILE).is_file()
    )


def find_version(repository: str | Path, name: str, version: int | None) -> tuple[Path, int]:
    """The folder of `name`'s version (the highest one with a manifest when None)."""
    root = Path(repository).resolve()
    if not NAME_RE.fullmatch(name):
        raise ModelNotFoundError(f"model {name[:80]!r} not found")
    model_dir = root / name
    if not model_dir.is_dir() or model_dir.resolve().parent != root:
        raise ModelNotFoundError(f"model {name!r} not found")
    versions = _versions(model_dir)
    if not versions:
        raise ModelNotFoundError(f"model {name!r} has no versions")
    if version is None:
        version = versions[-1]
    elif version not in versions:
        raise VersionNotFoundError(f"model {name!r} has no version {version} (has {versions})")
    return model_dir / str(version), version


def read_card(folder: Path, name: str, version: int) -> str:
    """MODEL_CARD.md's text for a version folder."""
    path = folder / CARD_FILE
    if not path.is_file():
        raise NotFoundError(
            f"model {name!r} version {version} has no {CARD_FILE}; write it with "
            f"`python -m training card <repository>/{name}/{version}`",
            "card_not_found",
        )
    return path.read_text(encoding="utf-8", errors="replace")


def asset_path(folder: Path, file: str) -> Path:
    """A PNG that lies in the version folder itself (no sub-folders, links or other types)."""
    if not ASSET_RE.fullmatch(file):
        raise NotFoundError(f"asset {file[:80]!r} not found", "asset_not_found")
    path = folder / file
    if path.is_symlink() or not path.is_file():
        raise NotFoundError(f"asset {file!r} not found", "asset_not_found")
    return path


# ---------------------------------------------------------------- markdown -> HTML

_CODE_SPAN = re.compile(r"`([^`]+)`")
_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_EM = re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_TABLE_SEP = re.compile(r"^\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
_UL = re.compile(r"^\s*[-*+]\s+(.*)$")
_OL = re.compile(r"^\s*\d{1,9}[.)]\s+(.*)$")
_SAFE_LINK = re.compile(r"^(https?://|#)[^\s\"'<>`]*$")

ImageSrc = Callable[[str], str | None]


def _inline(text: str, image_src: ImageSrc) -> str:
    """Escape a line of text, then turn code spans, images, links and emphasis into HTML."""
    stash: list[str] = []

    def keep(fragment: str) -> str:
        stash.append(fragment)
        return f"\x00{len(stash) - 1}\x00"

    def image(m: re.Match[str]) -> str:
        alt, src = m.group(1), m.group(2)
        url = image_src(src)
        if url is None:
            return keep(html.escape(alt))
        return keep(
            f'<img src="{html.escape(url, quote=True)}" alt="{html.escape(alt, quote=True)}">'
        )

    def link(m: re.Match[str]) -> str:
        label, href = m.group(1), m.group(2)
        if not _SAFE_LINK.match(href):
            return keep(html.escape(label))
        return keep(
            f'<a href="{html.escape(href, quote=True)}" rel="noopener noreferrer">'
            f"{html.escape(label)}</a>"
        )

    # Raw markdown first: code spans keep their content literally, images and links are
    # checked before anything is escaped, the rest is escaped as plain text.
    text = text.replace("\x00", "")
    text = _CODE_SPAN.sub(lambda m: keep(f"<code>{html.escape(m.group(1))}</code>"), text)
    text = _IMAGE.sub(image, text)
    text = _LINK.sub(link, text)
    text = html.escape(text, quote=True)
    text = _BOLD.sub(r"<strong>\1</strong>", text)
    text = _EM.sub(r"<em>\1</em>", text)
    return re.sub(r"\x00(\d+)\x00", lambda m: stash[int(m.group(1))], text)


def _cells(row: str) -> list[str]:
    row = row.strip()
    if row.startswith("|"):
        row = row[1:]
    if row.endswith("|") and not row.endswith("\\|"):
        row = row[:-1]
    cells, cur, i = [], "", 0
    while i < len(row):
        if row[i] == "\\" and i + 1 < len(row) and row[i + 1] == "|":
            cur += "|"
            i += 2
            continue
        if row[i] == "|":
            cells.append(cur.strip())
            cur = ""
        else:
            cur += row[i]
        i += 1
    cells.append(cur.strip())
    return cells


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "section"


def markdown_to_html(md: str, image_src: ImageSrc) -> str:
    """The subset of markdown the cards use, as HTML; every piece of text is escaped.

    Headings, paragraphs, pipe tables, bullet and numbered lists, fenced code blocks, code
    spans, bold, emphasis, images (only where `image_src` gives a URL) and http(s) links.
    Raw HTML in the markdown is shown as text, never interpreted.
    """
    lines = md.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    out: list[str] = []
    para: list[str] = []
    i = 0

    def flush() -> None:
        if para:
            out.append("<p>" + " ".join(_inline(p, image_src) for p in para) + "</p>")
            para.clear()

    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith("```"):
            flush()
            lang = re.sub(r"[^A-Za-z0-9_-]", "", stripped[3:])
            body: list[str] = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                body.append(lines[i])
                i += 1
            i += 1  # the closing fence (or the end)
            cls = f' class="language-{lang}"' if lang else ""
            out.append(f"<pre><code{cls}>{html.escape(chr(10).join(body))}</code></pre>")
            continue
        if not stripped:
            flush()
            i += 1
            continue
        m = _HEADING.match(stripped)
        if m:
            flush()
            level, text = len(m.group(1)), m.group(2)
            out.append(f'<h{level} id="{_slug(text)}">{_inline(text, image_src)}</h{level}>')
            i += 1
            continue
        if (
            stripped.startswith("|")
            and i + 1 < len(lines)
            and _TABLE_SEP.match(lines[i + 1].strip())
        ):
            flush()
            head = _cells(stripped)
            rows: list[list[str]] = []
            i += 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            th = "".join(f"<th>{_inline(c, image_src)}</th>" for c in head)
            body_rows = "".join(
                "<tr>"
                + "".join(f"<td>{_inline(c, image_src)}</td>" for c in r[: len(head)])
                + "<td></td>" * max(0, len(head) - len(r))
                + "</tr>"
                for r in rows
            )
            out.append(f"<table><thead><tr>{th}</tr></thead><tbody>{body_rows}</tbody></table>")
            continue
        for pattern, tag in ((_UL, "ul"), (_OL, "ol")):
            if pattern.match(line):
                flush()
                items: list[str] = []
                while i < len(lines) and (lm := pattern.match(lines[i])):
                    items.append(lm.group(1))
                    i += 1
                    # An indented line under an item continues it.
                    while (
                        i < len(lines)
                        and lines[i].startswith("  ")
                        and lines[i].strip()
                        and not _UL.match(lines[i])
                        and not _OL.match(lines[i])
                    ):
                        items[-1] += " " + lines[i].strip()
                        i += 1
                lis = "".join(f"<li>{_inline(t, image_src)}</li>" for t in items)
                out.append(f"<{tag}>{lis}</{tag}>")
                break
        else:
            if _IMAGE.fullmatch(stripped):
                flush()
                out.append(f"<figure>{_inline(stripped, image_src)}</figure>")
            else:
                para.append(stripped)
            i += 1
    flush()
    return "\n".join(out)


def card_page(md: str, name: str, version: int, image_src: ImageSrc) -> str:
    """A whole HTML document around the rendered card."""
    title = html.escape(f"Model card: {name}, version {version}")
    body = markdown_to_html(md, image_src)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}</title><style>{_STYLE}</style></head>\n"
        f'<body><main class="model-card">\n{body}\n</main></body></html>\n'
    )
