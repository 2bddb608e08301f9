"""The service's one error hierarchy: each class is one meaning, with a status and a stable code.

The data plane and everything under it raise these; each transport maps them to its own
codes (HTTP status here; gRPC status codes in a gRPC transport). Messages never show a
server path (`scrub_paths`).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

# An absolute filesystem path of two or more parts (a file, a folder, a source file in a
# library's message); error answers never show where things live on the server.
_PATH = re.compile(
    r"(?<![\w.~-])/(?!v2/|predict\b|feedback\b|metrics\b)(?:[^/\s'\"]+/)+[^/\s'\",;)]*"
)


def scrub_paths(message: str) -> str:
    """The message with absolute filesystem paths replaced by `<path>`."""
    if "/" not in message:
        return message
    return _PATH.sub("<path>", message)


def error_body(message: str, code: str) -> bytes:
    """The one error shape, `{"error": message, "code": code}`, never showing a server path."""
    return orjson.dumps({"error": scrub_paths(message), "code": code})


class VerdictError(Exception):
    """Base of every error the service answers with `{"error": message, "code": code}`.

    `status_code` is the HTTP status; `retry_after_s`, when set, tells the client when to
    try again (HTTP `Retry-After`, a gRPC retry hint).
    """

    status_code = 500
    code = "internal_error"
    retry_after_s: int | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _Retry(VerdictError):
    """An error the client may retry after `retry_after_s` seconds."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


# -- the request -----------------------------------------------------------------------------


class BadRequestError(VerdictError):
    """The request is malformed: JSON, protocol fields, tensor names, shapes or datatypes."""

    status_code = 400
    code = "bad_request"


class InvalidJSONError(BadRequestError):
    """A feedback body that is not JSON (the code feedback clients have always seen)."""

    code = "invalid_json"


class InvalidInputError(VerdictError):
    """The request is well formed but its values do not fit the model (rows, non-finite)."""

    status_code = 422
    code = "invalid_input"


class InvalidFeedbackError(VerdictError):
    """A feedback body that is not a list of items, or holds too many; a bad query value."""

    status_code = 422

    def __init__(self, message: str, code: str = "invalid_feedback") -> None:
        super().__init__(message)
        self.code = code


class UnsupportedMediaTypeError(VerdictError):
    """The body is not in a content type (or encoding) the endpoint reads."""

    status_code = 415
    code = "unsupported_media_type"


class PayloadTooLargeError(VerdictError):
    """The body is larger than max_body_bytes."""

    status_code = 413
    code = "payload_too_large"


class RequestTimeoutError(VerdictError):
    """The request (headers and body) did not arrive in full within read_timeout_s."""

    status_code = 408
    code = "request_timeout"


class HeadersTooLargeError(VerdictError):
    """The request line and headers are larger than the server reads."""

    status_code = 431
    code = "headers_too_large"


class ClientDisconnectedError(VerdictError):
    """The client went away before its body arrived in full (nobody reads the answer)."""

    status_code = 400
    code = "client_disconnected"


# -- who asks --------------------------------------------------------------------------------


class UnauthorizedError(VerdictError):
    """A key is required and was missing or wrong."""

    status_code = 401
    code = "unauthorized"


class AdminDisabledError(VerdictError):
    """The repository extension is off because no admin key is set."""

    status_code = 403
    code = "admin_disabled"


# -- what is asked for -----------------------------------------------------------------------


class ModelNotFoundError(VerdictError):
    """No model of that name is served (nor labelled, nor on disk, as the lookup says)."""

    status_code = 404
    code = "model_not_found"


class VersionNotFoundError(VerdictError):
    """The model is known, but not that version."""

    status_code = 404
    code = "version_not_found"


class NotFoundError(VerdictError):
    """Something other than a model or a version does not exist (a card, a card asset)."""

    status_code = 404

    def __init__(self, message: str, code: str = "not_found") -> None:
        super().__init__(message)
        self.code = code


class ModelLoadError(VerdictError):
    """A model version was refused at load (manifest, graph or checksum mismatch).

    `check` names the check that refused it (a bounded label: manifest, files, parity, graph,
    warmup, conformance); `measured` carries what a conformance check measured, if any.
    """

    status_code = 400
    code = "model_load_failed"

    def __init__(self, message: str, check: str = "manifest", measured: Any = None) -> None:
        super().__init__(message)
        self.check = check
        self.measured = measured


class ConflictError(VerdictError):
    """The request is understood but the state it would act on does not allow it (a promotion
    the labels do not support, a rollback with nothing to roll back to)."""

    status_code = 409

    def __init__(self, message: str, code: str = "conflict") -> None:
        super().__init__(message)
        self.code = code


# -- the server's state ----------------------------------------------------------------------


class ModelNotReadyError(_Retry):
    """The model is known but has no version that takes traffic yet."""

    status_code = 503
    code = "model_not_ready"


class OverloadedError(_Retry):
    """Too much is waiting (a model's queue, or requests in flight); retry later."""

    status_code = 503
    code = "overloaded"


class ShuttingDownError(_Retry):
    """The model version is being retired and takes no new requests."""

    status_code = 503
    code = "unavailable"


class StoreUnavailableError(_Retry):
    """The feedback store cannot be read or written now (locked, disk full, read-only)."""

    status_code = 503
    code = "store_unavailable"

    def __init__(self, message: str, retry_after_s: int = 5) -> None:
        super().__init__(message, retry_after_s)


class InferenceError(VerdictError):
    """ONNX Runtime failed on input that passed validation (a server fault)."""

    status_code = 500
    code = "inference_failed"
