"""The status page (issue #17): ``GET /alb/ui`` and its script and style sheet.

Static files shipped in the package (``bridge/http/ui/``), read once when the app is
created, no build step and nothing fetched from elsewhere: the page's script polls the
bridge's own JSON endpoints (``/alb/v1/models``, ``/alb/v1/decisions``,
``/alb/v1/events``, ``/alb/v1/predictor``) once a second and draws them.

The shell is open (``bridge.policy.keys.scope_for``): a browser cannot send a bearer
header on a plain navigation, and the three files hold no data. What the page shows
comes from the JSON endpoints with the credential the user pastes into it (kept in
``sessionStorage``, sent as ``Authorization: Bearer``), under those endpoints' own
scopes, so it shows nothing its caller could not read with curl. It is read-only; the
pin / unpin / unload buttons appear only once a credential is given, and the admin
routes decide.

Every answer carries a strict ``Content-Security-Policy`` (``default-src 'none'``, the
script, style and fetches from this origin only, no inline script or style markup, no
frames, forms or base URL), ``X-Content-Type-Options: nosniff``, ``Referrer-Policy:
no-referrer`` and ``Cache-Control: no-cache`` with an ``ETag`` (a 304 when it matches).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from bridge.errors import Api
from bridge.http.responses import guard

#: The page's policy: its own script, style sheet and JSON, nothing else.
CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",  # data: only for the empty favicon (no /favicon.ico 404)
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}
#: Path -> (file under ``bridge/http/ui/``, media type).
FILES = {
    "/alb/ui": ("index.html", "text/html; charset=utf-8"),
    "/alb/ui/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/alb/ui/style.css": ("style.css", "text/css; charset=utf-8"),
}


@dataclass(frozen=True, slots=True)
class _Asset:
    body: bytes
    media_type: str
    etag: str


def _load(name: str, media_type: str) -> _Asset:
    body = resources.files("bridge.http").joinpath("ui", name).read_bytes()
    return _Asset(body, media_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


def routes() -> list[BaseRoute]:
    native = guard(Api.NATIVE)

    def serve(found: _Asset) -> Callable[[Request], Awaitable[Response]]:
        @native
        async def asset(request: Request) -> Response:
            """One file of the status page, with the page's security headers."""
            headers = {**SECURITY_HEADERS, "cache-control": "no-cache", "etag": found.etag}
            if found.etag in request.headers.get("if-none-match", ""):
                return Response(status_code=304, headers=headers)
            return Response(found.body, media_type=found.media_type, headers=headers)

        return asset

    return [
        Route(path, serve(_load(name, media)), methods=["GET"])
        for path, (name, media) in FILES.items()
    ]
