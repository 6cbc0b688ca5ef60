"""``EventBus`` on Apache Kafka through aiokafka. The only module that touches aiokafka's
producer and consumer errors: they are translated here into ``ingest.bus`` errors.

Theory of operation: the producer is idempotent with ``acks="all"``, a small linger
and lz4 batches; ``publish_many`` fills one producer batch per partition
(``create_batch`` / ``send_batch``, in list order) and waits for one future per batch,
not one per record. It is started lazily on the first publish, so a bridge starts
even when Kafka is down (its sender spools meanwhile). After any failed or
cancelled publish the producer is discarded and a fresh one (new producer id) is
started by the next publish: an idempotent producer whose batches expired can be
left with sequence numbers the broker will not accept, and a clean one avoids
guessing. The discarded producer is stopped in the background; a batch it still
delivers shows up as a duplicate, which consumers absorb (idempotent on
``event_id``). Subscriptions are aiokafka consumers with auto-commit off; entering
one waits until the group coordinator has assigned partitions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.codec import has_lz4, has_zstd
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
)
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from ingest.bus import BusRejected, BusUnavailable, CommitFailed, Delivery, Record, as_bytes
from ingest.messages import Event

log = logging.getLogger(__name__)
_PARTITIONER = DefaultPartitioner()
_KEY_CACHE = 65_536
_PERMANENT = (MessageSizeTooLargeError, RecordTooLargeError, TopicAuthorizationFailedError)


@dataclass(frozen=True, slots=True)
class KafkaConfig:
    """Connection and tuning. Defaults suit the bridge's access log."""

    bootstrap_servers: str
    client_id: str = "alb"
    linger_ms: int = 5
    compression_type: str = "lz4"
    max_batch_size: int = 256 * 1024
    max_request_size: int = 1024 * 1024
    request_timeout_ms: int = 15_000
    """Also how long a discarded producer may keep retrying its last batches."""
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 1_000
    assignment_timeout_s: float = 30.0


class KafkaBus:
    """An ``EventBus`` on Kafka. Owned by a lifespan: ``async with KafkaBus(cfg) as bus``."""

    def __init__(self, config: KafkaConfig) -> None:
        self.config = config
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self._keys: dict[tuple[str, bytes, int], int] = {}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def publish(self, topic: str, key: str | None, value: bytes | Event) -> None:
        await self.publish_many([Record(topic, key, as_bytes(value))])

    async def publish_many(self, records: Sequence[Record]) -> None:
        producer = await self._ensure_producer()
        try:
            pending = [
                await producer.send_batch(batch, topic, partition=partition)
                for topic, partition, batch in await self._batches(producer, records)
            ]
            await asyncio.gather(*pending)
        except _PERMANENT as exc:
            self._discard(producer)
            raise BusRejected(f"Kafka refused the records: {exc!r}") from exc
        except (KafkaError, OSError) as exc:
            self._discard(producer)
            raise BusUnavailable(f"Kafka did not acknowledge: {exc!r}") from exc
        except BaseException:  # cancelled (the sender's timeout): this producer is suspect
            self._discard(producer)
            raise

    async def _batches(
        self, producer: AIOKafkaProducer, records: Sequence[Record]
    ) -> list[tuple[str, int, Any]]:
        """``records`` as producer batches, one open batch per partition, in list order.

        One future per batch instead of one per record; the partition of a key is
        aiokafka's (murmur2 over the sorted partitions, as the Java client), cached.
        """
        out: list[tuple[str, int, Any]] = []
        open_: dict[tuple[str, int], Any] = {}
        topics: dict[str, tuple[int, ...]] = {}
        limit = self.config.max_request_size
        for r in records:
            key = None if r.key is None else r.key.encode()
            partitions = topics.get(r.topic)
            if partitions is None:
                partitions = topics[r.topic] = tuple(sorted(await producer.partitions_for(r.topic)))
            partition = self._partition_of(r.topic, key, partitions)
            if DefaultRecordBatchBuilder.estimate_size_in_bytes(key, r.value, []) > limit:
                raise MessageSizeTooLargeError(f"a {len(r.value)}-byte record on {r.topic}")
            tp = (r.topic, partition)
            batch = open_.get(tp)
            if batch is None or batch.append(timestamp=None, key=key, value=r.value) is None:
                batch = open_[tp] = producer.create_batch()
                out.append((r.topic, partition, batch))
                # An empty batch takes any record up to the request size (checked above).
                batch.append(timestamp=None, key=key, value=r.value)
        return out

    def _partition_of(self, topic: str, key: bytes | None, partitions: tuple[int, ...]) -> int:
        if key is None:
            return random.choice(partitions)  # spreading, not security
        cached = self._keys.get((topic, key, len(partitions)))
        if cached is None:
            if len(self._keys) >= _KEY_CACHE:
                self._keys.clear()
            cached = self._keys[(topic, key, len(partitions))] = _PARTITIONER(
                key, list(partitions), list(partitions)
            )
        return cached

    async def _ensure_producer(self) -> AIOKafkaProducer:
        async with self._starting:
            if self._producer is not None:
                return self._producer
            cfg = self.config
            producer = AIOKafkaProducer(
                bootstrap_servers=cfg.bootstrap_servers,
                client_id=cfg.client_id,
                acks="all",
                enable_idempotence=True,
                linger_ms=cfg.linger_ms,
                compression_type=_compression(cfg.compression_type),
                max_batch_size=cfg.max_batch_size,
                max_request_size=cfg.max_request_size,
                request_timeout_ms=cfg.request_timeout_ms,
            )
            try:
                await producer.start()
            except (KafkaError, OSError) as exc:
                with contextlib.suppress(Exception):
                    await producer.stop()
                raise BusUnavailable(
                    f"cannot reach Kafka at {cfg.bootstrap_servers}: {exc!r}"
                ) from exc
            self._producer = producer
            return producer

    def _discard(self, producer: AIOKafkaProducer) -> None:
        if self._producer is producer:
            self._producer = None
            task = asyncio.get_running_loop().create_task(self._retire(producer))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _retire(self, producer: AIOKafkaProducer) -> None:
        try:
            await producer.stop()
        except Exception as exc:  # it failed already; nothing left to save
            log.debug("discarded Kafka producer stopped with %r", exc)

    def subscribe(
        self, topics: Sequence[str], group_id: str, *, from_beginning: bool = True
    ) -> KafkaSubscription:
        return KafkaSubscription(self.config, list(topics), group_id, from_beginning)

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await self._retire(producer)
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)


