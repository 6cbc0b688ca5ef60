"""Acting on the predictor: the bridge's consumer of prefetch and warm-cache events.

Theory of operation. ``Consumer.run`` is one member of the consumer group
``ALB_CONSUMER_GROUP`` (``alb-bridge``) on ``alb.prefetch.v1`` and
``alb.warm-cache.v1``, over Kafka or the embedded bus alike. Each delivery is
handled, its outcome recorded (``alb_prefetch_total{outcome}`` /
``alb_warm_total{outcome}`` and a ``prefetch`` / ``warm`` decision, which the
events pipeline publishes on ``alb.decisions.v1``), and only then its offset
committed: handle -> record -> commit. A crash in between hands the event again;
a bounded set of the last ``events_seen_capacity`` event ids makes that harmless
(outcome ``duplicate``). Events whose ``expires_at`` has passed are skipped
(``expired``). When the bus is unreachable the member backs off and rejoins.

Prefetch: never forces anything. Already resident (any context) or being loaded:
nothing to do. Otherwise the placement policy (``placement.route``) is asked where
the model would go, as for a real request, and the prefetch is refused (and
recorded) when that plan would have to wait for busy runners (``refused_busy``:
room is held by models with requests in flight), would evict a runner worth more
than the prefetch (``refused_value``: eviction value vs. confidence x reload
cost), cannot fit at all, would take prefetched-but-unused runners on that daemon
past ``ALB_PREFETCH_BUDGET`` of its memory budget (``over_budget``), or exceeds
the token bucket (``rate_limited``). An accepted prefetch queues like a request
(``Scheduler.admit`` + ``wait``, so loads stay single-flight and the scheduler's
own plan carries it out) and holds no slot afterwards. Cancellable: until its load
starts, it gives way (``cancelled``) as soon as a real request on that daemon waits
for a load of another model; once loaded and until a real request uses it, its
reuse value for eviction is its confidence (``PrefetchOracle``), so real traffic
that needs the room evicts it first.

A prefetched runner counts as a hit (``alb_prefetch_hits_total``) when a real
request is served by it before it leaves the daemon, else as wasted
(``alb_prefetch_wasted_total``).

Warm-cache: resolves the system prompt from the registry (unknown hash:
``unknown_prompt``), needs the model resident (``not_loaded``: a warm-up never
loads) and a free slot right now (``busy``: it is low priority and never queues),
then sends one ``/api/chat`` with that system prompt, ``num_predict: 1`` and the
runner's own context (no ``num_ctx`` for a runner loaded without one), so it can
never force a reload. The next real request with that system prompt then finds
its prefix in the runner's KV cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge

from bridge.errors import BridgeError
from bridge.events.reader import BusReader
from bridge.policy.numctx import Need
from bridge.policy.placement import (
    route,
)
from bridge.policy.prefetch import ACCEPTED, Outcome, TokenBucket, judge
from bridge.scheduling.decisions import DecisionLog
from bridge.scheduling.fleet import DaemonState, Fleet
from bridge.scheduling.loader import StateChange
from bridge.scheduling.scheduler import Lease, Scheduler
from bridge.settings import Settings
from bridge.upstream import Upstream
from bridge.wire import durations, names
from ingest.bus import Delivery, EventBus, Subscription
from ingest.errors import RegistryUnavailable
from ingest.messages import PrefetchEvent, Topic, WarmCacheEvent, parse_event, utcnow
from ingest.prompts import PromptRegistry

log = logging.getLogger(__name__)
_SESSION = "alb-prefetch"
_POLL_S = 0.02
_WARM_TIMEOUT_S = 60.0
Kind = Literal["prefetch", "warm"]


class PrefetchMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.prefetch = Counter(
            "alb_prefetch", "Prefetch events handled, by outcome.", ["outcome"], registry=registry
        )
        self.warm = Counter(
            "alb_warm", "Warm-cache events handled, by outcome.", ["outcome"], registry=registry
        )
        self.hits = Counter(
            "alb_prefetch_hits",
            "Prefetched runners a real request used before they left the daemon.",
            registry=registry,
        )
        self.wasted = Counter(
            "alb_prefetch_wasted",
            "Prefetched runners that left the daemon before any real request used them.",
            registry=registry,
        )
        self.held = Gauge(
            "alb_prefetch_held_bytes",
            "Memory held by prefetched runners no real request used yet, per daemon.",
            ["daemon"],
            registry=registry,
        )
        self.invalid = Counter(
            "alb_events_invalid",
            "Consumed records that were not a valid event of their topic.",
            ["topic"],
            registry=registry,
        )


@dataclass(slots=True)
class _Prefetched:
    size: int
    confidence: float


class PrefetchBook:
    """Prefetched runners no real request has used yet: each ends as a hit or wasted."""

    def __init__(self, metrics: PrefetchMetrics) -> None:
        self._metrics = metrics
        self._entries: dict[tuple[str, str], _Prefetched] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, daemon: str, key: str, size: int, confidence: float) -> None:
        self._entries[(daemon, key)] = _Prefetched(size, confidence)
        self._metrics.held.labels(daemon).set(self.held(daemon))

    def confidence(self, daemon: str, key: str) -> float | None:
        entry = self._entries.get((daemon, key))
        return None if entry is None else entry.confidence

    def held(self, daemon: str) -> int:
        return sum(e.size for (d, _), e in self._entries.items() if d == daemon)

    def used(self, daemon: str, key: str) -> None:
        """A real request was served by ``key`` on ``daemon``."""
        if self._entries and self._entries.pop((daemon, key), None) is not None:
            self._metrics.hits.inc()
            self._metrics.held.labels(daemon).set(self.held(daemon))

    def gone(self, daemon: str, key: str) -> None:
        if self._entries.pop((daemon, key), None) is not None:
            self._metrics.wasted.inc()
            self._metrics.held.labels(daemon).set(self.held(daemon))

    def state_changed(self, change: StateChange) -> None:
        """The loader's hook: an unloaded or evicted prefetched runner was wasted."""
        if change.state in ("unloaded", "evicted"):
            self.gone(change.daemon, change.model)

    def prune(self, fleet: Fleet) -> None:
        """Forget runners that left behind the bridge's back (wasted too)."""
        for daemon, key in list(self._entries):
            d = fleet.daemons.get(daemon)
            if d is not None and d.up and key not in d.loaded and key not in d.loading:
                self.gone(daemon, key)


