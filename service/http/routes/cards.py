"""GET /models/{name}/card: the model card as an HTML page, and the PNGs it shows."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import FileResponse, HTMLResponse

from service.errors import NotFoundError
from service.http.card_page import (
    CONTENT_SECURITY_POLICY,
    asset_path,
    card_page,
    find_version,
    parse_version,
    read_card,
)

router = APIRouter(tags=["model cards"])

_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def _repository(request: Request) -> Path:
    # The app keeps its Settings on app.state.settings (model_repository field).
    return Path(request.app.state.settings.model_repository)


@router.get(
    "/models/{name}/card",
    response_class=HTMLResponse,
    summary="The model card of a model version as HTML (latest version by default)",
    responses={404: {"description": "unknown model, version or card"}},
)
def model_card(request: Request, name: str, version: str | None = None) -> Response:
    """Render `<repository>/<name>/<version>/MODEL_CARD.md` as a self-contained HTML page."""
    try:
        folder, v = find_version(_repository(request), name, parse_version(version))
        md = read_card(folder, name, v)
    except OSError:  # the folder went away or cannot be read: no card, not a server error
        raise NotFoundError(
            f"no readable model card for model {name!r}", "card_not_found"
        ) from None

    def image_src(src: str) -> str | None:
        # Only PNGs that lie in this version's folder; they are served by the route below,
        # relative to this page so a proxy's path prefix keeps working.
        try:
            asset_path(folder, src)
        except NotFoundError:
            return None
        return f"card/assets/{quote(src)}?version={v}"

    return HTMLResponse(card_page(md, name, v, image_src), headers=_HEADERS)


@router.get(
    "/models/{name}/card/assets/{file}",
    response_class=FileResponse,
    summary="A PNG shown by the model card",
    responses={404: {"description": "unknown model, version or file"}},
)
def model_card_asset(
    request: Request, name: str, file: str, version: str | None = None
) -> Response:
    """A PNG from the version folder (no other file types, no sub-folders)."""
    try:
        folder, _ = find_version(_repository(request), name, parse_version(version))
        path = asset_path(folder, file)
    except OSError:
        raise NotFoundError(
            f"no readable card asset {file!r} for model {name!r}", "asset_not_found"
        ) from None
    return FileResponse(path, media_type="image/png", headers=_HEADERS)


def include_card_routes(app: FastAPI) -> None:
    """Wire the card pages into an app whose `app.state.settings.model_repository` is set."""
    app.include_router(router)
