"""Domain errors: each carries its HTTP status and a stable code; one handler renders them."""

from __future__ import annotations

import re

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
    """Base of every error the service answers with `{"error": message, "code": code}`."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequestError(VerdictError):
    """The request is malformed (JSON, protocol fields)."""

    status_code = 400
    code = "bad_request"


class InvalidInputError(VerdictError):
    """The request is well formed but its values do not fit the model."""

    status_code = 422
    code = "invalid_input"


class UnsupportedMediaTypeError(VerdictError):
    """The body is not in a content type the endpoint reads."""

    status_code = 415
    code = "unsupported_media_type"


class PayloadTooLargeError(VerdictError):
    """The body is larger than max_body_bytes."""

    status_code = 413
    code = "payload_too_large"


class ModelNotFoundError(VerdictError):
    """No model of that name is served."""

    status_code = 404
    code = "model_not_found"


class VersionNotFoundError(VerdictError):
    """The model is served, but not that version."""

    status_code = 404
    code = "version_not_found"


class ModelNotReadyError(VerdictError):
    """The model is known but has no version that takes traffic yet."""

    status_code = 503
    code = "model_not_ready"

    def __init__(self, message: str) -> None:
        super().__init__(message, {"Retry-After": "1"})


class ModelLoadError(VerdictError):
    """A model version was refused at load (manifest, graph or checksum mismatch)."""

    status_code = 400
    code = "model_load_failed"


class OverloadedError(VerdictError):
    """The queue is full; the client should retry later."""

    status_code = 503
    code = "overloaded"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message, {"Retry-After": str(retry_after_s)})


class UnauthorizedError(VerdictError):
    """A key is required and was missing or wrong."""

    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str = "a valid API key is required") -> None:
        super().__init__(message, {"WWW-Authenticate": 'Bearer realm="verdict"'})


class AdminDisabledError(VerdictError):
    """The repository extension is off because no admin key is set."""

    status_code = 403
    code = "admin_disabled"


class InferenceError(VerdictError):
    """ONNX Runtime failed on input that passed validation (a server fault)."""

    status_code = 500
    code = "inference_failed"


class ShuttingDownError(VerdictError):
    """The model version is being retired and takes no new requests."""

    status_code = 503
    code = "unavailable"

    def __init__(self, message: str) -> None:
        super().__init__(message, {"Retry-After": "1"})


class RequestTimeoutError(VerdictError):
    """The body did not arrive in full within body_timeout_s."""

    status_code = 408
    code = "request_timeout"

    def __init__(self, message: str) -> None:
        super().__init__(message, {"Connection": "close"})


class ClientDisconnectedError(VerdictError):
    """The client went away before its body arrived in full (nobody reads the answer)."""

    status_code = 400
    code = "client_disconnected"
