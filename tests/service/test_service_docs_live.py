"""/docs as a user meets it: every OpenAPI example runs against a live server over the bundled
models, and Swagger UI renders with no network beyond 127.0.0.1."""

from __future__ import annotations

import itertools
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, TEST_KEY, LiveServer

API_KEY = "docs-api-key"
ADMIN_KEY = "docs-admin-key"
# Shadow serving and promotion need two versions of a model (docs/lifecycle.md).
ONE_VERSION_IS_NOT_ENOUGH = ("/shadow", "/promote", "/rollback")
ONE_VERSION_ANSWERS = {"version_not_found", "no_shadow", "nothing_to_roll_back"}


@pytest.fixture(scope="module")
def bundled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("docs-live")
    repo = tmp / "models"
    shutil.copytree(ROOT / "models", repo)  # load and unload below must not touch models/
    server = LiveServer(
        {
            "VERDICT_MODEL_REPOSITORY": str(repo),
            "VERDICT_FEEDBACK_DB": str(tmp / "var" / "feedback.sqlite3"),
            "VERDICT_PREDICTION_ID_KEY": TEST_KEY,
            "VERDICT_API_KEYS": API_KEY,
            "VERDICT_ADMIN_API_KEY": ADMIN_KEY,
        }
    )
    server.wait_ready()
    yield server
    server.stop()


def _requests(spec: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(method, path, JSON body or None) for every example: path parameters filled from their
    examples, a body example paired with the path parameter example of the same name."""
    out = []
    for template, item in spec["paths"].items():
        for method, op in item.items():
            params = [p for p in op.get("parameters", []) if p.get("in") == "path"]
            if any("examples" not in p for p in params):
                continue  # a parameter with nothing to show (a card asset's file name)
            content = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            bodies = content.get("examples") or (
                {"example": {"value": content["example"]}} if "example" in content else {}
            )
            choices = [list(p["examples"].items()) for p in params]
            for combo in itertools.product(*choices) if params else [()]:
                path = template
                model = None
                for param, (key, example) in zip(params, combo, strict=True):
                    path = path.replace("{" + param["name"] + "}", str(example["value"]))
                    if param["name"] in ("model", "name"):
                        model = key
                if not bodies:
                    out.append((method, path, None))
                    continue
                for key, example in bodies.items():
                    if model is not None and key != model:
                        continue  # a body for another model than the path names
                    out.append((method, path, example["value"]))
    return out


def test_every_openapi_example_is_answered_2xx(bundled: LiveServer) -> None:
    spec = httpx.get(f"{bundled.url}/openapi.json").json()
    requests = _requests(spec)
    sent = {(method, path) for method, path, _ in requests}
    for model in ("breast-cancer", "digits"):  # the bundled models, in every model route
        assert ("post", "/predict") in sent
        assert ("post", f"/v2/models/{model}/infer") in sent
        assert ("post", f"/v2/models/{model}/versions/1/infer") in sent
        assert ("get", f"/v2/models/{model}/config") in sent
        assert ("get", f"/models/{model}/quality") in sent
    # Unload last, then load back: the others need the models.
    requests.sort(key=lambda r: (r[1].endswith("/unload"), r[1].endswith("/load")))
    with httpx.Client(base_url=bundled.url, timeout=30) as http:
        for method, path, body in requests:
            key = ADMIN_KEY if path.startswith("/v2/repository") else API_KEY
            r = http.request(method, path, json=body, headers={"Authorization": f"Bearer {key}"})
            if path.startswith("/v2/repository") and path.endswith(ONE_VERSION_IS_NOT_ENOUGH):
                # The bundled models serve one version each: no second version to shadow,
                # promote or roll back to; the examples get their documented refusal.
                assert r.json()["code"] in ONE_VERSION_ANSWERS, (method, path, r.text[:500])
                continue
            assert 200 <= r.status_code < 300, (method, path, body, r.text[:500])
        for model in ("breast-cancer", "digits"):
            r = http.post(
                f"/v2/repository/models/{model}/load",
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            )
            assert r.status_code == 200


def test_docs_render_without_any_network_but_the_server(
    bundled: LiveServer, tmp_path: Path
) -> None:
    page = httpx.get(f"{bundled.url}/docs").text
    assert "cdn" not in page.lower() and "https://" not in page
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert httpx.get(f"{bundled.url}/docs/assets/{asset}").status_code == 200
    proc = subprocess.run(
        [
            shutil.which("chromium") or "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            # Every host but 127.0.0.1 fails to resolve: a CDN asset could not load.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=15000",
            "--dump-dom",
            f"{bundled.url}/docs",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    # Swagger UI ran (its script built the operations from /openapi.json).
    assert 'class="swagger-ui' in dom, dom[:2000]
    assert "opblock" in dom and "/predict" in dom and "/v2/models/{model}/infer" in dom
