"""``create_app(settings)``: the bridge as an ASGI app.

The lifespan owns every resource: it creates the upstream client, the fleet
view and the scheduler (which starts its refresh task), and closes them in
the reverse order — background tasks and loads first, the connection pool
last. Plain Starlette routes; the inference routes are raw ASGI handlers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from bridge import routes_admin, routes_native, routes_openai, routes_ops
from bridge.context import Bridge, Runtime
from bridge.fleet import Fleet
from bridge.metrics import Metrics
from bridge.records import RecordSink
from bridge.scheduler import Scheduler
from bridge.settings import Settings
from bridge.upstream import Upstream


async def _not_found(request: Request, exc: Exception) -> Response:
    # What Ollama (gin) answers for unknown routes and wrong methods.
    return Response("404 page not found", status_code=404, media_type="text/plain")


def create_app(settings: Settings, *, sink: RecordSink | None = None) -> Starlette:
    """A new bridge app; nothing starts until its lifespan runs."""
    bridge = Bridge(settings, Metrics(), sink)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        upstream = Upstream.create(settings)
        try:
            fleet = Fleet(
                settings.daemon_specs(),
                upstream,
                settings.tags_ttl,
                kv_bytes_per_element=settings.kv_bytes_per_element,
            )
            scheduler = Scheduler(settings, fleet, upstream, bridge.metrics, bridge.decisions)
            await scheduler.start()
            try:
                bridge.runtime = Runtime(upstream, fleet, scheduler)
                yield
            finally:
                bridge.draining = True
                bridge.runtime = None
                await scheduler.aclose()
        finally:
            await upstream.aclose()

    app = Starlette(
        routes=[
            *routes_native.routes(bridge),
            *routes_openai.routes(bridge),
            *routes_ops.routes(bridge),
            *routes_admin.routes(bridge),
        ],
        lifespan=lifespan,
        exception_handlers={404: _not_found, 405: _not_found},
    )
    app.state.bridge = bridge
    return app
