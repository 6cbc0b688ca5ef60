"""The bridge's error tree, and the one place that renders it on the wire.

Errors carry their policy as data: the HTTP status, whether a retry may help
(``retriable``, used before the first byte reached the client), and a
``Retry-After`` hint. ``render`` turns any of them into Ollama's native body
``{"error": "..."}`` or OpenAI's ``{"error": {"message", "type", "param",
"code"}}``, with the ``type`` Ollama's ``openai.NewError`` picks for the status.
"""

from __future__ import annotations

import math
from enum import Enum

import orjson


class Api(Enum):
    """Which error shape a route speaks."""

    NATIVE = "native"
    OPENAI = "openai"


class BridgeError(Exception):
    """Base of every error the bridge answers with."""

    status: int = 500
    retriable: bool = False

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        #: Extra response headers (a 429's ``x-ratelimit-*``).
        self.headers = headers


class BadRequest(BridgeError):
    status = 400


class Internal(BridgeError):
    """A bug in the bridge: 500 in the API's shape, with the id it was logged under."""

    status = 500


class Unauthorized(BridgeError):
    status = 401


class Forbidden(BridgeError):
    status = 403


class ModelNotFound(BridgeError):
    status = 404


class Conflict(BridgeError):
    """The operation contradicts the bridge's state (e.g. unloading a pinned model)."""

    status = 409


class BodyTooLarge(BridgeError):
    status = 413


class RateLimited(BridgeError):
    """Over one of a key's limits: 429 with Retry-After and ``x-ratelimit-*``."""

    status = 429


class ClientGone(BridgeError):
    """The client went away; nobody reads the answer (Ollama's 499)."""

    status = 499


class Overloaded(BridgeError):
    """Over the high-water mark: 503 with Retry-After."""

    status = 503


class Unavailable(BridgeError):
    """No daemon can take the request now (all down, or shutting down)."""

    status = 503


class Replaced(Unavailable):
    """The daemon a request waited for went away: place the request again."""

    retriable = True


class Moved(Replaced):
    """A new copy of the model is ready: the request, still queued, is placed again so
    that the queue spreads over the copies (not a failure: it costs no placement)."""


class UpstreamError(BridgeError):
    """A daemon failed (connection, protocol, truncated stream)."""

    status = 502


class UpstreamUnreachable(UpstreamError):
    """Nothing was sent or nothing came back: safe to retry."""

    retriable = True


class UpstreamTimeout(UpstreamError):
    status = 504


class LoadFailed(UpstreamError):
    """A load the bridge started did not succeed."""


class UpstreamStatus(UpstreamError):
    """The daemon answered an error status; its body is passed through."""

    def __init__(self, status: int, body: bytes, content_type: str) -> None:
        super().__init__(_message_of(body) or f"upstream answered {status}")
        self.status = status
        self.body = body
        self.content_type = content_type
        self.retriable = status in (500, 502, 503, 504)


_OPENAI_TYPES = {400: "invalid_request_error", 404: "not_found_error"}
JSON_TYPE = b"application/json; charset=utf-8"


def native_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


def openai_body(status: int, message: str) -> bytes:
    etype = _OPENAI_TYPES.get(status, "api_error")
    return orjson.dumps({"error": {"message": message, "type": etype, "param": None, "code": None}})


def render(err: BridgeError, api: Api) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """``(status, headers, body)`` of ``err`` in ``api``'s shape."""
    status = err.status
    if isinstance(err, UpstreamStatus) and api is Api.NATIVE:
        # Already in Ollama's shape (the daemon wrote it); pass it through.
        body = err.body or native_body(err.message)
    elif api is Api.NATIVE:
        body = native_body(err.message)
    else:
        body = openai_body(status, err.message)
    headers = [(b"content-type", JSON_TYPE)]
    if err.retry_after is not None:
        headers.append((b"retry-after", str(max(1, math.ceil(err.retry_after))).encode()))
    headers.extend(err.headers)
    return status, headers, body


def stream_error_frame(err: BridgeError | str, api: Api) -> bytes:
    """The in-band end of a stream that failed after its first byte:
    Ollama's final NDJSON ``{"error"}`` line, or an SSE event carrying
    OpenAI's error object (the ``openai`` client raises ``APIError`` on it)."""
    message = err if isinstance(err, str) else err.message
    if api is Api.NATIVE:
        return native_body(message) + b"\n"
    return b"data: " + openai_body(500, message) + b"\n\n"


def _message_of(body: bytes) -> str:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode("utf-8", "replace")
    if isinstance(value, dict):
        err = value.get("error")
        if isinstance(err, str):
            return err
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
    return ""