class Seen:
    """The last ``capacity`` event ids handled."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._ids

    def add(self, event_id: str) -> None:
        self._ids[event_id] = None
        while len(self._ids) > self._capacity:
            self._ids.popitem(last=False)


class Consumer(BusReader):
    """The consumer-group member and the actions (see the module docstring)."""

    def __init__(  # noqa: PLR0917
        self,
        settings: Settings,
        bus: EventBus,
        scheduler: Scheduler,
        upstream: Upstream,
        decisions: DecisionLog,
        prompts: PromptRegistry,
        book: PrefetchBook,
        metrics: PrefetchMetrics,
    ) -> None:
        super().__init__(
            bus,
            [Topic.PREFETCH.value, Topic.WARM_CACHE.value],
            settings.consumer_group,
            name="alb-consumer",
        )
        self._settings = settings
        self._scheduler = scheduler
        self._fleet = scheduler.fleet
        self._upstream = upstream
        self._decisions = decisions
        self._prompts = prompts
        self.book = book
        self.metrics = metrics
        self._seen = Seen(settings.events_seen_capacity)
        self._prefetch_bucket = TokenBucket(settings.prefetch_rate, settings.prefetch_burst)
        self._warm_bucket = TokenBucket(settings.warm_rate, settings.warm_burst)

    async def consume(self, sub: Subscription, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            await self.handle(delivery)
            await sub.commit(delivery)

    # --- one event ----------------------------------------------------------------------
    async def handle(self, delivery: Delivery) -> str:
        """Handle one delivery and record its outcome; returns the outcome."""
        kind: Kind = "prefetch" if delivery.topic == Topic.PREFETCH.value else "warm"
        try:
            event = parse_event(delivery.topic, delivery.value)
        except ValueError as exc:
            self.metrics.invalid.labels(delivery.topic).inc()
            log.warning("skipping an invalid %s event: %s", delivery.topic, str(exc)[:200])
            return "invalid"
        assert isinstance(event, PrefetchEvent | WarmCacheEvent)
        event_id = str(event.event_id)
        key = names.key(event.model)
        if event_id in self._seen:
            result = Outcome("duplicate")
        elif event.expires_at <= utcnow():
            result = Outcome("expired")
        elif not self._settings.prefetch:
            result = Outcome("disabled")
        elif isinstance(event, PrefetchEvent):
            result = await self._prefetch(key, event)
        else:
            result = await self._warm(key, event)
        self._seen.add(event_id)
        self._record(kind, key, event, result)
        return result.outcome

    def _record(
        self, kind: Kind, key: str, event: PrefetchEvent | WarmCacheEvent, result: Outcome
    ) -> None:
        counter = self.metrics.prefetch if kind == "prefetch" else self.metrics.warm
        counter.labels(result.outcome).inc()
        self._decisions.record(
            kind,
            key,
            result.daemon,
            f"{kind}_{result.outcome}",
            outcome=result.outcome,
            event_id=str(event.event_id),
            confidence=event.confidence,
            predictor_reason=event.reason,
            **(result.inputs or {}),
        )

    # --- prefetch -----------------------------------------------------------------------
    async def _prefetch(self, key: str, event: PrefetchEvent) -> Outcome:
        s, fleet = self._scheduler, self._fleet
        if not await fleet.ensure_known(key):
            return Outcome("unknown_model")
        info = await fleet.model_info(key)
        if info is None:
            return Outcome("unknown_model")
        self.book.prune(fleet)
        for d in fleet.daemons.values():
            if s.available(d) and (key in d.loaded or key in d.loading or s.busy_op(d.name, key)):
                return Outcome("already_loaded", d.name)
        need = Need(event.num_ctx or 0)
        views = [s.view(d) for d in fleet.daemons.values()]

        def size_of(view: Any) -> int:
            return s.target(info, fleet.get(view.name), [need]).size

        where = route(views, key, need, size_of, s.oracle)
        result = judge(
            where,
            views,
            key,
            confidence=event.confidence,
            size_of=size_of,
            reload_s=s.loader.load_seconds,
            oracle=s.oracle,
            held=self.book.held,
            budget=lambda name: fleet.budget(fleet.get(name), self._settings.headroom),
            share=self._settings.prefetch_budget,
        )
        if result.outcome != ACCEPTED:
            return result
        d, inputs = fleet.get(result.daemon), result.inputs or {}
        if not self._prefetch_bucket.take():
            return Outcome("rate_limited", d.name, inputs)
        return await self._load(d, key, need, info, event, inputs)

    async def _load(  # noqa: PLR0917
        self,
        d: DaemonState,
        key: str,
        need: Need,
        info: Any,
        event: PrefetchEvent,
        inputs: dict[str, Any],
    ) -> Outcome:
        s = self._scheduler
        try:
            # the bridge's own waiter: it drives the load, but is nobody's demand (the
            # high-water depth, Retry-After and the slot shares count clients only)
            got = s.admit(key, need, info, only=d.name, internal=True)
        except BridgeError as exc:
            return Outcome("refused", d.name, {**inputs, "why": exc.message})
        if isinstance(got, Lease):  # it became resident meanwhile
            s.release(got, used=False)
            return Outcome("already_loaded", d.name, inputs)
        t0 = time.monotonic()
        waiting = asyncio.ensure_future(s.wait(got, _SESSION, background=True))
        try:
            async with asyncio.timeout(self._settings.load_timeout):
                while not waiting.done():
                    await asyncio.wait({waiting}, timeout=_POLL_S)
                    if not waiting.done() and self._yields(d, key):
                        waiting.cancel()
                        return Outcome("cancelled", d.name, inputs)
                lease = waiting.result()
        except TimeoutError:
            return Outcome("timeout", d.name, inputs)
        except BridgeError as exc:
            return Outcome("failed", d.name, {**inputs, "why": exc.message})
        finally:
            if not waiting.done():
                waiting.cancel()
            with contextlib.suppress(BaseException):
                await waiting
        s.release(lease, used=False)
        self.book.add(d.name, key, inputs["size"], event.confidence)
        load_ms = round((time.monotonic() - t0) * 1000, 1)
        return Outcome("loaded", d.name, {**inputs, "load_ms": load_ms})

    def _yields(self, d: DaemonState, key: str) -> bool:
        """Give way: our load has not started and a real request waits for another load."""
        s = self._scheduler
        if s.busy_op(d.name, key) or s.loader.loading(d.name, key):
            return False
        return any(
            name == d.name and k != key and gate.depth and not gate.ready
            for (name, k), gate in s.gates.items()
        )

    # --- warm-cache ---------------------------------------------------------------------
    async def _warm(self, key: str, event: WarmCacheEvent) -> Outcome:
        s = self._scheduler
        try:
            text = await self._prompts.get(event.system_prompt_hash)
        except RegistryUnavailable:
            return Outcome("registry_unavailable")
        if text is None:
            return Outcome("unknown_prompt")
        ready = [
            (gate.outstanding, d.name)
            for d in self._fleet.daemons.values()
            if s.available(d)
            and key in d.loaded
            and (gate := s.gates.get((d.name, key))) is not None
            and gate.ready
            and not gate.hold
        ]
        if not ready:
            return Outcome("not_loaded")
        d = self._fleet.get(min(ready)[1])
        if not self._warm_bucket.take():
            return Outcome("rate_limited", d.name)
        info = await self._fleet.model_info(key)
        try:
            got = s.admit(key, Need(1), info, only=d.name)
        except BridgeError:
            return Outcome("busy", d.name)
        if not isinstance(got, Lease) or got.daemon.name != d.name:
            return Outcome("busy", d.name)  # low priority: never queues
        gate = got.gate
        options: dict[str, Any] = {"num_predict": 1}
        if not gate.auto and gate.ctx:
            options["num_ctx"] = gate.ctx
        payload: dict[str, Any] = {
            "model": self._fleet.display_name(d, key),
            "messages": [{"role": "system", "content": text}],
            "stream": False,
            "options": options,
        }
        if self._settings.keep_alive_policy == "bridge":
            payload["keep_alive"] = durations.to_wire(math.inf)  # as the bridge loaded it
        inputs = {"num_ctx": gate.ctx or None, "auto": gate.auto}
        try:
            async with asyncio.timeout(_WARM_TIMEOUT_S):
                status, _ = await self._upstream.call(
                    d.url, "POST", "/api/chat", payload, read_timeout=_WARM_TIMEOUT_S
                )
        except (BridgeError, TimeoutError) as exc:
            return Outcome("failed", d.name, {**inputs, "why": str(exc)[:200]})
        finally:
            s.release(got, used=False)
        if status != 200:
            return Outcome("failed", d.name, {**inputs, "status": status})
        return Outcome("warmed", d.name, inputs)
