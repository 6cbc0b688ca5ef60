"""Loss-free, off-the-request-path publishing: a bounded queue, a sender task, a spool.

Theory of operation. ``offer`` never waits: it puts the event in a bounded
in-memory queue, or, when the queue is full or the spool is not empty, appends it
to the disk spool. One background task sends the queue's head to the bus in
batches and, once the queue is empty, the spool's oldest records. The invariant
that keeps order per key: **everything in the spool is newer than everything in
the queue** (the queue only takes events while the spool is empty; once the spool
holds anything, new events follow it there). So:

- a batch that fails (error, or no acknowledgement within ``send_timeout_s``)
  puts the whole queue back *in front of* the spool (``Spool.prepend``) and the
  sender retries the spool with exponential backoff (``retry_initial_s`` ..
  ``retry_max_s``); while the bus is down, new events go straight to disk;
- when the bus returns, the spool drains in order, and the queue is used again
  only once the spool is empty.

An event is dropped only when the spool refuses it for lack of room
(``max_bytes``), the bus refuses a record for good (too large), the spool has
a damaged region (after a machine crash), or the disk fails; each is counted in
``alb_events_dropped_total{topic,reason}`` and logged (a summary at most every
``drop_log_interval_s``). Delivery is at least once: a batch that timed out may
have arrived and is sent again (consumers are idempotent on ``event_id``).

``close`` gives the queue ``close_timeout_s`` to reach the bus, then puts what is
left in front of the spool; a restarted sender drains the spool first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter as Tally
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Self

from prometheus_client import CollectorRegistry, Counter, Gauge

from common.tasks import cancel_and_wait
from ingest.bus import BusError, BusRejected, EventBus, Record
from ingest.messages import Event
from ingest.spool import Spool

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SenderConfig:
    """Limits and timings of the sender."""

    max_queue: int = 10_000
    batch_records: int = 500
    #: A partial batch waits this long for more events before it is sent (fewer, larger
    #: produce requests: less CPU here and on the broker); 0: send at once.
    linger_s: float = 0.0
    send_timeout_s: float = 5.0
    retry_initial_s: float = 0.2
    retry_max_s: float = 5.0
    close_timeout_s: float = 5.0
    drop_log_interval_s: float = 10.0


class SenderMetrics:
    """The sender's collectors, registered on the registry the app owns."""

    def __init__(
        self, registry: CollectorRegistry, spool: Spool, queue: deque[Event | Record]
    ) -> None:
        self.queued = Gauge(
            "alb_events_queued", "Events waiting in the in-memory queue.", registry=registry
        )
        self.queued.set_function(lambda: len(queue))
        self.spooled = Counter(
            "alb_events_spooled", "Events written to the disk spool.", ["topic"], registry=registry
        )
        self.sent = Counter(
            "alb_events_sent", "Events acknowledged by the bus.", ["topic"], registry=registry
        )
        self.dropped = Counter(
            "alb_events_dropped",
            "Events lost: spool_full, rejected, spool_corrupt, spool_error, closed.",
            ["topic", "reason"],
            registry=registry,
        )
        self.send_failures = Counter(
            "alb_events_send_failures",
            "Batches the bus did not acknowledge (then spooled and retried).",
            registry=registry,
        )
        self.spool_bytes = Gauge(
            "alb_events_spool_bytes", "Bytes in the disk spool.", registry=registry
        )
        self.spool_bytes.set_function(lambda: spool.nbytes)


def _record(item: Event | Record) -> Record:
    return item if isinstance(item, Record) else Record.of(item)