class _Assigned(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.event = asyncio.Event()

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.event.clear()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.event.set()


class KafkaSubscription:
    """One member of a consumer group on Kafka (auto-commit off)."""

    def __init__(
        self, config: KafkaConfig, topics: list[str], group_id: str, from_beginning: bool
    ) -> None:
        self._config = config
        self._topics = topics
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=config.bootstrap_servers,
            client_id=config.client_id,
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest" if from_beginning else "latest",
            session_timeout_ms=config.session_timeout_ms,
            heartbeat_interval_ms=config.heartbeat_interval_ms,
            request_timeout_ms=max(config.request_timeout_ms, config.session_timeout_ms + 5000),
        )
        self._listener = _Assigned()

    async def __aenter__(self) -> Self:
        self._consumer.subscribe(self._topics, listener=self._listener)
        try:
            await self._consumer.start()
            async with asyncio.timeout(self._config.assignment_timeout_s):
                await self._listener.event.wait()
            # Resolve the start offsets now, so "published after entering" is delivered.
            for tp in self._consumer.assignment():
                await self._consumer.position(tp)
        except BaseException as exc:
            await self._consumer.stop()
            if isinstance(exc, KafkaError | OSError | TimeoutError):
                raise BusUnavailable(f"cannot join group on Kafka: {exc!r}") from exc
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._consumer.stop()

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        while True:
            for delivery in await self.getmany(1.0):
                yield delivery

    async def getmany(self, timeout_s: float, max_records: int = 500) -> list[Delivery]:
        try:
            batches = await self._consumer.getmany(
                timeout_ms=int(timeout_s * 1000), max_records=max_records
            )
        except (KafkaError, OSError) as exc:
            raise BusUnavailable(f"Kafka fetch failed: {exc!r}") from exc
        return [_delivery(m) for records in batches.values() for m in records]

    async def commit(self, delivery: Delivery | None = None) -> None:
        offsets = (
            None
            if delivery is None
            else {TopicPartition(delivery.topic, delivery.partition): delivery.offset + 1}
        )
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            raise CommitFailed(f"commit refused: {exc!r}") from exc
        except (KafkaError, OSError) as exc:
            raise BusUnavailable(f"commit failed: {exc!r}") from exc


def _compression(wanted: str) -> str:
    """``wanted``, or gzip (stdlib) when aiokafka lacks its codec (cramjam: ``aiokafka[lz4]``)."""
    available = {"lz4": has_lz4, "zstd": has_zstd}.get(wanted)
    if available is None or available():
        return wanted
    log.warning(
        "Kafka compression %s unavailable (install aiokafka[%s]); using gzip", wanted, wanted
    )
    return "gzip"


def _delivery(message: Any) -> Delivery:
    key = message.key.decode() if message.key is not None else None
    return Delivery(
        message.topic, message.partition, message.offset, key, message.value, message.timestamp
    )
