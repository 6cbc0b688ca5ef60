"""What every route handler shares: settings, metrics, and the runtime the
lifespan creates (upstream client, fleet, scheduler, events pipeline, prefetch
consumer, embedded predictor). Passed down typed; no module-level state."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bridge.errors import Unavailable
from bridge.events.hints import HintConsumer
from bridge.events.pipeline import Events
from bridge.events.prefetch_consumer import Consumer
from bridge.events.sink import RecordSink
from bridge.metrics import Metrics
from bridge.scheduling.decisions import Decision, DecisionLog
from bridge.scheduling.fleet import Fleet
from bridge.scheduling.scheduler import Scheduler
from bridge.settings import Settings
from bridge.upstream import Upstream

if TYPE_CHECKING:
    from bridge.tenancy import Tenancy
    from predictor.embedded import EmbeddedPredictor


@dataclass(slots=True)
class Runtime:
    """Resources that exist between lifespan start-up and shutdown."""

    upstream: Upstream
    fleet: Fleet
    scheduler: Scheduler
    #: The events pipeline (None with ``ALB_EVENTS=false``). Its ``bus`` is where an
    #: embedded subscriber (the predictor) joins: ``events.bus.subscribe([...], group)``.
    events: Events | None = None
    consumer: Consumer | None = None
    #: The embedded predictor (``bridge.events.predictor``); None with Kafka or when turned off.
    predictor: EmbeddedPredictor | None = None
    #: With Kafka: the reader of the Faust worker's model hints (``bridge.events.hints``).
    hints: HintConsumer | None = None


class Bridge:
    """One app's shared state; ``runtime`` is set by the lifespan."""

    def __init__(self, settings: Settings, metrics: Metrics, sink: RecordSink | None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.sink = sink
        #: Sees every decision too (the lifespan points it at the events pipeline).
        self.on_decision: Callable[[Decision], None] | None = None
        self.decisions = DecisionLog(settings.decisions_capacity, sink=self._decided)
        self.runtime: Runtime | None = None
        self.draining = False
        #: Keys, limits and usage (``ALB_AUTH=keys``; set by the lifespan).
        self.tenancy: Tenancy | None = None

    def _decided(self, decision: Decision) -> None:
        if self.on_decision is not None:
            self.on_decision(decision)

    def rt(self) -> Runtime:
        if self.runtime is None:
            raise Unavailable("the bridge is not running", retry_after=1)
        return self.runtime
