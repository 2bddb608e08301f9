"""What the HTTP edge reads of a request and writes of an answer: headers, request ids, the
body under its size limit, and the answer itself."""

from __future__ import annotations

import itertools
import os
import random
import re
import zlib
from dataclasses import dataclass, field

from service.errors import BadRequestError, PayloadTooLargeError, UnsupportedMediaTypeError

Headers = list[tuple[bytes, bytes]]

JSON = b"application/json"
BINARY = b"application/octet-stream"
REQUEST_ID_HEADER = b"x-request-id"
# A client's id is kept only when it is short and plain, so it cannot forge log lines.
VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
# zlib window bits: gzip header, or the zlib stream that "deflate" means in HTTP.
WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}

_PREFIX = os.urandom(4).hex()
_COUNTER = itertools.count(random.SystemRandom().getrandbits(31))


def _new_prefix() -> None:
    global _PREFIX
    _PREFIX = os.urandom(4).hex()


os.register_at_fork(after_in_child=_new_prefix)  # a forked child must not repeat the parent's


def request_id(sent: bytes | None) -> str:
    """The client's X-Request-ID when it is short and plain, else a new one: 16 hex
    characters, a random prefix per process and a counter (no system call per request)."""
    if sent is not None and VALID_REQUEST_ID.match(sent):
        return sent.decode("ascii")
    return f"{_PREFIX}{next(_COUNTER) & 0xFFFFFFFF:08x}"


class RequestHeaders:
    """Request headers by lower-case name; a repeated header keeps its first value."""

    __slots__ = ("_first", "raw")

    def __init__(self, raw: Headers) -> None:
        self.raw = raw  # as received, names lower-case (for the framework's scope)
        self._first = dict(reversed(raw))  # a repeated header keeps its first value

    def get(self, name: bytes) -> bytes | None:
        """The first value of a header, by lower-case name, or None."""
        return self._first.get(name)

    def text(self, name: bytes) -> str | None:
        """The same, decoded as latin-1."""
        value = self._first.get(name)
        return None if value is None else value.decode("latin-1")


def media_type(headers: RequestHeaders) -> str | None:
    """The body's media type without parameters, lower-case; None when not given."""
    ctype = headers.text(b"content-type")
    return None if ctype is None else ctype.split(";", 1)[0].strip().lower()


def presented_key(headers: RequestHeaders, bearer_only: bool) -> str | None:
    """The key a caller presents: `Authorization: Bearer <key>`, else `X-API-Key`."""
    auth = headers.text(b"authorization")
    if auth is not None:
        scheme, _, token = auth.partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None if bearer_only else headers.text(b"x-api-key")


class Body:
    """A request body added up chunk by chunk under the size limit, inflated when it is
    gzip or deflate encoded (the inflated size counts)."""

    __slots__ = ("chunks", "encoding", "inflate", "limit", "total")

    def __init__(self, headers: RequestHeaders, limit: int) -> None:
        """Checks Content-Encoding and Content-Length before any byte of the body is read."""
        self.limit = limit
        self.total = 0
        self.chunks: list[bytes] = []
        self.encoding: str | None = None
        self.inflate = None
        encoding = headers.text(b"content-encoding")
        if encoding is not None:
            enc = encoding.strip().lower()
            if enc in WBITS:
                self.encoding = enc
                self.inflate = zlib.decompressobj(WBITS[enc])
            elif enc not in ("", "identity"):
                raise UnsupportedMediaTypeError(
                    f"content encoding {encoding!r} is not supported; use gzip, deflate or none"
                )
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise BadRequestError("Content-Length is not an integer") from None
            if size > limit:
                raise PayloadTooLargeError(f"the body is {size} bytes; the limit is {limit}")

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

    def whole(self) -> bytes:
        """The whole body, once the last chunk is in."""
        if self.inflate is not None and not self.inflate.eof:
            raise BadRequestError(f"the {self.encoding} body is truncated")
        chunks = self.chunks
        if len(chunks) == 1:
            return chunks[0]
        return b"".join(chunks)


@dataclass(slots=True)
class Answer:
    """What the edge writes back: status, body, its content type and any other headers
    (names lower-case); `close` ends the connection after it."""

    status: int
    body: bytes
    content_type: bytes = JSON
    headers: Headers = field(default_factory=list)
    close: bool = False
