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


def _presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization")
    if auth is not None:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token:
            return token.strip()
        return None
    return request.headers.get("x-api-key")


def _matches(presented: str, keys: list[str]) -> bool:
    given = presented.encode("utf-8")
    ok = False
    for key in keys:  # every key is compared, so timing says nothing about which matched
        ok |= hmac.compare_digest(given, key.encode("utf-8"))
    return ok


def require_api_key(request: Request) -> None:
    """When VERDICT_API_KEYS is set, the request must carry one (Bearer or X-API-Key)."""
    keys: list[str] = request.app.state.api_keys
    if not keys:
        return
    presented = _presented_key(request)
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


def require_json(request: Request) -> None:
    """The body must be JSON (a missing content type is taken as JSON)."""
    ctype = request.headers.get("content-type")
    if ctype is not None and ctype.split(";", 1)[0].strip().lower() != JSON:
        raise UnsupportedMediaTypeError(f"content type {ctype!r} is not supported; send {JSON}")


def require_infer_type(request: Request) -> None:
    """OIP bodies are JSON, or JSON + binary tensors as octet-stream (or no type at all)."""
    ctype = request.headers.get("content-type")
    if ctype is not None and ctype.split(";", 1)[0].strip().lower() not in INFER_TYPES:
        raise UnsupportedMediaTypeError(
            f"content type {ctype!r} is not supported; send {JSON} or {BINARY}"
        )


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it exceeds `limit` bytes (header or stream).

    gzip and deflate request bodies (as the Triton client can send) are inflated, and the
    inflated size counts against the same limit. A body that does not arrive in full within
    `body_timeout_s` gets 408, so a slow or stalled client cannot hold the request forever.
    """
    encoding = request.headers.get("content-encoding")
    inflate = None
    if encoding is not None:
        enc = encoding.strip().lower()
        if enc in ("gzip", "deflate"):
            inflate = zlib.decompressobj(WBITS[enc])
        elif enc not in ("", "identity"):
            raise UnsupportedMediaTypeError(
                f"content encoding {encoding!r} is not supported; use gzip, deflate or none"
            )
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BadRequestError("Content-Length is not an integer") from None
        if size > limit:
            raise PayloadTooLargeError(f"the body is {size} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    total = 0
    timeout_s: float = request.app.state.settings.body_timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                if inflate is not None and chunk:
                    try:
                        chunk = inflate.decompress(chunk, limit + 1 - total)
                    except zlib.error:
                        raise BadRequestError(f"the body is not valid {encoding} data") from None
                    if inflate.unconsumed_tail:
                        raise PayloadTooLargeError(
                            f"the inflated body is over the limit of {limit} bytes"
                        )
                total += len(chunk)
                if total > limit:
                    raise PayloadTooLargeError(f"the body is over the limit of {limit} bytes")
                chunks.append(chunk)
    except ClientDisconnect:
        raise ClientDisconnectedError("the client closed the connection mid-body") from None
    except TimeoutError:
        raise RequestTimeoutError(
            f"the request body did not arrive within {timeout_s:g} s"
        ) from None
    if inflate is not None and not inflate.eof:
        raise BadRequestError(f"the {encoding} body is truncated")
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
