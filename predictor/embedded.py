"""The predictor inside the bridge: the same core over an ``EventBus`` (no Faust).

Theory of operation
-------------------
When Kafka is not configured the bridge publishes its access log and model-state
events on the in-process ``MemoryBus``; :class:`EmbeddedPredictor` is one task, owned
by the bridge's lifespan, that reads them as the consumer group ``alb-predictor``,
feeds the pure core (one monolithic :class:`~predictor.core.PredictorState`, in
memory: one process sees every session), and publishes the prefetch and warm-cache
events back on the bus for the bridge's consumer.

One loop, in the commit order of STYLE 7: take what is available (at most
``batch_max`` records, waiting up to the next tick), step the core per record, tick
when ``tick_interval_s`` has passed, publish the resulting events and wait for the bus
to acknowledge them, then commit. A failed publish is retried (the events are kept,
the records not committed) before anything else is read. Redelivered records (a
commit that failed) are recognised by their offset and not counted twice. Prefetches
of models that the latest model-state events show loaded are dropped, and so are
outputs that expired already (a backlog read after a restart).

State is memory only: a restart starts from an empty state and resumes after the
last commit. Over a ``KafkaBus`` the class works too (tests do it), but with more than
one member in the group each sees only its partitions; a fleet of bridges uses the
Faust app (:mod:`predictor.stream`) instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Self

import orjson
from pydantic import ValidationError

from common.tasks import cancel_and_wait
from ingest.bus import BusError, Delivery, EventBus, Record, Subscription
from ingest.messages import AccessLogEvent, ModelStateEvent, Topic
from predictor.codec import from_access_log, prefetch_event, warm_cache_event
from predictor.core import (
    Output,
    PredictorState,
    Prefetch,
    WarmCache,
    new_state,
    reuse_probability,
    step,
    tick,
)
from predictor.core.config import PredictorConfig
from predictor.core.records import RecordError

__all__ = ["GROUP_ID", "EmbeddedPredictor"]

log = logging.getLogger(__name__)
GROUP_ID = "alb-predictor"


class EmbeddedPredictor:
    """The core as a background task over ``bus``.

    ``async with EmbeddedPredictor(bus, config, producer_id):`` or ``start()`` /
    ``stop()``. ``start`` returns once the subscription is in place (records published
    afterwards are seen). ``clock`` gives the wall-clock seconds used for ticks, the
    events' ``ts`` and the staleness check (tests pass their own).
    """

    def __init__(
        self,
        bus: EventBus,
        config: PredictorConfig | None = None,
        producer_id: str = "alb-bridge",
        *,
        group_id: str = GROUP_ID,
        access_log_topic: str = Topic.ACCESS_LOG.value,
        model_state_topic: str = Topic.MODEL_STATE.value,
        prefetch_topic: str = Topic.PREFETCH.value,
        warm_cache_topic: str = Topic.WARM_CACHE.value,
        tick_interval_s: float = 5.0,
        batch_max: int = 500,
        retry_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bus = bus
        self.config = config or PredictorConfig()
        self.producer_id = producer_id
        self.group_id = group_id
        self._access = access_log_topic
        self._model_state = model_state_topic
        self._topics = {Topic.PREFETCH: prefetch_topic, Topic.WARM_CACHE: warm_cache_topic}
        self.tick_interval_s = tick_interval_s
        self.batch_max = batch_max
        self.retry_s = retry_s
        self.clock = clock
        self.state: PredictorState = new_state(self.config)
        self.loaded: dict[str, set[str]] = {}
        self.published = 0
        self.rejected = 0
        self.duplicates = 0
        self._applied: dict[tuple[str, int], int] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._stopping = asyncio.Event()

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Join the group and start the loop; returns once subscribed."""
        if self._task is not None:
            raise RuntimeError("EmbeddedPredictor already started")
        self._stopping.clear()
        self._ready = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(), name="alb-embedded-predictor")
        ready = self._ready
        done, _ = await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            self._task.result()  # raises what stopped it

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Finish the batch in hand (publish, commit), leave the group; cancel after
        ``timeout_s``."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout_s)
        except TimeoutError:
            await cancel_and_wait(task)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def reuse_probability(self, model: str) -> float:
        """P(``model`` is requested within the reuse horizon), for eviction value."""
        return reuse_probability(self.state, model, self.clock())

    # --- the loop -------------------------------------------------------------------

    async def _run(self) -> None:
        topics = [self._access, self._model_state]
        async with self.bus.subscribe(topics, self.group_id) as sub:
            assert self._ready is not None
            self._ready.set_result(None)
            next_tick = self.clock() + self.tick_interval_s
            while not self._stopping.is_set():
                wait_s = max(0.0, min(next_tick - self.clock(), 0.5))
                batch = await sub.getmany(wait_s, self.batch_max)
                outputs: list[Output] = []
                for delivery in batch:
                    outputs.extend(self._apply(delivery))
                now = self.clock()
                if now >= next_tick:
                    self.state, out = tick(self.state, now)
                    outputs.extend(out)
                    next_tick = now + self.tick_interval_s
                published = await self._publish(self._records(outputs, now))
                if batch and published:
                    await self._commit(sub)

    def _apply(self, delivery: Delivery) -> list[Output]:
        where = (delivery.topic, delivery.partition)
        if delivery.offset <= self._applied.get(where, -1):
            self.duplicates += 1
            return []
        self._applied[where] = delivery.offset
        try:
            if delivery.topic == self._model_state:
                self._model_state_event(delivery.value)
                return []
            record = from_access_log(_parse_access(delivery.value))
        except (ValueError, ValidationError, RecordError) as exc:
            self.rejected += 1
            log.warning("predictor: skipped a bad record at %s: %s", where, exc)
            return []
        self.state, out = step(self.state, record)
        return out

    def _model_state_event(self, value: bytes) -> None:
        data = orjson.loads(value)
        if not isinstance(data, dict):
            raise ValueError("a model-state event must be a JSON object")
        fields = ModelStateEvent.model_fields
        event = ModelStateEvent.model_validate({k: v for k, v in data.items() if k in fields})
        daemons = self.loaded.setdefault(event.model, set())
        if event.state == "loaded":
            daemons.add(event.daemon)
        else:
            daemons.discard(event.daemon)

    def _records(self, outputs: list[Output], now: float) -> list[Record]:
        ts = datetime.fromtimestamp(now, tz=UTC)
        records = []
        for out in outputs:
            if not isinstance(out, Prefetch | WarmCache):
                continue
            if self.loaded.get(out.model) or out.expires_at <= now:
                continue
            event = (
                prefetch_event(out, producer=self.producer_id, ts=ts)
                if isinstance(out, Prefetch)
                else warm_cache_event(out, producer=self.producer_id, ts=ts)
            )
            records.append(Record(self._topics[event.TOPIC], event.key(), event.to_json()))
        return records

    async def _publish(self, records: list[Record]) -> bool:
        """Publish until acknowledged; False when given up (stopping, or refused for
        good): the batch is then not committed."""
        while records:
            try:
                await self.bus.publish_many(records)
            except BusError as exc:
                if not exc.retriable or self._stopping.is_set():
                    log.warning("predictor: dropped %d events: %r", len(records), exc)
                    return False
                log.warning("predictor: publish failed, retrying: %r", exc)
                await asyncio.sleep(self.retry_s)
                continue
            self.published += len(records)
            return True
        return True

    async def _commit(self, sub: Subscription) -> None:
        try:
            await sub.commit()
        except BusError as exc:  # redelivered later; _applied keeps it from counting twice
            log.warning("predictor: commit failed: %r", exc)


def _parse_access(value: bytes) -> AccessLogEvent:
    data = orjson.loads(value)
    if not isinstance(data, dict):
        raise ValueError("an access-log event must be a JSON object")
    fields = AccessLogEvent.model_fields
    return AccessLogEvent.model_validate({k: v for k, v in data.items() if k in fields})
