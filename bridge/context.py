"""What every route handler shares: settings, metrics, and the runtime the
lifespan creates (upstream client, fleet, scheduler). Passed down typed; no
module-level state."""

from __future__ import annotations

from dataclasses import dataclass

from bridge.decisions import DecisionLog
from bridge.errors import Unavailable
from bridge.fleet import Fleet
from bridge.metrics import Metrics
from bridge.records import RecordSink
from bridge.scheduler import Scheduler
from bridge.settings import Settings
from bridge.upstream import Upstream


@dataclass(slots=True)
class Runtime:
    """Resources that exist between lifespan start-up and shutdown."""

    upstream: Upstream
    fleet: Fleet
    scheduler: Scheduler


class Bridge:
    """One app's shared state; ``runtime`` is set by the lifespan."""

    def __init__(self, settings: Settings, metrics: Metrics, sink: RecordSink | None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.sink = sink
        self.decisions = DecisionLog(settings.decisions_capacity)
        self.runtime: Runtime | None = None
        self.draining = False

    def rt(self) -> Runtime:
        if self.runtime is None:
            raise Unavailable("the bridge is not running", retry_after=1)
        return self.runtime
