"""The predictor's model hints in a bridge that runs with Kafka.

Theory of operation. In embedded mode the bridge reads the predictor's state in
process (``bridge.events.predictor``). With Kafka the predictor is the Faust worker (``alb
predictor``), elsewhere; on every tick it publishes one ``alb.model-hints.v1`` event
per model it has seen (:func:`predictor.core.advice.model_hints`): P(reuse within
the horizon) — None while it has no evidence for the model — and how long an idle
runner of the model should stay loaded, after requests and after a prefetch.

Every replica needs every hint (each one evicts and unloads on its own daemons'
behalf), so :class:`HintConsumer` is a group of one: ``<ALB_CONSUMER_GROUP>-hints-``
plus a random suffix, reading from the end of the topic and never committing. A
replica that starts has a hint for every model within one tick of the worker. The
:class:`HintBook` keeps the newest hint per model until its ``expires_at``; an expired
or missing hint is "no evidence", so the bridge falls back on what it does without a
predictor: recency in the eviction value, ``ALB_IDLE_UNLOAD_AFTER`` for idle unloads.
Duplicates (at-least-once delivery) and older hints arriving late are harmless: the
book keeps a model's hint with the latest ``ts``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

from bridge.events.reader import BusReader
from bridge.wire import names
from ingest.bus import Delivery, EventBus, Subscription
from ingest.messages import ModelHintEvent, Topic, parse_event

__all__ = ["HintBook", "HintConsumer", "HintEstimate", "HintKeepAlive"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Hint:
    ts: float
    expires_at: float
    reuse_probability: float | None
    keep_alive_s: float
    prefetched_keep_alive_s: float


class HintBook:
    """The newest unexpired model hint per model (keys as ``bridge.wire.names.key``)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._hints: dict[str, _Hint] = {}
        self._clock = clock

    def offer(self, event: ModelHintEvent) -> str:
        """Keep ``event`` if it is newer than the model's hint: ``applied``; ``expired``
        (its ``expires_at`` has passed) or ``older`` (a newer one is held) otherwise."""
        hint = _Hint(
            event.ts.timestamp(),
            event.expires_at.timestamp(),
            event.reuse_probability,
            event.keep_alive_s,
            event.prefetched_keep_alive_s,
        )
        if hint.expires_at <= self._clock():
            return "expired"
        key = names.key(event.model)
        held = self._hints.get(key)
        if held is not None and held.ts > hint.ts:
            return "older"
        self._hints[key] = hint
        return "applied"

    def _fresh(self, model: str) -> _Hint | None:
        hint = self._hints.get(model)
        if hint is None:
            return None
        if hint.expires_at <= self._clock():
            del self._hints[model]
            return None
        return hint

    def reuse(self, model: str) -> float | None:
        """The model's P(reuse) while its hint is fresh, else None (no evidence)."""
        hint = self._fresh(model)
        return None if hint is None else hint.reuse_probability

    def keep_alive(self, model: str, cap: float, *, prefetched: bool = False) -> float:
        """Seconds an idle runner of ``model`` stays loaded: the hint's, at most ``cap``;
        ``cap`` without a fresh hint."""
        hint = self._fresh(model)
        if hint is None:
            return cap
        return min(hint.prefetched_keep_alive_s if prefetched else hint.keep_alive_s, cap)

    def __len__(self) -> int:
        now = self._clock()
        return sum(1 for h in self._hints.values() if h.expires_at > now)


@dataclass(frozen=True, slots=True)
class HintEstimate:
    """``bridge.events.predictor.ReuseEstimate`` over a :class:`HintBook`."""

    book: HintBook

    def estimate(self, model: str) -> float | None:
        return self.book.reuse(model)


@dataclass(frozen=True, slots=True)
class HintKeepAlive:
    """``bridge.scheduling.residency.KeepAlive`` over a :class:`HintBook`; ``prefetched`` tells a
    runner a prefetch loaded and no request used yet
    (``bridge.events.prefetch_consumer.PrefetchBook``)."""

    book: HintBook
    prefetched: Callable[[str, str], bool]

    def seconds(self, daemon: str, model: str, cap: float) -> float:
        return self.book.keep_alive(model, cap, prefetched=self.prefetched(daemon, model))


class HintMetrics:
    """Registered in every mode (zero without Kafka), so alert rules can name them."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.handled = Counter(
            "alb_model_hints",
            "Model-hint events read from the predictor, by outcome "
            "(applied, expired, older, invalid).",
            ["outcome"],
            registry=registry,
        )
        self.held = Gauge(
            "alb_model_hints_held",
            "Models with an unexpired hint from the predictor.",
            registry=registry,
        )
        self.reading = Gauge(
            "alb_model_hints_reading",
            "1 while the bridge reads alb.model-hints.v1 (Kafka mode), else 0.",
            registry=registry,
        )


class HintConsumer(BusReader):
    """Reads ``alb.model-hints.v1`` into a :class:`HintBook` (see the module docstring)."""

    def __init__(
        self, bus: EventBus, book: HintBook, metrics: HintMetrics, *, group_prefix: str
    ) -> None:
        super().__init__(
            bus,
            [Topic.MODEL_HINTS.value],
            f"{group_prefix}-hints-{uuid.uuid4().hex[:12]}",
            name="alb-hints",
            from_beginning=False,
            max_records=500,
        )
        self.book = book
        self.metrics = metrics

    async def consume(self, sub: Subscription, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            self.handle(delivery)
        self.metrics.held.set(len(self.book))

    def subscribed(self, held: bool) -> None:
        self.metrics.reading.set(1 if held else 0)

    def handle(self, delivery: Delivery) -> str:
        """Offer one delivery to the book; returns (and counts) the outcome."""
        try:
            event = parse_event(delivery.topic, delivery.value)
        except ValueError as exc:
            log.warning("skipping an invalid %s event: %s", delivery.topic, str(exc)[:200])
            outcome = "invalid"
        else:
            assert isinstance(event, ModelHintEvent)
            outcome = self.book.offer(event)
        self.metrics.handled.labels(outcome).inc()
        return outcome
