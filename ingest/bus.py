"""The ``EventBus`` seam: publish records, consume them in groups with explicit commits.

Two implementations keep the same promises (``tests/ingest/test_bus_contract.py``
runs one suite against both): ``ingest.bus_kafka.KafkaBus`` (aiokafka) and
``ingest.bus_memory.MemoryBus`` (in-process, the embedded default).

Promises:

- ``publish`` / ``publish_many`` return once the bus has the records durably
  (Kafka: ``acks=all``) and raise a ``BusError`` otherwise. After an error some of
  the records may still have been delivered: delivery is at least once, and
  consumers are idempotent on ``event_id``.
- Records with the same key go to the same partition and are read in the order
  they were published (``publish_many`` keeps list order).
- A group shares the partitions of its topics among its members; each record is
  handed to one member of each group. A member commits what it has processed
  (``commit``); after it leaves or crashes, the group's next owner of the
  partition resumes from the last commit, so uncommitted records are handed again.
- ``subscribe`` returns an async context manager; once entered, the member owns
  its partitions, and a record published afterwards will be delivered to it (or to
  another member of its group). ``from_beginning`` chooses where a group with no
  commit starts: the oldest retained record, or the end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Protocol, Self

import orjson

from ingest.errors import IngestError
from ingest.messages import Event


@dataclass(frozen=True, slots=True)
class Record:
    """One message to publish: topic, key (None lets the bus spread them), JSON bytes."""

    topic: str
    key: str | None
    value: bytes

    @classmethod
    def of(cls, event: Event) -> Record:
        """The record for ``event``: its topic, its DESIGN.md key, its JSON."""
        return cls(event.TOPIC.value, event.key(), event.to_json())


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message handed to a subscriber, with where it sits in the log."""

    topic: str
    partition: int
    offset: int
    key: str | None
    value: bytes
    timestamp_ms: int

    def json(self) -> Any:
        """The decoded value."""
        return orjson.loads(self.value)


class BusError(IngestError):
    """A bus operation failed. ``retriable`` says whether trying again may succeed."""

    retriable: ClassVar[bool] = True


class BusUnavailable(BusError):
    """The bus could not be reached or did not acknowledge in time."""


class BusRejected(BusError):
    """The bus refused the records for good (too large, unknown topic, not allowed)."""

    retriable: ClassVar[bool] = False


class CommitFailed(BusError):
    """The partition was reassigned before the commit: its records will be handed again."""

    retriable: ClassVar[bool] = False


class Subscription(Protocol):
    """A member of a consumer group. Use as ``async with bus.subscribe(...) as sub``."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def __aiter__(self) -> AsyncIterator[Delivery]:
        """Deliveries one by one, waiting for more; ends only when the member closes."""
        ...

    async def getmany(self, timeout_s: float, max_records: int = 500) -> list[Delivery]:
        """What is available now (waiting up to ``timeout_s`` for the first one)."""
        ...

    async def commit(self, delivery: Delivery | None = None) -> None:
        """Mark ``delivery`` and all before it in its partition processed (None: all handed)."""
        ...


class EventBus(Protocol):
    """Publish and subscribe. The owner (the app's lifespan) closes it."""

    async def publish(self, topic: str, key: str | None, value: bytes | Event) -> None:
        """Publish one record and wait for the bus to acknowledge it."""
        ...

    async def publish_many(self, records: Sequence[Record]) -> None:
        """Publish records in order and wait until all are acknowledged."""
        ...

    def subscribe(
        self, topics: Sequence[str], group_id: str, *, from_beginning: bool = True
    ) -> Subscription:
        """A new member of ``group_id`` over ``topics`` (enter it to join)."""
        ...

    async def close(self) -> None:
        """Release connections; pending publishes fail, open subscriptions end."""
        ...


def as_bytes(value: bytes | Event) -> bytes:
    """The JSON of an event, or bytes unchanged."""
    return value.to_json() if isinstance(value, Event) else value
