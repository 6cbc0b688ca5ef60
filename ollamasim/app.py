"""The ASGI app of one simulated daemon: routes, host check, /_sim control.

Host check (server/routes.go ``allowedHostsMiddleware``): only when the daemon
listens on a loopback address. The request's Host (port stripped) passes if it
is an IP that is loopback, private, unspecified or local; or ``""``,
``localhost``, this machine's hostname, or ends in ``.localhost``, ``.local``
or ``.internal`` (case-insensitive). Anything else: 403 with an empty body.
``OPTIONS`` to an allowed hostname answers 204.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ollamasim import api_embed, api_generate, api_info
from ollamasim import api_openai as oai
from ollamasim.api_common import BadRequest, error_response, json_response


def allowed_host(host: str) -> bool:
    host = host.lower()
    if host in ("", "localhost"):
        return True
    if host == socket.gethostname().lower():
        return True
    return any(host.endswith("." + tld) for tld in ("localhost", "local", "internal"))


def _split_host(header: str) -> str:
    if header.startswith("["):
        end = header.find("]")
        return header[1:end] if end > 0 else header
    if header.count(":") == 1:
        return header.split(":", 1)[0]
    return header


def host_permitted(host_header: str, method: str) -> tuple[bool, bool]:
    """(permitted, answer_options_with_204)."""
    host = _split_host(host_header)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None and (ip.is_loopback or ip.is_private or ip.is_unspecified):
        return True, False
    if allowed_host(host):
        return True, method == "OPTIONS"
    return False, False


class HostCheck:
    def __init__(self, app: ASGIApp, loopback: bool) -> None:
        self.app = app
        self.loopback = loopback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.loopback:
            headers = dict(scope.get("headers") or [])
            host = headers.get(b"host", b"").decode("latin-1")
            ok, preflight = host_permitted(host, scope["method"])
            if not ok or preflight:
                status = 403 if not ok else 204
                await send(
                    {
                        "type": "http.response.start",
                        "status": status,
                        "headers": [(b"content-length", b"0")],
                    }
                )
                await send({"type": "http.response.body", "body": b""})
                return
        await self.app(scope, receive, send)


def _guard(
    handler: Callable[[Request], Awaitable[Response]], openai: bool = False
) -> Callable[[Request], Awaitable[Response]]:
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except BadRequest as exc:
            if openai:
                return oai.oai_error(exc.status, exc.message)
            return error_response(exc.message, exc.status)

    return wrapped


async def _events(request: Request) -> Response:
    log = request.app.state.daemon.log
    response = json_response([e.to_json() for e in log.snapshot()])
    response.headers["x-sim-events-dropped"] = str(log.dropped)
    return response


async def _faults(request: Request) -> Response:
    daemon = request.app.state.daemon
    if request.method == "GET":
        return json_response(daemon.faults.snapshot())
    if request.method == "DELETE":
        daemon.faults.clear()
        return json_response(daemon.faults.snapshot())
    spec: dict[str, Any] = await request.json()
    daemon.faults.apply(spec)
    if spec.get("crash"):
        crash = spec["crash"] if isinstance(spec["crash"], dict) else {}
        daemon.schedule_crash(crash.get("restart_after_s"))
    return json_response(daemon.faults.snapshot())


async def _not_found(request: Request, exc: Exception) -> Response:
    # gin answers unknown routes and wrong methods alike with this plain text.
    return Response("404 page not found", status_code=404, media_type="text/plain")


def build_app(daemon: Any, *, loopback: bool) -> ASGIApp:
    """``daemon`` provides ``engine``, ``faults``, ``log`` and ``schedule_crash``."""
    routes = [
        Route("/", api_info.root, methods=["GET", "HEAD"]),
        Route("/api/version", api_info.version, methods=["GET", "HEAD"]),
        Route("/api/tags", api_info.tags, methods=["GET", "HEAD"]),
        Route("/api/ps", api_info.ps, methods=["GET"]),
        Route("/api/show", _guard(api_info.show), methods=["POST"]),
        Route("/api/generate", _guard(api_generate.generate), methods=["POST"]),
        Route("/api/chat", _guard(api_generate.chat), methods=["POST"]),
        Route("/api/embed", _guard(api_embed.embed), methods=["POST"]),
        Route("/api/embeddings", _guard(api_embed.embeddings_legacy), methods=["POST"]),
        Route("/v1/chat/completions", _guard(oai.chat_completions, True), methods=["POST"]),
        Route("/v1/completions", _guard(oai.completions, True), methods=["POST"]),
        Route("/v1/embeddings", _guard(oai.embeddings, True), methods=["POST"]),
        Route("/v1/models", oai.list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", oai.retrieve_model, methods=["GET"]),
        Route("/_sim/events", _events, methods=["GET"]),
        Route("/_sim/faults", _faults, methods=["POST", "DELETE", "GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={404: _not_found, 405: _not_found})
    app.state.daemon = daemon
    return HostCheck(app, loopback)
