"""The sender over a bus that fails on demand: order, spill, drain, limits, restart."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from ingest.bus import BusRejected, BusUnavailable, Record
from ingest.bus_memory import MemoryBus
from ingest.sender import Sender, SenderConfig
from ingest.spool import Spool, SpoolConfig, encode
from tests.ingest import _samples

pytestmark = pytest.mark.timeout(30)
FAST = SenderConfig(send_timeout_s=0.3, retry_initial_s=0.01, retry_max_s=0.05)


class FlakyBus(MemoryBus):
    """A MemoryBus that can be down, hang, or refuse some records for good."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.hang = asyncio.Event()
        self.hang.set()
        self.published: list[Record] = []
        self.calls = 0

    async def publish_many(self, records: Sequence[Record]) -> None:
        self.calls += 1
        await self.hang.wait()
        if self.down:
            raise BusUnavailable("down")
        if any(b"BAD" in r.value for r in records):
            raise BusRejected("too large")
        self.published.extend(records)
        await super().publish_many(records)


def rec(i: int, key: str | None = None) -> Record:
    return Record("alb.test", key or f"k{i % 7}", f"{i:06d}".encode())


def per_key(records: Sequence[Record]) -> dict[str | None, list[bytes]]:
    out: dict[str | None, list[bytes]] = defaultdict(list)
    for r in records:
        out[r.key].append(r.value)
    return dict(out)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def spool_at(tmp_path: Path, **kw: object) -> Spool:
    return Spool(SpoolConfig(tmp_path / "spool", **kw))  # type: ignore[arg-type]


async def test_healthy_bus_gets_everything_in_order(tmp_path: Path) -> None:
    bus, registry = FlakyBus(), CollectorRegistry()
    async with Sender(bus, spool_at(tmp_path), registry, FAST) as sender:
        sent = [rec(i) for i in range(2000)]
        assert all(sender.offer(r) for r in sent)
        assert await sender.wait_idle(5)
    assert bus.published == sent
    assert value(registry, "alb_events_sent_total", topic="alb.test") == 2000
    assert value(registry, "alb_events_spooled_total", topic="alb.test") == 0
    assert value(registry, "alb_events_queued") == 0


async def test_linger_gathers_a_burst_into_one_send(
    tmp_path: Path,
) -> None:
    bus = FlakyBus()
    lingering = SenderConfig(send_timeout_s=0.3, linger_s=0.05)
    async with Sender(bus, spool_at(tmp_path), CollectorRegistry(), lingering) as sender:
        for burst in range(2):
            for i in range(5):  # five offers spread over ~10 ms, well within the linger
                sender.offer(rec(burst * 5 + i))
                await asyncio.sleep(0.002)
            assert await sender.wait_idle(5)
    assert bus.calls == 2
    assert bus.published == [rec(i) for i in range(10)]


async def test_without_linger_the_first_event_goes_at_once(tmp_path: Path) -> None:
    bus = FlakyBus()
    async with Sender(bus, spool_at(tmp_path), CollectorRegistry(), FAST) as sender:
        for i in range(5):
            sender.offer(rec(i))
            await asyncio.sleep(0.002)
        assert await sender.wait_idle(5)
    assert bus.calls > 1


async def test_events_are_serialised_by_the_sender(tmp_path: Path) -> None:
    bus = FlakyBus()
    event = _samples.access_log()
    async with Sender(bus, spool_at(tmp_path), CollectorRegistry(), FAST) as sender:
        sender.offer(event)
        assert await sender.wait_idle(5)
    assert bus.published == [Record("alb.access-log.v1", "s-1", event.to_json())]


async def test_outage_spools_then_drains_in_order(tmp_path: Path) -> None:
    bus, registry = FlakyBus(), CollectorRegistry()
    async with Sender(bus, spool_at(tmp_path), registry, FAST) as sender:
        first = [rec(i) for i in range(50)]
        for r in first:
            sender.offer(r)
        assert await sender.wait_idle(5)
        bus.down = True
        during = [rec(i) for i in range(50, 300)]
        for i, r in enumerate(during):
            sender.offer(r)
            if i % 50 == 0:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        assert value(registry, "alb_events_spooled_total", topic="alb.test") > 0
        assert value(registry, "alb_events_send_failures_total") > 0
        assert not sender.idle
        bus.down = False
        after = [rec(i) for i in range(300, 350)]
        for r in after:
            sender.offer(r)
        assert await sender.wait_idle(5)
    everything = first + during + after
    assert bus.published == everything  # a bus that fails before writing: no duplicates
    assert per_key(bus.published) == per_key(everything)
    assert value(registry, "alb_events_dropped_total", topic="alb.test", reason="spool_full") == 0