class Sender:
    """Owns the path from ``offer`` to the bus. ``async with Sender(...) as sender``."""

    def __init__(
        self,
        bus: EventBus,
        spool: Spool,
        registry: CollectorRegistry,
        config: SenderConfig | None = None,
    ) -> None:
        self.config = config or SenderConfig()
        self._bus = bus
        self._spool = spool
        self._queue: deque[Event | Record] = deque()
        self.metrics = SenderMetrics(registry, spool, self._queue)
        self._wake = asyncio.Event()
        self._queue_empty = asyncio.Event()
        self._queue_empty.set()
        self._idle = asyncio.Event()  # set by the task when queue and spool are empty
        self._task: asyncio.Task[None] | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._closed = False
        self._drops_unlogged: Tally[str] = Tally()
        self._last_drop_log = 0.0
        self._corrupt_seen = spool.corrupt_regions

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def start(self) -> None:
        """Start the background sender (resuming whatever the spool holds)."""
        if self._task is None:
            loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._run(), name="alb-sender")
            self._sync_task = loop.create_task(self._sync_loop(), name="alb-spool-sync")

    # --- the request path -------------------------------------------------------------

    def offer(self, event: Event | Record) -> bool:
        """Hand over an event without waiting. False only if it was dropped (and counted)."""
        if self._closed:
            self._drop([_record(event)], "closed")
            return False
        if len(self._queue) < self.config.max_queue and self._spool.empty:
            self._queue.append(event)
            self._queue_empty.clear()
        else:
            record = _record(event)
            try:
                stored = self._spool.append([record])
            except OSError as exc:
                log.error("event spool write failed: %r", exc)
                stored = 0
                self._drop([record], "spool_error")
            else:
                if stored:
                    self.metrics.spooled.labels(record.topic).inc()
                else:
                    self._drop([record], "spool_full")
            if not stored:
                return False
        self._idle.clear()
        self._wake.set()
        return True

    # --- the sender task --------------------------------------------------------------

    async def _run(self) -> None:
        delay = 0.0
        while True:
            try:
                if delay:
                    await asyncio.sleep(delay)
                if self.config.linger_s and self._lingers():
                    await asyncio.sleep(self.config.linger_s)
                progressed = await self._step()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug or the disk: keep the task alive, back off
                log.exception("event sender step failed")
                progressed = False
            if progressed is None:  # idle
                delay = 0.0
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
            elif progressed:
                delay = 0.0
            else:
                self.metrics.send_failures.inc()
                delay = min(max(delay * 2, self.config.retry_initial_s), self.config.retry_max_s)
            self._account_corruption()

    def _lingers(self) -> bool:
        """Worth waiting for more: a partial batch in the queue, nothing in the spool."""
        return 0 < len(self._queue) < self.config.batch_records and self._spool.empty

    async def _sync_loop(self) -> None:
        """fsync the spool in a worker thread every ``fsync_interval_s`` (policy ``interval``).

        Never cancelled (a thread may be syncing descriptors): ``close`` asks it to stop.
        """
        interval = self._spool.config.fsync_interval_s
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._stopping.wait()
            try:
                await self._spool.sync_in_thread_if_due()
            except OSError as exc:
                log.error("event spool fsync failed: %r", exc)

    async def _step(self) -> bool | None:
        """Send one batch: True sent, False failed, None nothing to do."""
        if self._queue:
            items = list(islice(self._queue, self.config.batch_records))
            records = [_record(item) for item in items]
            done = await self._send(records)
            for _ in range(done):
                self._queue.popleft()
            if not self._queue:
                self._queue_empty.set()
            if done == len(records):
                return True
            self._spill_queue()
            return False
        batch = self._spool.peek(self.config.batch_records)
        if batch is None:
            return None
        done = await self._send(batch.records) if batch.records else 0
        self._spool.commit(batch, done if done < len(batch.records) else None)
        return done == len(batch.records)

    async def _send(self, records: Sequence[Record]) -> int:
        """How many records from the front are done (acknowledged, or dropped as refused)."""
        try:
            async with asyncio.timeout(self.config.send_timeout_s):
                await self._bus.publish_many(records)
        except BusRejected:
            if len(records) == 1:
                log.error("bus refused an event for good (topic %s)", records[0].topic)
                self._drop(records, "rejected")
                return 1
            return await self._send_one_by_one(records)
        except (BusError, TimeoutError) as exc:
            log.warning("event bus unavailable, spooling: %s", exc or "send timed out")
            return 0
        self._count_sent(records)
        return len(records)

    async def _send_one_by_one(self, records: Sequence[Record]) -> int:
        for done, record in enumerate(records):
            if await self._send([record]) == 0:
                return done
        return len(records)

    def _count_sent(self, records: Sequence[Record]) -> None:
        for topic, n in Tally(r.topic for r in records).items():
            self.metrics.sent.labels(topic).inc(n)

    def _spill_queue(self) -> None:
        """Put the whole queue in front of the spool (it is older than the spool)."""
        records = [_record(item) for item in self._queue]
        self._queue.clear()
        self._queue_empty.set()
        try:
            stored = self._spool.prepend(records)
        except OSError as exc:
            log.error("event spool write failed: %r", exc)
            self._drop(records, "spool_error")
            return
        for topic, n in Tally(r.topic for r in records[:stored]).items():
            self.metrics.spooled.labels(topic).inc(n)
        self._drop(records[stored:], "spool_full")

    # --- drops ------------------------------------------------------------------------

    def _drop(self, records: Sequence[Record], reason: str) -> None:
        if not records:
            return
        for topic, n in Tally(r.topic for r in records).items():
            self.metrics.dropped.labels(topic, reason).inc(n)
        self._drops_unlogged[reason] += len(records)
        now = time.monotonic()
        if now - self._last_drop_log >= self.config.drop_log_interval_s:
            self._last_drop_log = now
            summary = ", ".join(f"{n} {why}" for why, n in sorted(self._drops_unlogged.items()))
            log.error("events dropped: %s (spool %d bytes)", summary, self._spool.nbytes)
            self._drops_unlogged.clear()

    def _account_corruption(self) -> None:
        fresh = self._spool.corrupt_regions - self._corrupt_seen
        if fresh:
            self._corrupt_seen = self._spool.corrupt_regions
            self.metrics.dropped.labels("unknown", "spool_corrupt").inc(fresh)
            log.error("event spool: %d damaged region(s) skipped", fresh)

    # --- lifecycle --------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Events in the in-memory queue (not yet acknowledged, not spooled)."""
        return len(self._queue)

    @property
    def idle(self) -> bool:
        """Nothing waiting: queue and spool empty."""
        return not self._queue and self._spool.empty

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until everything offered so far reached the bus; False on timeout."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Give the queue ``close_timeout_s`` to reach the bus, spool the rest, stop."""
        if self._closed:
            return
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.close_timeout_s):
                    await self._queue_empty.wait()
            await cancel_and_wait(self._task)
        self._stopping.set()
        if self._sync_task is not None:
            await self._sync_task
        self._closed = True
        if self._queue:
            self._spill_queue()
        if self._drops_unlogged:
            log.error("events dropped: %s", dict(self._drops_unlogged))
        self._spool.close()
