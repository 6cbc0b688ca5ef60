"""``create_app(settings)``: the bridge as an ASGI app.

The lifespan owns every resource: it creates the upstream client, the events
pipeline (bus, spool, sender, prompt registry, recorder: ``bridge.events.pipeline``), the
embedded predictor on that bus when Kafka is not configured (``bridge.events.predictor``;
its reuse probability feeds the eviction value, its keep-alive the idle unloads) or,
with Kafka, the reader of the Faust worker's model hints that do the same
(``bridge.events.hints``), the fleet view, the scheduler
(which starts its refresh task) and the prefetch / warm-cache consumer
(``bridge.events.prefetch_consumer``), and closes them in the reverse order — the consumer, then
background tasks and loads, then the predictor, then the events pipeline (bounded
drain, the rest stays spooled), the connection pool last. Plain Starlette
routes; the inference routes are raw ASGI handlers. In front of them the edge
(``bridge.http.edge``: Host and Origin checks, trusted proxies, the body cap and the
bridge-wide body budget, whose ``BodyBudget`` and reclaimer the app owns), then the
gatekeeper (``bridge.http.gatekeeper``: API keys and scopes with ``ALB_AUTH=keys``,
whose key ring and limits, ``bridge.tenancy``, the lifespan opens).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from bridge.coord.factory import open_coordinator
from bridge.events.hints import HintBook, HintConsumer, HintEstimate, HintKeepAlive, HintMetrics
from bridge.events.pipeline import Events, open_events
from bridge.events.predictor import (
    PredictorEstimate,
    PredictorKeepAlive,
    open_predictor,
)
from bridge.events.prefetch_consumer import Consumer, PrefetchBook, PrefetchMetrics
from bridge.events.sink import RecordSink, RequestRecord
from bridge.http import routes_admin, routes_native, routes_openai, routes_ops, routes_ui
from bridge.http.edge import Edge, EdgePolicy
from bridge.http.gatekeeper import Gatekeeper
from bridge.http.limits import BodyBudget, Reclaimer
from bridge.http.state import Bridge, Runtime
from bridge.metrics import Metrics
from bridge.policy.placement import RecencyOracle, ReuseOracle
from bridge.policy.prefetch import PrefetchOracle
from bridge.policy.reuse import PredictedReuse
from bridge.scheduling.fleet import Fleet
from bridge.scheduling.loader import StateChange
from bridge.scheduling.residency import KeepAlive
from bridge.scheduling.scheduler import Scheduler
from bridge.settings import Settings
from bridge.tenancy import open_tenancy
from bridge.upstream import Upstream

if TYPE_CHECKING:
    from predictor.embedded import EmbeddedPredictor


async def _not_found(request: Request, exc: Exception) -> Response:
    # What Ollama (gin) answers for unknown routes and wrong methods.
    return Response("404 page not found", status_code=404, media_type="text/plain")


def create_app(settings: Settings, *, sink: RecordSink | None = None) -> Starlette:
    """A new bridge app; nothing starts until its lifespan runs. ``sink`` (tests) sees
    every request record besides the events pipeline."""
    bridge = Bridge(settings, Metrics(), sink)
    budget = BodyBudget(settings.body_budget_bytes)
    reclaimer = Reclaimer(urgent=max(settings.body_budget_bytes // 2, 1))
    policy = EdgePolicy.from_settings(
        settings.host,
        settings.origins,
        settings.allowed_hosts,
        settings.trusted_proxies,
        settings.max_body_bytes,
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        registry = bridge.metrics.registry
        upstream = Upstream.create(settings)
        try:
            async with AsyncExitStack() as stack:
                events: Events | None = None
                if settings.events:
                    events = await stack.enter_async_context(open_events(settings, registry))
                predictor = await stack.enter_async_context(open_predictor(settings, events))
                prefetch_metrics = PrefetchMetrics(registry)
                book = PrefetchBook(prefetch_metrics)

                reuse, keep_alive, hints = _predictor_seams(
                    settings, events, predictor, book, HintMetrics(registry)
                )
                fleet = Fleet(
                    settings.daemon_specs(),
                    upstream,
                    settings.tags_ttl,
                    kv_bytes_per_element=settings.kv_bytes_per_element,
                )
                scheduler = Scheduler(
                    settings,
                    fleet,
                    upstream,
                    bridge.metrics,
                    bridge.decisions,
                    oracle=PrefetchOracle(reuse, book),
                    keep_alive=keep_alive,
                    coord=open_coordinator(settings, bridge.metrics),
                )
                _wire(bridge, scheduler, events, book, sink)
                if settings.auth == "keys":
                    coord = scheduler.coord
                    bridge.tenancy = await stack.enter_async_context(
                        open_tenancy(
                            settings,
                            registry,
                            replicas=lambda: coord.replicas,
                            replica=coord.replica,
                        )
                    )
                consumer: Consumer | None = None
                try:
                    await scheduler.start()
                    if hints is not None:
                        hints.start()
                    if events is not None:
                        consumer = Consumer(
                            settings,
                            events.bus,
                            scheduler,
                            upstream,
                            bridge.decisions,
                            events.prompts,
                            book,
                            prefetch_metrics,
                        )
                        consumer.start()
                    bridge.runtime = Runtime(
                        upstream, fleet, scheduler, events, consumer, predictor, hints
                    )
                    yield
                finally:
                    # Order: stop taking work, stop the consumer, stop loads and
                    # background tasks; then (stack) the embedded predictor finishes
                    # its batch and leaves, the recorder drains, the sender delivers
                    # or spools, the bus closes; the connection pool last.
                    bridge.draining = True
                    bridge.runtime = None
                    if consumer is not None:
                        await consumer.aclose()
                    if hints is not None:
                        await hints.aclose()
                    await scheduler.aclose()
        finally:
            reclaimer.close()
            await upstream.aclose()

    app = Starlette(
        routes=[
            *routes_native.routes(bridge),
            *routes_openai.routes(bridge),
            *routes_ops.routes(bridge),
            *routes_admin.routes(bridge),
            *routes_ui.routes(),
        ],
        lifespan=lifespan,
        exception_handlers={404: _not_found, 405: _not_found},
        middleware=[
            Middleware(
                Edge,
                policy=policy,
                budget=budget,
                reclaimer=reclaimer,
                refused=bridge.metrics.edge_refusals,
            ),
            Middleware(Gatekeeper, bridge=bridge),
        ],
    )
    bridge.metrics.body_budget.source = lambda: [
        (["in_use"], budget.in_use),
        (["capacity"], budget.capacity),
    ]
    app.state.bridge = bridge
    app.state.body_budget = budget
    app.state.reclaimer = reclaimer
    return app


def _predictor_seams(
    settings: Settings,
    events: Events | None,
    predictor: EmbeddedPredictor | None,
    book: PrefetchBook,
    hint_metrics: HintMetrics,
) -> tuple[ReuseOracle, KeepAlive | None, HintConsumer | None]:
    """What feeds the eviction value and the idle unloads: the embedded predictor's state;
    with Kafka, the Faust worker's model hints (and their reader, to start); else recency
    and ``ALB_IDLE_UNLOAD_AFTER``."""

    def prefetched(daemon: str, key: str) -> bool:
        return book.confidence(daemon, key) is not None

    if predictor is not None:
        return (
            PredictedReuse(PredictorEstimate(predictor)),
            PredictorKeepAlive(predictor, prefetched),
            None,
        )
    if events is not None and settings.kafka_bootstrap_servers and settings.model_hints:
        hint_book = HintBook()
        reader = HintConsumer(
            events.bus, hint_book, hint_metrics, group_prefix=settings.consumer_group
        )
        return PredictedReuse(HintEstimate(hint_book)), HintKeepAlive(hint_book, prefetched), reader
    return RecencyOracle(), None, None


def _wire(
    bridge: Bridge,
    scheduler: Scheduler,
    events: Events | None,
    book: PrefetchBook,
    sink: RecordSink | None,
) -> None:
    """Point the proxy's records, the decision log and the loader at their listeners."""

    def finished(record: RequestRecord) -> None:
        if record.status == 200 and record.daemon:
            book.used(record.daemon, record.model)
        if events is not None:
            events.request_finished(record)
        if sink is not None:
            sink(record)

    def state_changed(change: StateChange) -> None:
        book.state_changed(change)
        if events is not None:
            events.state_changed(change)

    bridge.sink = finished
    bridge.metrics.in_flight.source = lambda: [
        ([daemon, key], gate.busy) for (daemon, key), gate in scheduler.gates.items()
    ]

    def runners() -> list[tuple[list[str], float]]:
        out: list[tuple[list[str], float]] = []
        for d in scheduler.fleet.daemons.values():
            for key in d.loading:
                out.append(([d.name, key, "loading"], 1))
            for key in d.loaded:
                gate = scheduler.gates.get((d.name, key))
                busy = gate is not None and gate.busy > 0
                out.append(([d.name, key, "serving" if busy else "idle"], 1))
                if scheduler.pinned(d.name, key):
                    out.append(([d.name, key, "pinned"], 1))
        return out

    bridge.metrics.runners.source = runners
    bridge.on_decision = None if events is None else events.decided
    scheduler.loader.on_state = state_changed