async def test_a_hanging_bus_times_out_into_the_spool(tmp_path: Path) -> None:
    bus, registry = FlakyBus(), CollectorRegistry()
    bus.hang.clear()
    async with Sender(bus, spool_at(tmp_path), registry, FAST) as sender:
        for i in range(20):
            sender.offer(rec(i))
        await asyncio.sleep(0.5)  # past send_timeout_s
        assert value(registry, "alb_events_spooled_total", topic="alb.test") == 20
        assert value(registry, "alb_events_queued") == 0
        bus.hang.set()
        assert await sender.wait_idle(5)
    assert bus.published == [rec(i) for i in range(20)]


async def test_a_full_queue_overflows_to_disk_behind_the_queue(tmp_path: Path) -> None:
    bus, registry = FlakyBus(), CollectorRegistry()
    bus.hang.clear()  # slow, but it will answer before the timeout
    config = SenderConfig(max_queue=10, batch_records=4, send_timeout_s=5)
    async with Sender(bus, spool_at(tmp_path), registry, config) as sender:
        for i in range(100):
            sender.offer(rec(i))
        await asyncio.sleep(0.05)
        assert value(registry, "alb_events_queued") == 10
        assert value(registry, "alb_events_spooled_total", topic="alb.test") == 90
        bus.hang.set()
        assert await sender.wait_idle(5)
    assert bus.published == [rec(i) for i in range(100)]


async def test_past_the_spool_limit_drops_are_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bus, registry = FlakyBus(), CollectorRegistry()
    bus.down = True
    frame = len(encode(rec(0)))
    spool = spool_at(tmp_path, max_bytes=frame * 30)
    with caplog.at_level(logging.ERROR, logger="ingest.sender"):
        async with Sender(bus, spool, registry, FAST) as sender:
            for i in range(60):  # queued: the sender has not run yet
                assert sender.offer(rec(i))
            await asyncio.sleep(0.1)  # first send fails: the queue goes to disk, 30 fit
            refused = [i for i in range(60, 100) if not sender.offer(rec(i))]
            bus.down = False
            assert await sender.wait_idle(5)
    assert refused == list(range(60, 100))  # offer() says when it had to drop
    assert bus.published == [rec(i) for i in range(30)]  # the oldest are kept, in order
    dropped = value(registry, "alb_events_dropped_total", topic="alb.test", reason="spool_full")
    assert dropped == 70
    assert "events dropped: 30 spool_full" in caplog.text


async def test_a_restarted_sender_resumes_from_the_spool(tmp_path: Path) -> None:
    bus = FlakyBus()
    bus.down = True
    sender = Sender(bus, spool_at(tmp_path), CollectorRegistry(), FAST)
    sender.start()
    for i in range(40):
        sender.offer(rec(i))
    await asyncio.sleep(0.2)
    for task in (sender._task, sender._sync_task):
        assert task is not None
        task.cancel()  # a crash: no close(), nothing flushed by us
    await asyncio.sleep(0)
    bus.down = False
    async with Sender(bus, spool_at(tmp_path), CollectorRegistry(), FAST) as again:
        assert await again.wait_idle(5)
    assert bus.published == [rec(i) for i in range(40)]


async def test_close_spools_what_the_bus_did_not_take(tmp_path: Path) -> None:
    bus = FlakyBus()
    bus.hang.clear()
    config = SenderConfig(send_timeout_s=10, close_timeout_s=0.1)
    sender = Sender(bus, spool_at(tmp_path), CollectorRegistry(), config)
    sender.start()
    for i in range(25):
        sender.offer(rec(i))
    await sender.close()
    assert not sender.offer(rec(99))  # after close: dropped, counted as "closed"
    bus.hang.set()
    async with Sender(bus, spool_at(tmp_path), CollectorRegistry(), FAST) as again:
        assert await again.wait_idle(5)
    assert bus.published == [rec(i) for i in range(25)]


async def test_a_record_refused_for_good_is_dropped_alone(tmp_path: Path) -> None:
    bus, registry = FlakyBus(), CollectorRegistry()
    records = [rec(i) for i in range(10)]
    records[4] = Record("alb.test", "k", b"BAD")
    async with Sender(bus, spool_at(tmp_path), registry, FAST) as sender:
        for r in records:
            sender.offer(r)
        assert await sender.wait_idle(5)
    assert bus.published == records[:4] + records[5:]
    assert value(registry, "alb_events_dropped_total", topic="alb.test", reason="rejected") == 1


async def test_a_damaged_spool_region_counts_as_dropped(tmp_path: Path) -> None:
    spool = spool_at(tmp_path)
    spool.append([rec(0), rec(1)])
    spool.close()
    (seg,) = sorted((tmp_path / "spool").glob("*.seg"))
    seg.write_bytes(seg.read_bytes()[:-2])  # the second record is torn
    bus, registry = FlakyBus(), CollectorRegistry()
    async with Sender(bus, spool_at(tmp_path), registry, FAST) as sender:
        assert await sender.wait_idle(5)
        await asyncio.sleep(0.05)
    assert bus.published == [rec(0)]
    assert value(registry, "alb_events_dropped_total", topic="unknown", reason="spool_corrupt") == 1
