"""GET /models/{name}/card and its assets through a real FastAPI app; the safe renderer."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.http.card_page import markdown_to_html
from service.http.routes.cards import router

CARD = """# Model card: demo, version {v}

Intro with **bold**, *em* and `code <b>`.

## Quality

| metric | mean ± std |
|---|---|
| accuracy | 0.9{v}00 ± 0.0100 |
| pipe \\| cell | `a\\|b` |

- first item
- second item
  continues here

1. one
2. two

![Loss](loss_curve.png)

![Missing](nothing.png) and ![Outside](../secret.png)

```yaml
name: demo <script>
```

<script>alert(1)</script> [ok](https://example.org/x) [bad](javascript:alert(1))
"""


def _png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)
    raw = b"".join(b"\x00" + b"\xff\x00\x00" * 2 for _ in range(2))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _version(root: Path, name: str, v: int, card: bool = True) -> Path:
    folder = root / name / str(v)
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"name": name, "version": v}))
    if card:
        (folder / "MODEL_CARD.md").write_text(CARD.format(v=v))
        (folder / "loss_curve.png").write_bytes(_png())
    (folder / "notes.txt").write_text("not an asset")
    return folder


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    _version(root, "demo", 1)
    _version(root, "demo", 2)
    (root / "demo" / "3-broken").mkdir()  # not a version
    _version(root, "nocard", 1, card=False)
    (tmp_path / "secret.png").write_bytes(_png())
    return root


@pytest.fixture
def client(repo: Path, tmp_path: Path) -> Iterator[TestClient]:
    from service.http.app import create_app
    from tests.conftest import make_settings

    # The versions here are card folders only: the service refuses to load them, and still
    # shows their cards (a card is read from disk, served version or not).
    app = create_app(make_settings(repo, tmp_path))
    with TestClient(app) as test_client:
        # Let the (refused) loads finish, so none logs after the test is over.
        deadline = time.monotonic() + 20
        while not app.state.repository.started and time.monotonic() < deadline:
            time.sleep(0.01)
        yield test_client


def test_card_page_for_latest_and_named_versions(client: TestClient) -> None:
    r = client.get("/models/demo/card")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["content-security-policy"]
    page = r.text
    assert page.startswith("<!DOCTYPE html>")
    assert "<title>Model card: demo, version 2</title>" in page
    assert '<h1 id="model-card-demo-version-2">Model card: demo, version 2</h1>' in page
    assert "<td>0.9200 ± 0.0100</td>" in page
    assert "<td>pipe | cell</td><td><code>a|b</code></td>" in page
    assert "<li>second item continues here</li>" in page
    assert "<ol><li>one</li><li>two</li></ol>" in page
    assert '<img src="card/assets/loss_curve.png?version=2" alt="Loss">' in page
    assert "<strong>bold</strong>" in page and "<em>em</em>" in page

    r1 = client.get("/models/demo/card", params={"version": "1"})
    assert r1.status_code == 200
    assert "<td>0.9100 ± 0.0100</td>" in r1.text
    assert "card/assets/loss_curve.png?version=1" in r1.text


def test_card_page_escapes_everything(client: TestClient) -> None:
    page = client.get("/models/demo/card").text
    body = page.split("<body>", 1)[1]
    assert "<script" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "<code>code &lt;b&gt;</code>" in body
    assert "name: demo &lt;script&gt;" in body
    assert "javascript:" not in body
    assert '<a href="https://example.org/x" rel="noopener noreferrer">ok</a>' in body
    # Images only from files that exist in the version folder itself.
    assert "nothing.png" not in body and "secret.png" not in body
    assert "Missing and Outside" in body


@pytest.mark.parametrize(
    ("path", "params", "status", "code"),
    [
        ("/models/unknown/card", {}, 404, "model_not_found"),
        ("/models/Demo/card", {}, 404, "model_not_found"),
        ("/models/..%2F..%2Fetc/card", {}, 404, None),
        ("/models/demo/card", {"version": "9"}, 404, "version_not_found"),
        ("/models/demo/card", {"version": "3-broken"}, 400, "bad_request"),
        ("/models/demo/card", {"version": "0"}, 400, "bad_request"),
        ("/models/demo/card", {"version": "-1"}, 400, "bad_request"),
        ("/models/nocard/card", {}, 404, "card_not_found"),
        ("/models/unknown/card/assets/loss_curve.png", {}, 404, "model_not_found"),
        ("/models/demo/card/assets/notes.txt", {}, 404, "asset_not_found"),
        ("/models/demo/card/assets/manifest.json", {}, 404, "asset_not_found"),
        ("/models/demo/card/assets/nothing.png", {}, 404, "asset_not_found"),
        ("/models/demo/card/assets/..%2Fsecret.png", {}, 404, None),
        ("/models/demo/card/assets/.hidden.png", {}, 404, "asset_not_found"),
        ("/models/demo/card/assets/loss_curve.png", {"version": "7"}, 404, "version_not_found"),
    ],
)
def test_errors_have_the_one_shape(
    client: TestClient, path: str, params: dict[str, str], status: int, code: str | None
) -> None:
    r = client.get(path, params=params)
    assert r.status_code == status
    if code is not None:
        body = r.json()
        assert set(body) == {"error", "code"}
        assert body["code"] == code


def test_assets_serve_pngs_of_the_version(client: TestClient, repo: Path) -> None:
    r = client.get("/models/demo/card/assets/loss_curve.png", params={"version": "1"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    assert r.content == (repo / "demo" / "1" / "loss_curve.png").read_bytes()
    assert client.get("/models/demo/card/assets/loss_curve.png").status_code == 200


def test_symlinked_png_is_not_served(client: TestClient, repo: Path, tmp_path: Path) -> None:
    os.symlink(tmp_path / "secret.png", repo / "demo" / "2" / "leak.png")
    r = client.get("/models/demo/card/assets/leak.png")
    assert r.status_code == 404
    assert r.json()["code"] == "asset_not_found"
    (repo / "demo" / "2" / "MODEL_CARD.md").write_text("![x](leak.png)\n")
    assert "leak.png" not in client.get("/models/demo/card").text


def test_renderer_handles_odd_input() -> None:
    html = markdown_to_html("| a |\n|---|\n| 1 | 2 |\n\n```\nunclosed", lambda s: None)
    assert "<td>1</td>" in html and "2" not in html.split("</table>")[0].split("<tbody>")[1]
    assert "<pre><code>unclosed</code></pre>" in html
    assert markdown_to_html("\x00<b>\x00", lambda s: None) == "<p>&lt;b&gt;</p>"
    assert markdown_to_html("", lambda s: None) == ""


def test_routes_are_in_the_openapi_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/models/{name}/card", "/models/{name}/card/assets/{file}"} <= set(paths)
    assert [getattr(r, "path", None) for r in router.routes] == [
        "/models/{name}/card",
        "/models/{name}/card/assets/{file}",
    ]


def test_card_routes_import_neither_torch_nor_training() -> None:
    code = (
        "import sys, service.http.app; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'training', 'onnx')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
