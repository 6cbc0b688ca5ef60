"""One contract, two buses: ``MemoryBus`` and ``KafkaBus`` (real broker, marker ``kafka``)."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest

from ingest.bus import Delivery, Record, Subscription
from tests.ingest import _samples
from tests.ingest.conftest import BusEnv, unique

pytestmark = pytest.mark.timeout(60)


async def drain(sub: Subscription, count: int, timeout_s: float = 20.0) -> list[Delivery]:
    """Read until ``count`` deliveries arrived (fails after ``timeout_s``)."""
    got: list[Delivery] = []
    async with asyncio.timeout(timeout_s):
        while len(got) < count:
            got += await sub.getmany(0.5)
    return got


def by_key(deliveries: list[Delivery]) -> dict[str | None, list[bytes]]:
    out: dict[str | None, list[bytes]] = defaultdict(list)
    for d in deliveries:
        out[d.key].append(d.value)
    return dict(out)


async def test_records_arrive_once_in_order_per_key(bus_env: BusEnv) -> None:
    topic, bus = await bus_env.new_topic(), bus_env.bus
    records = [Record(topic, f"k{i % 5}", f"{i}".encode()) for i in range(60)]
    await bus.publish_many(records[:50])
    for r in records[50:]:
        await bus.publish(r.topic, r.key, r.value)
    async with bus.subscribe([topic], unique("g")) as sub:
        got = await drain(sub, 60)
        assert await sub.getmany(0.3) == []
    assert by_key(got) == by_key([Delivery(topic, 0, 0, r.key, r.value, 0) for r in records])
    assert all(d.topic == topic and d.offset >= 0 and d.timestamp_ms > 0 for d in got)


async def test_events_publish_as_their_json(bus_env: BusEnv) -> None:
    topic, event = await bus_env.new_topic(), _samples.access_log()
    await bus_env.bus.publish(topic, event.key(), event)
    async with bus_env.bus.subscribe([topic], unique("g")) as sub:
        (got,) = await drain(sub, 1)
    assert got.key == "s-1"
    assert got.json()["event_id"] == str(event.event_id)


async def test_a_new_member_resumes_after_the_last_commit(bus_env: BusEnv) -> None:
    topic, group, bus = await bus_env.new_topic(), unique("g"), bus_env.bus
    await bus.publish_many([Record(topic, "one-key", f"{i}".encode()) for i in range(10)])
    async with bus.subscribe([topic], group) as first:
        got = await drain(first, 10)
        await first.commit(got[3])  # processed 0..3; 4..9 handed but not committed
    async with bus.subscribe([topic], group) as second:
        again = await drain(second, 6)
        assert [d.value for d in again] == [f"{i}".encode() for i in range(4, 10)]
        await second.commit()
    async with bus.subscribe([topic], group) as third:
        assert await third.getmany(0.5) == []


async def test_every_group_gets_every_record(bus_env: BusEnv) -> None:
    topic, bus = await bus_env.new_topic(), bus_env.bus
    await bus.publish_many([Record(topic, f"k{i}", b"x") for i in range(12)])
    async with bus.subscribe([topic], unique("a")) as a, bus.subscribe([topic], unique("b")) as b:
        assert len(await drain(a, 12)) == 12
        assert len(await drain(b, 12)) == 12


async def test_latest_start_sees_only_what_is_published_after_joining(bus_env: BusEnv) -> None:
    topic, bus = await bus_env.new_topic(), bus_env.bus
    await bus.publish_many([Record(topic, "k", b"old") for _ in range(3)])
    async with bus.subscribe([topic], unique("g"), from_beginning=False) as sub:
        await bus.publish_many([Record(topic, "k", b"new") for _ in range(3)])
        got = await drain(sub, 3)
        assert await sub.getmany(0.3) == []
    assert {d.value for d in got} == {b"new"}


async def test_members_of_one_group_share_the_partitions(bus_env: BusEnv) -> None:
    topic, group, bus = await bus_env.new_topic(), unique("g"), bus_env.bus
    async with bus.subscribe([topic], group) as a, bus.subscribe([topic], group) as b:
        await bus.publish_many([Record(topic, f"key-{i}", f"{i}".encode()) for i in range(40)])
        got: dict[str, list[Delivery]] = {"a": [], "b": []}
        async with asyncio.timeout(20):
            while len({d.value for d in got["a"] + got["b"]}) < 40:
                got["a"] += await a.getmany(0.2)
                got["b"] += await b.getmany(0.2)
    assert got["a"]
    assert got["b"]
    assert {d.partition for d in got["a"]}.isdisjoint({d.partition for d in got["b"]})
