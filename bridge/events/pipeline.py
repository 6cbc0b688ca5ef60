"""The bridge's event pipeline: access log, model state and decisions onto the bus.

Theory of operation. ``open_events(settings, registry)`` is entered by the app's
lifespan and owns, in creation order: the bus (``KafkaBus`` when
``ALB_KAFKA_BOOTSTRAP_SERVERS`` is set, else the embedded ``MemoryBus``), the disk
spool, the ``Sender`` (bounded queue -> bus, spilling to the spool while Kafka is
down), the system-prompt registry (Redis when ``ALB_REDIS_URL`` is set, else in
memory) and the *recorder* task. It closes them in reverse: the recorder drains
what is left, the sender gets ``events_close_timeout`` to deliver (the rest stays
in the spool for the next start), then the registry and the bus close.

Off the request path: the proxy, the decision log and the loader call
``request_finished`` / ``decided`` / ``state_changed`` synchronously; each only
appends to one FIFO and wakes the recorder, which builds the events
(``bridge.events.builders``), registers system prompts and offers the events to the
sender (``offer`` never waits). One FIFO keeps every key's order. Should the
recorder fall ``events_queue_max`` behind, the caller converts inline instead of
queueing: slower, never lossy.

The bus is public (``Events.bus``): anything started in the lifespan may subscribe
to ``alb.access-log.v1`` on it, e.g. the embedded predictor, exactly as a Kafka
consumer group would.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge
from redis.asyncio import Redis

from bridge.events.builders import access_log_record, decision_event, model_state_event
from bridge.events.shipper import Shipper, ShipperConfig, restarts_counter
from bridge.events.sink import RequestRecord
from bridge.scheduling.decisions import Decision
from bridge.scheduling.loader import StateChange
from bridge.settings import Settings
from common.tasks import cancel_and_wait
from ingest.bus import BusUnavailable, EventBus, Record
from ingest.bus_kafka import KafkaBus, KafkaConfig
from ingest.bus_memory import MemoryBus
from ingest.errors import RegistryUnavailable
from ingest.messages import Event
from ingest.prompts import MemoryPromptRegistry, PromptRegistry, RedisPromptRegistry
from ingest.sender import Sender, SenderConfig
from ingest.spool import Spool, SpoolConfig
from ingest.topics import ensure_topics

log = logging.getLogger(__name__)
Item = RequestRecord | Decision | StateChange
_YIELD_EVERY = 256
#: The recorder wakes at most this often: records are handled in batches, so a busy
#: bridge pays one wake-up (and the sender one send) per batch, not per request.
_BATCH_S = 0.05
_WARN_INTERVAL_S = 30.0
_TOPICS_RETRY_S = 5.0


class EventsMetrics:
    """Collectors of the pipeline (the sender registers its own)."""

    def __init__(self, registry: CollectorRegistry, backlog: deque[Item]) -> None:
        self.backlog = Gauge(
            "alb_events_backlog",
            "Records waiting for the recorder to build their events.",
            registry=registry,
        )
        self.backlog.set_function(lambda: len(backlog))
        self.built = Counter(
            "alb_events_built",
            "Events built and offered to the sender.",
            ["kind"],
            registry=registry,
        )
        self.unpublished = Counter(
            "alb_events_unpublished",
            "Records with no event on the topics (decisions about no model), by kind.",
            ["kind"],
            registry=registry,
        )
        self.failures = Counter(
            "alb_events_build_failures",
            "Records the recorder could not turn into an event (a bug: logged).",
            registry=registry,
        )
        self.clamped = Counter(
            "alb_events_clamped",
            "Access-log fields clamped or nulled to fit the event (a client's huge number).",
            ["field"],
            registry=registry,
        )
        self.registry_errors = Counter(
            "alb_prompt_registry_errors",
            "System prompts the registry could not store (Redis unreachable).",
            registry=registry,
        )


class Events:
    """The running pipeline (see the module docstring)."""

    def __init__(
        self,
        bus: EventBus,
        sender: Sender | Shipper,
        prompts: PromptRegistry,
        producer: str,
        registry: CollectorRegistry,
        *,
        backlog_max: int,
    ) -> None:
        self.bus = bus
        self.sender = sender
        #: With a shipper, request records go straight to it (built in its process).
        self._shipper = sender if isinstance(sender, Shipper) else None
        self._registering: set[asyncio.Task[None]] = set()
        self.prompts = prompts
        self.producer = producer
        self._backlog: deque[Item] = deque()
        self._backlog_max = backlog_max
        self.metrics = EventsMetrics(registry, self._backlog)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._built = {
            kind: self.metrics.built.labels(kind)
            for kind in ("access_log", "decision", "model_state")
        }
        if self._shipper is not None:
            self._shipper.built = self._built["access_log"]
        self._last_warning = 0.0

    @property
    def backlog(self) -> int:
        """Records not yet turned into events."""
        return len(self._backlog)

    # --- called synchronously by the proxy, the decision log and the loader ------------
    def request_finished(self, record: RequestRecord) -> None:
        """The ``RecordSink``: one access-log event per finished request."""
        if self._shipper is not None:
            self._shipper.offer_request(record)  # counted as built when batched
            return
        self._put(record)

    def register_prompt(self, system: str) -> None:
        """Register a system prompt the shipper saw (in a task: the registry may be Redis)."""
        task = asyncio.get_running_loop().create_task(self._register(system))
        self._registering.add(task)
        task.add_done_callback(self._registering.discard)

    def build_failed(self) -> None:
        """The shipper could not build a record's event (it logged why)."""
        self.metrics.failures.inc()

    def clamped(self, field: str) -> None:
        """A field of an access-log event was clamped to fit (the event was written)."""
        self.metrics.clamped.labels(field=field).inc()

    def decided(self, decision: Decision) -> None:
        self._put(decision)

    def state_changed(self, change: StateChange) -> None:
        self._put(change)

    def _put(self, item: Item) -> None:
        if len(self._backlog) < self._backlog_max:
            self._backlog.append(item)
            if not self._wake.is_set():
                self._wake.set()
        else:  # the recorder is far behind: build it here rather than lose it
            self._offer(item, register=False)

    # --- the recorder -------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="alb-recorder")

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(_BATCH_S)  # let the batch fill (later puts do not wake us)
            self._wake.clear()
            await self._drain()

    async def _drain(self) -> None:
        done = 0
        while self._backlog:
            item = self._backlog.popleft()
            system = self._offer(item, register=True)
            if system is not None:
                await self._register(system)
            done += 1
            if done % _YIELD_EVERY == 0:
                await asyncio.sleep(0)

    def _offer(self, item: Item, *, register: bool) -> str | None:
        """Build ``item``'s event and offer it; return a system prompt to register."""
        try:
            event: Event | Record | None
            system = None
            if isinstance(item, RequestRecord):
                event, system = access_log_record(item, self.producer, on_clamped=self.clamped)
                kind = "access_log"
            elif isinstance(item, Decision):
                event, kind = decision_event(item, self.producer), "decision"
                if event is None:
                    self.metrics.unpublished.labels(item.kind).inc()
                    return None
            else:
                event, kind = model_state_event(item, self.producer), "model_state"
        except Exception:
            self.metrics.failures.inc()
            log.exception("could not build the event of %r", type(item).__name__)
            return None
        self.sender.offer(event)
        self._built[kind].inc()
        return system if register else None

    async def _register(self, system: str) -> None:
        try:
            await self.prompts.put(system)
        except RegistryUnavailable as exc:  # warm-cache events for it will be skipped
            self.metrics.registry_errors.inc()
            now = time.monotonic()
            if now - self._last_warning >= _WARN_INTERVAL_S:
                self._last_warning = now
                log.warning("system-prompt registry unavailable: %r", exc)

    async def aclose(self) -> None:
        """Stop the recorder after it built everything queued so far."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        await self._drain()


def default_producer(settings: Settings) -> str:
    """``alb-bridge/<version> <hostname>:<port>`` unless ``ALB_PRODUCER_ID`` says otherwise."""
    if settings.producer_id:
        return settings.producer_id
    try:
        ver = version("async-load-bridge")
    except PackageNotFoundError:
        ver = "0"
    return f"alb-bridge/{ver} {socket.gethostname()}:{settings.port}"


def _state_home() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "alb" / "spool"


@asynccontextmanager
async def open_events(settings: Settings, registry: CollectorRegistry) -> AsyncIterator[Events]:
    """Create the pipeline's resources; close them in reverse order on exit."""
    producer = default_producer(settings)
    temp_dir: str | None = None
    bus: EventBus
    if settings.kafka_bootstrap_servers:
        bus = KafkaBus(
            KafkaConfig(settings.kafka_bootstrap_servers, client_id=producer.split(" ")[0])
        )
        spool_dir = (
            Path(settings.events_spool_dir)
            if settings.events_spool_dir
            else (_state_home() / re.sub(r"[^A-Za-z0-9_.-]+", "_", producer))
        )
    else:
        # Embedded: an in-process bus never fails, so the spool stays empty; bounded
        # retention keeps the process's memory flat.
        bus = MemoryBus(max_records_per_partition=10_000)
        if settings.events_spool_dir:
            spool_dir = Path(settings.events_spool_dir)
        else:
            temp_dir = tempfile.mkdtemp(prefix="alb-spool-")
            spool_dir = Path(temp_dir)
    redis: Redis | None = None
    try:
        sender: Sender | Shipper
        restarts = restarts_counter(registry)  # in every mode: alert rules name it
        if settings.kafka_bootstrap_servers and settings.events_shipper:
            # The KafkaBus above then only serves subscriptions (the prefetch consumer).
            sender = Shipper(
                ShipperConfig(
                    bootstrap_servers=settings.kafka_bootstrap_servers,
                    client_id=producer.split(" ")[0],
                    producer=producer,
                    spool_dir=str(spool_dir),
                    spool_max_bytes=settings.spool_max_bytes(),
                    queue_max=settings.events_queue_max,
                    close_timeout_s=settings.events_close_timeout,
                    log_level=logging.getLogger().getEffectiveLevel(),
                ),
                registry,
                # ``events`` is created below, before the child can report anything.
                on_prompt=lambda text: events.register_prompt(text),  # noqa: PLW0108
                on_failed=lambda: events.build_failed(),  # noqa: PLW0108
                on_clamped=lambda field: events.clamped(field),  # noqa: PLW0108
                restarts=restarts,
            )
        else:
            sender = Sender(
                bus,
                Spool(SpoolConfig(spool_dir, max_bytes=settings.spool_max_bytes())),
                registry,
                SenderConfig(
                    max_queue=settings.events_queue_max,
                    close_timeout_s=settings.events_close_timeout,
                ),
            )
        prompts: PromptRegistry
        if settings.redis_url is not None:
            redis = Redis.from_url(
                settings.redis_url.get_secret_value(),
                socket_connect_timeout=2,
                socket_timeout=2,
            )
            prompts = RedisPromptRegistry(redis)
        else:
            prompts = MemoryPromptRegistry()
        topics: asyncio.Task[None] | None = None
        async with sender:
            events = Events(
                bus, sender, prompts, producer, registry, backlog_max=settings.events_queue_max
            )
            events.start()
            if settings.kafka_bootstrap_servers and settings.kafka_create_topics:
                topics = asyncio.get_running_loop().create_task(
                    _create_topics(settings.kafka_bootstrap_servers)
                )
            try:
                yield events
            finally:
                if topics is not None:
                    await cancel_and_wait(topics)
                await events.aclose()
    finally:
        if redis is not None:
            await redis.aclose()
        await bus.close()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)


async def _create_topics(bootstrap: str) -> None:
    """Create the bridge's topics once Kafka answers (existing ones are left alone)."""
    while True:
        try:
            states = await ensure_topics(bootstrap)
        except BusUnavailable as exc:
            log.warning("could not create the Kafka topics yet: %r", exc)
            await asyncio.sleep(_TOPICS_RETRY_S)
            continue
        for state in states:
            if state.drift:
                drift = "; ".join(state.drift)
                log.warning("topic %s differs from its spec: %s", state.name, drift)
        return
