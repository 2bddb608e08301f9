"""Helpers every route uses: body reading with a size limit, API keys, JSON answers."""

from __future__ import annotations

import asyncio
import hmac
import zlib
from typing import Any

from fastapi import Request, Response
from starlette.requests import ClientDisconnect

from service.codecs import encode_json
from service.errors import (
    AdminDisabledError,
    BadRequestError,
    ClientDisconnectedError,
    PayloadTooLargeError,
    RequestTimeoutError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
)

JSON = "application/json"
BINARY = "application/octet-stream"
INFER_TYPES = (JSON, BINARY, "")
# zlib window bits: gzip header, or the zlib stream that "deflate" means in HTTP.
WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def json_response(
    payload: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A pre-serialised orjson answer."""
    return Response(encode_json(payload), status_code, headers=headers, media_type=JSON)


def _presented_key(headers: Headers) -> str | None:
    auth = headers.get("authorization")
    if auth is not None:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token:
            return token.strip()
        return None
    return headers.get("x-api-key")


def _matches(presented: str, keys: list[str]) -> bool:
    given = presented.encode("utf-8")
    ok = False
    for key in keys:  # every key is compared, so timing says nothing about which matched
        ok |= hmac.compare_digest(given, key.encode("utf-8"))
    return ok


def require_api_key(request: Request) -> None:
    """When VERDICT_API_KEYS is set, the request must carry one (Bearer or X-API-Key)."""
    check_api_key(request.app.state.api_keys, request.headers)


def check_api_key(keys: list[str], headers: Headers) -> None:
    """401 unless `keys` is empty or the headers carry one of them."""
    if not keys:
        return
    presented = _presented_key(headers)
    if presented is None or not _matches(presented, keys):
        raise UnauthorizedError("a valid API key is required (Authorization: Bearer <key>)")


def require_metrics_key(request: Request) -> None:
    """GET /metrics needs an API key only when VERDICT_METRICS_REQUIRE_KEY is true."""
    if request.app.state.settings.metrics_require_key:
        require_api_key(request)


def require_admin(request: Request) -> None:
    """The repository extension needs the admin key; without one configured it is off."""
    admin = request.app.state.settings.admin_api_key
    if admin is None or not admin.get_secret_value():
        raise AdminDisabledError("the repository extension is disabled (no admin key is set)")
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not _matches(token.strip(), [admin.get_secret_value()]):
        raise UnauthorizedError("the admin key is required (Authorization: Bearer <admin key>)")


def require_json(headers: Headers) -> None:
    """The body must be JSON (a missing content type is taken as JSON)."""
    ctype = headers.get("content-type")
    if ctype is not None and ctype.split(";", 1)[0].strip().lower() != JSON:
        raise UnsupportedMediaTypeError(f"content type {ctype!r} is not supported; send {JSON}")


def require_infer_type(headers: Headers) -> None:
    """OIP bodies are JSON, or JSON + binary tensors as octet-stream (or no type at all)."""
    ctype = headers.get("content-type")
    if ctype is not None and ctype.split(";", 1)[0].strip().lower() not in INFER_TYPES:
        raise UnsupportedMediaTypeError(
            f"content type {ctype!r} is not supported; send {JSON} or {BINARY}"
        )


class RawHeaders:
    """Request headers straight from the ASGI scope, read like Starlette's (`get` by name).

    The hot path uses this instead of a Starlette `Request`: one dict, no parsing. Names in
    an ASGI scope are lower-case already; a repeated header keeps its first value.
    """

    __slots__ = ("_raw",)

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        headers: dict[bytes, bytes] = {}
        for name, value in raw:
            headers.setdefault(name, value)
        self._raw = headers

    def get(self, name: str, default: str | None = None) -> str | None:
        """The header's value, or `default`."""
        value = self._raw.get(name.lower().encode("latin-1"))
        return default if value is None else value.decode("latin-1")

    def raw(self, name: bytes) -> bytes | None:
        """The header's bytes by lower-case name, or None."""
        return self._raw.get(name)


Headers = RawHeaders | Any  # Starlette's Headers has the same `get`


def body_decoder(headers: Headers, limit: int) -> Any:
    """Check Content-Encoding and Content-Length before any byte of the body is read.

    Returns the zlib inflater a gzip or deflate body needs, or None.
    """
    encoding = headers.get("content-encoding")
    inflate = None
    if encoding is not None:
        enc = encoding.strip().lower()
        if enc in ("gzip", "deflate"):
            inflate = zlib.decompressobj(WBITS[enc])
        elif enc not in ("", "identity"):
            raise UnsupportedMediaTypeError(
                f"content encoding {encoding!r} is not supported; use gzip, deflate or none"
            )
    declared = headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BadRequestError("Content-Length is not an integer") from None
        if size > limit:
            raise PayloadTooLargeError(f"the body is {size} bytes; the limit is {limit}")
    return inflate


class BodyCollector:
    """Adds body chunks up under the size limit, inflating them when the body is compressed."""

    __slots__ = ("chunks", "encoding", "inflate", "limit", "total")

    def __init__(self, headers: Headers, limit: int) -> None:
        self.inflate = body_decoder(headers, limit)
        self.encoding = headers.get("content-encoding") if self.inflate is not None else None
        self.limit = limit
        self.total = 0
        self.chunks: list[bytes] = []

    def add(self, chunk: bytes) -> None:
        """One more chunk; 413 as soon as the (inflated) body is over the limit."""
        limit = self.limit
        if self.inflate is not None and chunk:
            try:
                chunk = self.inflate.decompress(chunk, limit + 1 - self.total)
            except zlib.error:
                raise BadRequestError(f"the body is not valid {self.encoding} data") from None
            if self.inflate.unconsumed_tail:
                raise PayloadTooLargeError(f"the inflated body is over the limit of {limit} bytes")
        self.total += len(chunk)
        if self.total > limit:
            raise PayloadTooLargeError(f"the body is over the limit of {limit} bytes")
        self.chunks.append(chunk)

    def body(self) -> bytes:
        """The whole body, once the last chunk is in."""
        if self.inflate is not None and not self.inflate.eof:
            raise BadRequestError(f"the {self.encoding} body is truncated")
        chunks = self.chunks
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def timeout_error(timeout_s: float) -> RequestTimeoutError:
    """The 408 for a body that took longer than body_timeout_s."""
    return RequestTimeoutError(f"the request body did not arrive within {timeout_s:g} s")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it exceeds `limit` bytes (header or stream).

    gzip and deflate request bodies (as the Triton client can send) are inflated, and the
    inflated size counts against the same limit. A body that does not arrive in full within
    `body_timeout_s` gets 408, so a slow or stalled client cannot hold the request forever.
    (The hot path, `service.hotpath`, reads its bodies the same way under a shared timer.)
    """
    collector = BodyCollector(request.headers, limit)
    timeout_s: float = request.app.state.settings.body_timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                collector.add(chunk)
    except ClientDisconnect:
        raise ClientDisconnectedError("the client closed the connection mid-body") from None
    except TimeoutError:
        raise timeout_error(timeout_s) from None
    return collector.body()
