"""The routes the framework (FastAPI) answers behind the edge: thin adapters to the data plane.

The edge (`service.http.edge`) has already admitted the request, checked its key and content
type, and read its body; these only map HTTP to the data plane and back.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request, Response

from service.dataplane import DataPlane

JSON = "application/json"


def json_response(payload: Any, status_code: int = 200) -> Response:
    """A pre-serialised orjson answer."""
    return Response(orjson.dumps(payload), status_code, media_type=JSON)


def dataplane(request: Request) -> DataPlane:
    """The data plane of the app serving `request`."""
    plane: DataPlane = request.app.state.dataplane
    return plane
