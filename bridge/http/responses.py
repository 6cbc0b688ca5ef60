"""Small helpers for the non-streaming routes: JSON answers and error guarding."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from bridge.errors import JSON_TYPE, Api, BridgeError, Internal, render

log = logging.getLogger("alb.errors")

Handler = Callable[[Request], Awaitable[Response]]


def json_response(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(value), status_code=status, media_type=JSON_TYPE.decode(), headers=headers
    )


def error_response(err: BridgeError, api: Api) -> Response:
    status, headers, body = render(err, api)
    resp = Response(body, status_code=status)
    for name, value in headers:
        resp.headers[name.decode()] = value.decode()
    return resp


def internal_error(where: str) -> Internal:
    """The answer to an unexpected exception (call it in an ``except`` block): logged
    with its traceback under a fresh id, which the client sees, never the traceback."""
    ident = secrets.token_hex(6)
    log.exception("internal error %s in %s", ident, where)
    return Internal(f"internal error in the bridge (logged as {ident})")


def guard(api: Api) -> Callable[[Handler], Handler]:
    """Answer any ``BridgeError`` a handler raises in ``api``'s shape (the one
    boundary where the error tree meets HTTP for these routes)."""

    def wrap(handler: Handler) -> Handler:
        async def wrapped(request: Request) -> Response:
            try:
                return await handler(request)
            except BridgeError as err:
                return error_response(err, api)
            except Exception:
                return error_response(internal_error(request.url.path), api)

        wrapped.__name__ = handler.__name__
        wrapped.__doc__ = handler.__doc__
        return wrapped

    return wrap
