"""Ollama's native API: inference through the proxy, read endpoints from the
fleet, store-changing endpoints refused unless ``ALB_ALLOW_STORE_CHANGES``."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from bridge.errors import Api, Forbidden, ModelNotFound, Unavailable, UpstreamStatus
from bridge.http.proxy import InferenceRoute
from bridge.http.relay import read_body
from bridge.http.responses import guard, json_response
from bridge.http.state import Bridge, Runtime
from bridge.scheduling.fleet import DaemonState
from bridge.wire import names
from bridge.wire.parsing import Endpoint, parse

GENERATE = Endpoint("/api/generate", Api.NATIVE, "prompt", True, can_unload=True)
CHAT = Endpoint("/api/chat", Api.NATIVE, "messages", True, can_unload=True)
EMBED = Endpoint("/api/embed", Api.NATIVE, "input", False, embed_style_404=True)
EMBEDDINGS = Endpoint("/api/embeddings", Api.NATIVE, "prompt", False, embed_style_404=True)
SHOW = Endpoint("/api/show", Api.NATIVE, None, False)

STORE_PATHS = ("/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete")
_ABS_PATH = re.compile(r"(?<![\w.])(?:/[^\s/\"]+)+/([^\s/\"]+)")
_FROM_LINE = re.compile(r"(?m)^FROM (?:/|[A-Za-z]:\\)\S*$")


def redact_modelfile(text: str, model: str) -> str:
    """Drop the daemon's absolute blob paths (``FROM /root/.ollama/models/blobs/…``)."""
    text = _FROM_LINE.sub(f"FROM {model}", text)
    return _ABS_PATH.sub(r"\1", text)


def first_up(rt: Runtime, key: str | None = None) -> DaemonState:
    for d in rt.fleet.daemons.values():
        if d.up and (key is None or key in d.catalog):
            return d
    raise Unavailable("no daemon is answering", retry_after=5)


def routes(bridge: Bridge) -> list[BaseRoute]:
    native = guard(Api.NATIVE)

    async def root(request: Request) -> Response:
        return Response("Ollama is running", media_type="text/plain; charset=utf-8")

    @native
    async def version(request: Request) -> Response:
        rt = bridge.rt()
        status, body = await rt.upstream.call(first_up(rt).url, "GET", "/api/version")
        return Response(body, status_code=status, media_type="application/json; charset=utf-8")

    @native
    async def tags(request: Request) -> Response:
        rt = bridge.rt()
        await rt.fleet.refresh_all(force=True)
        merged: dict[str, dict[str, Any]] = {}
        for d in rt.fleet.daemons.values():
            for key, row in d.catalog.items():
                merged.setdefault(key, row)
        rows = sorted(merged.values(), key=lambda r: str(r.get("modified_at", "")), reverse=True)
        return json_response({"models": rows})

    @native
    async def ps(request: Request) -> Response:
        rt = bridge.rt()
        rows: list[dict[str, Any]] = []
        for d in rt.fleet.daemons.values():
            for key, row in d.loaded.items():
                expiry = rt.scheduler.idle_expiry(d.name, key)
                shown = row if expiry is None else {**row, "expires_at": _wall_time(expiry)}
                rows.append(shown)
        rows.sort(key=lambda r: str(r.get("expires_at", "")), reverse=True)
        return json_response({"models": rows})

    @native
    async def show(request: Request) -> Response:
        rt = bridge.rt()
        body = await read_body(request.receive, bridge.settings.max_body_bytes)
        parsed = parse(body, SHOW)
        if not await rt.fleet.ensure_known(parsed.key):
            raise ModelNotFound(f"model '{parsed.model}' not found")
        d = first_up(rt, parsed.key)
        status, raw = await rt.upstream.call(d.url, "POST", "/api/show", parsed.doc)
        if status != 200:
            raise UpstreamStatus(status, raw, "application/json")
        info = orjson.loads(raw)
        if isinstance(info, dict) and isinstance(info.get("modelfile"), str):
            info["modelfile"] = redact_modelfile(info["modelfile"], names.display(parsed.model))
        return json_response(info)

    @native
    async def store(request: Request) -> Response:
        if not bridge.settings.allow_store_changes:
            raise Forbidden(
                f"the bridge refuses model-store changes ({request.url.path}); "
                "set ALB_ALLOW_STORE_CHANGES=true to forward them to a daemon"
            )
        return await _passthrough(bridge, request)

    return [
        Route("/", root, methods=["GET", "HEAD"]),
        Route("/api/version", version, methods=["GET", "HEAD"]),
        Route("/api/tags", tags, methods=["GET", "HEAD"]),
        Route("/api/ps", ps, methods=["GET"]),
        Route("/api/show", show, methods=["POST"]),
        Route(GENERATE.path, InferenceRoute(bridge, GENERATE), methods=["POST"]),
        Route(CHAT.path, InferenceRoute(bridge, CHAT), methods=["POST"]),
        Route(EMBED.path, InferenceRoute(bridge, EMBED), methods=["POST"]),
        Route(EMBEDDINGS.path, InferenceRoute(bridge, EMBEDDINGS), methods=["POST"]),
        *(Route(p, store, methods=["POST", "DELETE"]) for p in STORE_PATHS),
        Route("/api/blobs/{digest}", store, methods=["POST", "HEAD"]),
    ]


async def _passthrough(bridge: Bridge, request: Request) -> Response:
    """Forward a store request to the daemon named by ``X-ALB-Daemon`` (else the first)."""
    rt = bridge.rt()
    wanted = request.headers.get("x-alb-daemon")
    d = rt.fleet.daemons.get(wanted) if wanted else first_up(rt)
    if d is None:
        raise Unavailable(f"no daemon named {wanted!r}")
    body = await read_body(request.receive, bridge.settings.max_body_bytes)
    resp = await rt.upstream.open(d.url, request.method, request.url.path, body or None)

    async def chunks() -> Any:
        try:
            async for chunk in resp.chunks():
                yield chunk
        finally:
            await resp.aclose()
            d.catalog_at = -1e18  # the store changed: re-read /api/tags next time

    return StreamingResponse(chunks(), status_code=resp.status, media_type=resp.content_type)


def _wall_time(monotonic_at: float) -> str:
    wall = time.time() + (monotonic_at - time.monotonic())
    return datetime.fromtimestamp(wall, UTC).isoformat().replace("+00:00", "Z")
