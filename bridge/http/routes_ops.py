"""Operations endpoints: liveness, readiness, Prometheus metrics, model state, the events
pipeline and the predictor's top transitions.

Topology is for operators: daemon URLs (credentials masked even then) and this host's
name appear only to a request in admin scope (``routes_admin.authorize``); everyone
else sees the daemons' names."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from bridge.errors import Api, Forbidden, Unauthorized
from bridge.events.shipper import Shipper
from bridge.http.responses import guard, json_response
from bridge.http.routes_admin import authorize
from bridge.http.state import Bridge
from bridge.metrics import CONTENT_TYPE


def admin_scope(bridge: Bridge, request: Request) -> bool:
    """The request may see what only operators see (daemon URLs, host names)."""
    try:
        authorize(bridge, request)
    except (Forbidden, Unauthorized):
        return False
    return True


_READY_RECHECK_S = 1.0
#: The most transitions ``/alb/v1/predictor`` lists.
_TOP_MAX = 100


def routes(bridge: Bridge) -> list[BaseRoute]:
    last_check = [0.0]
    native = guard(Api.NATIVE)

    @native
    async def healthz(request: Request) -> Response:
        """The process is alive and its event loop answers."""
        return json_response({"status": "ok"})

    @native
    async def readyz(request: Request) -> Response:
        """Ready when at least one daemon answers (re-checked at most once a second)."""
        rt = bridge.runtime
        if rt is None or bridge.draining:
            return json_response({"status": "unready", "reason": "not running"}, 503)
        now = time.monotonic()
        if now - last_check[0] >= _READY_RECHECK_S:
            last_check[0] = now
            await rt.fleet.refresh_all(tags=False)
        operator = admin_scope(bridge, request)
        daemons = {
            d.name: {
                "up": d.up,
                **({"url": d.spec.shown_url} if operator else {}),
                **({"error": d.error} if d.error else {}),
            }
            for d in rt.fleet.daemons.values()
        }
        ready = any(d.up for d in rt.fleet.daemons.values())
        return json_response(
            {"status": "ready" if ready else "unready", "daemons": daemons}, 200 if ready else 503
        )

    @native
    async def metrics(request: Request) -> Response:
        return Response(bridge.metrics.render(), media_type=CONTENT_TYPE)

    @native
    async def models(request: Request) -> Response:
        """Per daemon: every model the bridge tracks, with state, size, context,
        in-flight requests, queue depth and expiry."""
        rt = bridge.runtime
        if rt is None:
            return json_response({"daemons": []}, 503)
        out: list[dict[str, Any]] = []
        operator = admin_scope(bridge, request)
        now = time.monotonic()
        book = rt.consumer.book if rt.consumer is not None else None
        for d in rt.fleet.daemons.values():
            keys = set(d.loaded) | set(d.loading)
            keys |= {k for (n, k) in rt.scheduler.gates if n == d.name}
            rows = []
            for key in sorted(keys):
                gate = rt.scheduler.gates.get((d.name, key))
                ps = d.loaded.get(key, {})
                state = (
                    "loading" if key in d.loading else "loaded" if key in d.loaded else "unloaded"
                )
                expiry = rt.scheduler.idle_expiry(d.name, key)
                failing = rt.scheduler.book.failing_for(d.name, key, now)
                rows.append(
                    {
                        "model": key,
                        "state": state,
                        "num_ctx": gate.ctx if gate and gate.ready else ps.get("context_length"),
                        "num_ctx_auto": bool(gate and gate.auto),
                        "pinned": rt.scheduler.pinned(d.name, key),
                        # A copy made by replication (retired once the burst is over).
                        "replica": (d.name, key) in rt.scheduler.replicas,
                        # Loaded by a prefetch and not used by a real request yet.
                        "prefetched": book is not None and book.confidence(d.name, key) is not None,
                        "accepting": bool(gate and gate.ready and not gate.hold),
                        "draining": bool(gate and gate.hold),
                        "size": ps.get("size"),
                        "size_vram": ps.get("size_vram"),
                        "context_length": ps.get("context_length"),
                        "expires_at": ps.get("expires_at"),
                        "bridge_unload_in_s": None
                        if expiry is None or state != "loaded"
                        else round(max(expiry - time.monotonic(), 0.0), 1),
                        "in_flight": gate.busy if gate else 0,
                        "queue_depth": gate.depth if gate else 0,
                        # Every replica's (as the last round read them): the high-water
                        # mark's measure.
                        "fleet_queue_depth": rt.scheduler.fleet_depth(d, key, gate) if gate else 0,
                        "slots": gate.slots if gate else d.spec.parallel,
                        "load_failing": None
                        if failing is None
                        else {
                            "error": failing.error,
                            "failures": failing.count,
                            "retry_in_s": round(failing.until - now, 1),
                        },
                    }
                )
            out.append(
                {
                    "name": d.name,
                    **({"url": d.spec.shown_url} if operator else {}),
                    "up": d.up,
                    "error": d.error or None,
                    "parallel": d.spec.parallel,
                    "max_loaded": d.spec.max_loaded,
                    "memory": {
                        "capacity": d.capacity,
                        "source": d.capacity_source,
                        "budget": rt.fleet.budget(d, bridge.settings.headroom),
                        "external": d.external,
                        "used": sum(int(r.get("size") or 0) for r in d.loaded.values()),
                        # What failed loads taught (``health.LoadBook``).
                        "ceiling_learned": rt.scheduler.book.ceiling.get(d.name),
                        "held_most": rt.scheduler.book.held.get(d.name),
                    },
                    "circuit": rt.scheduler.breakers[d.name].state,
                    # Whether this replica runs its loads and unloads (``bridge.coord``),
                    # and which replica does (its id names the host: operators only).
                    "owned_here": rt.scheduler.coord.owns(d.name),
                    **({"owner": rt.scheduler.coord.owner(d.name)} if operator else {}),
                    "models": rows,
                }
            )
        coord = rt.scheduler.coord
        extra = {
            "coordination": {
                "mode": coord.mode.value,
                "replicas": coord.replicas,
                **({"replica": coord.replica} if operator else {}),
            },
            "sizes_learned": rt.scheduler.sizes.as_dict(),
            "chars_per_token": rt.scheduler.calibrator.as_dict(),
        }
        return json_response({"daemons": out, **extra})

    @native
    async def events(request: Request) -> Response:
        """The events pipeline: mode, producer, what is waiting, the consumer's state."""
        rt = bridge.runtime
        if rt is None:
            return json_response({"mode": None}, 503)
        ev = rt.events
        if ev is None:
            return json_response({"mode": "off"})
        settings = bridge.settings
        consumer = rt.consumer
        return json_response(
            {
                "mode": "kafka" if settings.kafka_bootstrap_servers else "embedded",
                "producer": ev.producer if admin_scope(bridge, request) else None,
                "backlog": ev.backlog,
                "sender_idle": ev.sender.idle,
                "shipper": ev.sender.status() if isinstance(ev.sender, Shipper) else None,
                "consumer_group": settings.consumer_group,
                "consumer_ready": bool(consumer and consumer.ready.is_set()),
                "prefetched_unused": len(consumer.book) if consumer else 0,
            }
        )

    @native
    async def predictor(request: Request) -> Response:
        """The predictor's most likely model-to-model transitions (``?limit=``, 10 by
        default, 1 .. 100): the embedded predictor's global window; with Kafka the
        Faust worker holds that state (``source: kafka``, no transitions here)."""
        rt = bridge.rt()
        try:
            limit = min(max(int(request.query_params.get("limit", "10")), 1), _TOP_MAX)
        except ValueError:
            limit = 10
        p = rt.predictor
        if p is None:
            settings = bridge.settings
            source = "kafka" if settings.events and settings.kafka_bootstrap_servers else "off"
            return json_response({"source": source, "models_seen": 0, "transitions": []})
        cfg = p.config
        tr = p.state.transitions
        top = tr.top(p.clock(), limit)
        return json_response(
            {
                "source": "embedded",
                "window": {"kind": cfg.window, "minutes": cfg.window_minutes}
                if cfg.window == "time"
                else {"kind": cfg.window, "transitions": cfg.count_window},
                "models_seen": len(tr.known),
                "transitions": [
                    {
                        "from": prev,
                        "to": c.model,
                        "probability": round(c.probability, 4),
                        "count": c.count,
                        "gap_s": round(c.gap_s, 3),
                    }
                    for prev, c in top
                ],
            }
        )

    return [
        Route("/alb/v1/events", events, methods=["GET"]),
        Route("/alb/v1/predictor", predictor, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/readyz", readyz, methods=["GET", "HEAD"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/alb/v1/models", models, methods=["GET"]),
    ]
