"""CORS for browser clients, when origins are configured: the answer headers of an allowed
origin, and the answers to preflight requests."""

from __future__ import annotations

from service.errors import error_body
from service.http.messages import Answer, Headers, RequestHeaders

MAX_AGE = b"600"  # seconds a browser may keep a preflight's answer
METHODS = (b"GET", b"POST")


class Cors:
    """The CORS policy of a list of origins (`*`: any)."""

    def __init__(self, origins: list[str]) -> None:
        self.origins = origins
        self.any = "*" in origins

    def _allowed(self, headers: RequestHeaders) -> bytes | None:
        origin = headers.get(b"origin")
        if origin is None:
            return None
        if self.any or origin.decode("latin-1") in self.origins:
            return origin
        return None

    def headers(self, request: RequestHeaders) -> Headers:
        """What an answer to a request from an allowed origin adds."""
        origin = self._allowed(request)
        if origin is None:
            return []
        if self.any:
            return [(b"access-control-allow-origin", b"*")]
        return [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]

    def preflight(self, request: RequestHeaders) -> Answer | None:
        """The answer to a preflight (an OPTIONS with Origin and the method it asks), or None
        when `request` is no preflight."""
        wanted = request.get(b"access-control-request-method")
        if wanted is None or request.get(b"origin") is None:
            return None
        if self._allowed(request) is None or wanted not in METHODS:
            return Answer(400, error_body("CORS request not allowed", "cors_refused"))
        asked = request.get(b"access-control-request-headers") or b"*"
        headers = [
            (b"access-control-allow-methods", b", ".join(METHODS)),
            (b"access-control-allow-headers", asked),
            (b"access-control-max-age", MAX_AGE),
        ]
        return Answer(200, b"{}", headers=headers)
