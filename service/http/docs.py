"""The API's documentation: /docs (Swagger UI) and /redoc with their assets served by verdict
itself (no CDN: they work on a machine without internet), and OpenAPI examples built from
the models actually served, so that every example on /docs runs as it is."""

from __future__ import annotations

import copy
import logging
from importlib.resources import files
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from service.models.repository import Repository
from service.models.version import ModelVersion

log = logging.getLogger(__name__)

ASSETS_URL = "/docs/assets"
# Swagger UI's and ReDoc's files as the fastapi-offline package ships them.
ASSETS = files("fastapi_offline") / "static"
SAMPLE_FILE = "reference_sample.json"
MODEL_PARAMS = ("model", "name")


def install_docs(app: FastAPI) -> None:
    """The documentation pages and their assets (the app is built with docs_url=None)."""
    app.mount(ASSETS_URL, StaticFiles(directory=str(ASSETS)), name="docs-assets")
    title = f"{app.title} API"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=title,
            oauth2_redirect_url="/docs/oauth2-redirect",
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title=title,
            redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )


def with_served_examples(spec: dict[str, Any], repository: Repository) -> dict[str, Any]:
    """A copy of the OpenAPI document whose examples are requests for the models served now
    (one per model, its latest version): path parameters name a served model, and bodies
    carry a row from the model's reference sample (or zeros of its input's shape). With
    nothing served yet, the document is returned as it is."""
    latest = [versions[max(versions)] for versions in repository.served().values() if versions]
    if not latest:
        return spec
    spec = copy.deepcopy(spec)
    paths = spec.get("paths", {})
    predict = {mv.name: _predict_example(mv) for mv in latest}
    infer = {mv.name: _infer_example(mv) for mv in latest}
    _set_body_examples(paths.get("/predict", {}).get("post"), predict)
    for path in ("/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}/infer"):
        _set_body_examples(paths.get(path, {}).get("post"), infer)
    names = {mv.name: {"summary": f"model {mv.name}", "value": mv.name} for mv in latest}
    versions = {
        mv.name: {"summary": f"{mv.name}'s latest", "value": str(mv.version)} for mv in latest
    }
    for path, item in paths.items():
        for operation in item.values():
            if isinstance(operation, dict):
                _set_param_examples(path, operation, names, versions)
    return spec


def _example_row(mv: ModelVersion) -> list[Any]:
    """One input row: the first of the version's reference sample, else zeros."""
    try:
        sample = orjson.loads((mv.path / SAMPLE_FILE).read_bytes())
        row = sample["inputs"][0]
        if isinstance(row, list):
            return row
    except (OSError, orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        pass
    zeros: Any = 0.0
    for size in reversed(mv.spec.dims):
        zeros = [zeros] * size
    return list(zeros)


def _flat(row: Any) -> list[float]:
    if isinstance(row, list):
        return [v for item in row for v in _flat(item)]
    return [row]


def _predict_example(mv: ModelVersion) -> dict[str, Any]:
    row = _example_row(mv)
    instance: Any = row
    names = mv.spec.feature_names
    if names is not None:  # tabular: show the rows keyed by feature name
        instance = dict(zip(names, _flat(row), strict=False))
    return {
        "summary": f"{mv.name} v{mv.version}",
        "value": {"model": mv.name, "instances": [instance]},
    }


def _infer_example(mv: ModelVersion) -> dict[str, Any]:
    tensor = {
        "name": mv.spec.name,
        "shape": [1, *mv.spec.dims],
        "datatype": "FP32",
        "data": _flat(_example_row(mv)),
    }
    body = {"id": "42", "inputs": [tensor], "outputs": [{"name": mv.output_name}]}
    return {"summary": f"{mv.name} v{mv.version}", "value": body}


def _set_body_examples(operation: dict[str, Any] | None, examples: dict[str, Any]) -> None:
    if not operation:
        return
    content = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if content is not None:
        content.pop("example", None)
        content["examples"] = examples


def _set_param_examples(
    path: str, operation: dict[str, Any], names: dict[str, Any], versions: dict[str, Any]
) -> None:
    params = operation.setdefault("parameters", [])
    present = {p.get("name") for p in params if p.get("in") == "path"}
    for name in (*MODEL_PARAMS, "version"):
        if f"{{{name}}}" in path and name not in present:  # a route the edge answers
            params.append(
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            )
    for param in params:
        if param.get("in") != "path":
            continue
        if param.get("name") in MODEL_PARAMS:
            param["examples"] = names
        elif param.get("name") == "version":
            param["examples"] = versions
