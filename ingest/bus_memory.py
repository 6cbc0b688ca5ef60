"""In-process ``EventBus``: the embedded default, with Kafka's semantics in miniature.

Theory of operation: a topic is a list of partitions, each an append-only list of
``Delivery`` with a base offset (the oldest records are trimmed past
``max_records_per_partition``, as retention would). A key picks its partition by
CRC-32, so one key keeps its order. A group keeps committed offsets and its
members; whenever a member joins or leaves, the group rebalances: partitions are
dealt round-robin to members in join order and every member restarts each
partition it owns from the committed offset (or the reset point), exactly like an
eager Kafka rebalance. One ``asyncio.Condition`` wakes waiting members on publish,
rebalance and close. Everything runs on one event loop; no locks are needed.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from ingest.bus import BusUnavailable, CommitFailed, Delivery, Record, as_bytes
from ingest.messages import Event

TopicPartition = tuple[str, int]


@dataclass
class _Partition:
    base: int = 0  # offset of records[0]
    records: list[Delivery] = field(default_factory=list)

    @property
    def end(self) -> int:
        return self.base + len(self.records)


@dataclass
class _Group:
    committed: dict[TopicPartition, int] = field(default_factory=dict)
    members: list[MemorySubscription] = field(default_factory=list)


class MemoryBus:
    """An ``EventBus`` in this process. ``partitions`` is every topic's partition count."""

    def __init__(self, *, partitions: int = 3, max_records_per_partition: int = 100_000) -> None:
        self._partitions = partitions
        self._max_records = max_records_per_partition
        self._topics: dict[str, list[_Partition]] = {}
        self._groups: dict[str, _Group] = {}
        self._round_robin = itertools.count()
        self._changed = asyncio.Condition()
        self._closed = False

    def _topic(self, name: str) -> list[_Partition]:
        if name not in self._topics:
            self._topics[name] = [_Partition() for _ in range(self._partitions)]
        return self._topics[name]

    def _partition_for(self, key: str | None) -> int:
        if key is None:
            return next(self._round_robin) % self._partitions
        return zlib.crc32(key.encode()) % self._partitions

    async def publish(self, topic: str, key: str | None, value: bytes | Event) -> None:
        await self.publish_many([Record(topic, key, as_bytes(value))])

    async def publish_many(self, records: Sequence[Record]) -> None:
        if self._closed:
            raise BusUnavailable("the in-process bus is closed")
        now_ms = int(time.time() * 1000)
        for record in records:
            number = self._partition_for(record.key)
            part = self._topic(record.topic)[number]
            part.records.append(
                Delivery(record.topic, number, part.end, record.key, record.value, now_ms)
            )
            if len(part.records) > self._max_records:
                drop = len(part.records) - self._max_records
                del part.records[:drop]
                part.base += drop
        await self._notify()

    def subscribe(
        self, topics: Sequence[str], group_id: str, *, from_beginning: bool = True
    ) -> MemorySubscription:
        return MemorySubscription(self, list(topics), group_id, from_beginning)

    async def close(self) -> None:
        self._closed = True
        await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # --- group membership (called by MemorySubscription) -----------------------------

    async def _join(self, member: MemorySubscription) -> None:
        self._groups.setdefault(member.group_id, _Group()).members.append(member)
        self._rebalance(member.group_id)
        await self._notify()

    async def _leave(self, member: MemorySubscription) -> None:
        group = self._groups[member.group_id]
        group.members.remove(member)
        self._rebalance(member.group_id)
        await self._notify()

    def _rebalance(self, group_id: str) -> None:
        group = self._groups[group_id]
        owned: dict[MemorySubscription, list[TopicPartition]] = {m: [] for m in group.members}
        topics = sorted({t for m in group.members for t in m.topics})
        for topic in topics:
            candidates = [m for m in group.members if topic in m.topics]
            for number in range(len(self._topic(topic))):
                owned[candidates[number % len(candidates)]].append((topic, number))
        for member, partitions in owned.items():
            member._assign({tp: self._start(group, tp, member) for tp in partitions})

    def _start(self, group: _Group, tp: TopicPartition, member: MemorySubscription) -> int:
        part = self._topic(tp[0])[tp[1]]
        if tp in group.committed:
            return max(group.committed[tp], part.base)
        return part.base if member.from_beginning else part.end

    def _fetch(self, positions: dict[TopicPartition, int], limit: int) -> list[Delivery]:
        out: list[Delivery] = []
        for (topic, number), position in positions.items():
            part = self._topic(topic)[number]
            start = max(position, part.base)  # trimmed away: jump to the oldest kept
            out.extend(part.records[start - part.base : start - part.base + limit - len(out)])
            if len(out) >= limit:
                break
        return out

    def _commit(self, member: MemorySubscription, offsets: dict[TopicPartition, int]) -> None:
        group = self._groups[member.group_id]
        if member not in group.members or not offsets.keys() <= member.positions.keys():
            raise CommitFailed("partition no longer assigned to this member")
        group.committed.update(offsets)


class MemorySubscription:
    """One member of a group on a ``MemoryBus``."""

    def __init__(
        self, bus: MemoryBus, topics: list[str], group_id: str, from_beginning: bool
    ) -> None:
        self._bus = bus
        self.topics = topics
        self.group_id = group_id
        self.from_beginning = from_beginning
        self.positions: dict[TopicPartition, int] = {}
        self._open = False

    def _assign(self, positions: dict[TopicPartition, int]) -> None:
        self.positions = positions

    async def __aenter__(self) -> Self:
        await self._bus._join(self)
        self._open = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._open:
            self._open = False
            await self._bus._leave(self)

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        while self._open:
            for delivery in await self.getmany(1.0):
                yield delivery

    async def getmany(self, timeout_s: float, max_records: int = 500) -> list[Delivery]:
        deadline = asyncio.get_running_loop().time() + timeout_s
        async with self._bus._changed:
            while True:
                batch = self._bus._fetch(self.positions, max_records) if self._open else []
                remaining = deadline - asyncio.get_running_loop().time()
                if batch or remaining <= 0 or self._bus._closed or not self._open:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        await self._bus._changed.wait()
                except TimeoutError:
                    break
        for delivery in batch:
            self.positions[(delivery.topic, delivery.partition)] = delivery.offset + 1
        return batch

    async def commit(self, delivery: Delivery | None = None) -> None:
        if delivery is None:
            offsets = dict(self.positions)
        else:
            offsets = {(delivery.topic, delivery.partition): delivery.offset + 1}
        self._bus._commit(self, offsets)
