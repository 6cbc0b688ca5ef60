"""The sender on a real broker that goes away mid-stream and comes back.

A dedicated broker (not the session one) is stopped with SIGTERM under steady
load and restarted on the same port and data. Every event offered must arrive
(same ids), in order per key; with a small spool, what does not fit is counted
as dropped and logged, and nothing else is lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from ingest.bus import Delivery
from ingest.bus_kafka import KafkaBus, KafkaConfig
from ingest.sender import Sender, SenderConfig
from ingest.spool import Spool, SpoolConfig
from ingest.topics import TopicSpec, ensure_topics
from tests.ingest import _samples
from tests.ingest._broker import RestartableBroker
from tests.ingest.conftest import unique

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(180)]
SESSIONS = [f"s-{i}" for i in range(20)]
CONFIG = SenderConfig(send_timeout_s=2.0, retry_initial_s=0.1, retry_max_s=0.5)


@pytest.fixture(scope="module")
def broker() -> Iterator[RestartableBroker]:
    handle = RestartableBroker()
    try:
        yield handle
    finally:
        handle.close()


class Load:
    """Offers access-log events at a steady rate until stopped; remembers what it offered."""

    def __init__(self, sender: Sender, rate_per_s: int = 1000) -> None:
        self.sender = sender
        self.rate = rate_per_s
        self.offered: dict[str, list[str]] = defaultdict(list)
        self.refused = 0
        self.offer_s: list[float] = []
        self._stop = asyncio.Event()

    def offer_one(self, i: int) -> None:
        event = _samples.access_log(session=SESSIONS[i % len(SESSIONS)], request_id=str(i))
        started = time.perf_counter()
        ok = self.sender.offer(event)
        self.offer_s.append(time.perf_counter() - started)
        if ok:
            self.offered[event.session or ""].append(str(event.event_id))
        else:
            self.refused += 1

    async def run(self) -> None:
        i = 0
        while not self._stop.is_set():
            for _ in range(self.rate // 50):
                self.offer_one(i)
                i += 1
            await asyncio.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()

    @property
    def count(self) -> int:
        return sum(map(len, self.offered.values()))


async def read_all(bootstrap: str, topic: str, want: int, timeout_s: float = 60) -> list[Delivery]:
    got: list[Delivery] = []
    async with (
        KafkaBus(KafkaConfig(bootstrap)) as bus,
        bus.subscribe([topic], unique("verify")) as sub,
    ):
        async with asyncio.timeout(timeout_s):
            while len({d.json()["event_id"] for d in got}) < want:
                got += await sub.getmany(0.5, max_records=5000)
        got += await sub.getmany(1.0, max_records=5000)  # anything beyond: duplicates
    return got


def first_seen_per_key(deliveries: list[Delivery]) -> dict[str, list[str]]:
    seen: set[str] = set()
    out: dict[str, list[str]] = defaultdict(list)
    for d in deliveries:
        event_id = d.json()["event_id"]
        if event_id not in seen:
            seen.add(event_id)
            out[d.key or ""].append(event_id)
    return dict(out)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def outage(broker: RestartableBroker, load: Load, down_s: float) -> float:
    """Stop the broker under load, keep it down ``down_s``, restart it; return restart time."""
    await asyncio.sleep(1.0)
    await asyncio.to_thread(broker.stop)  # the loop keeps offering meanwhile
    await asyncio.sleep(down_s)
    return await broker.start()


async def test_broker_outage_loses_nothing_and_keeps_order(
    broker: RestartableBroker, tmp_path: Path
) -> None:
    topic = unique("alb-outage")
    await ensure_topics(broker.bootstrap, [TopicSpec(topic, 3, 3_600_000)])
    registry = CollectorRegistry()
    kafka = KafkaBus(KafkaConfig(broker.bootstrap, request_timeout_ms=5000))
    spool = Spool(SpoolConfig(tmp_path / "spool"))
    async with kafka, Sender(kafka, spool, registry, CONFIG) as sender:
        sender.offer = _retarget(sender, topic)  # type: ignore[method-assign]
        load = Load(sender)
        producing = asyncio.create_task(load.run())
        restart_s = await outage(broker, load, down_s=3.0)
        await asyncio.sleep(1.0)
        load.stop()
        await producing
        assert await sender.wait_idle(60)
    got = await read_all(broker.bootstrap, topic, load.count)
    ids = [d.json()["event_id"] for d in got]
    assert load.refused == 0
    assert set(ids) == {i for per in load.offered.values() for i in per}
    assert first_seen_per_key(got) == dict(load.offered)
    assert value(registry, "alb_events_spooled_total", topic=topic) > 0
    assert value(registry, "alb_events_dropped_total", topic=topic, reason="spool_full") == 0
    times = sorted(load.offer_s)
    p50, p99, worst = (times[int(len(times) * q)] * 1e6 for q in (0.5, 0.99, 0.99999))
    print(
        f"\noutage: {load.count} events, {len(ids) - len(set(ids))} duplicates, "
        f"{value(registry, 'alb_events_spooled_total', topic=topic):.0f} spooled, "
        f"restart {restart_s:.1f}s; offer() p50 {p50:.0f} us, p99 {p99:.0f} us, max {worst:.0f} us"
    )


async def test_past_the_spool_limit_drops_are_counted_logged_and_nothing_else_lost(
    broker: RestartableBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    topic = unique("alb-spool-limit")
    await ensure_topics(broker.bootstrap, [TopicSpec(topic, 3, 3_600_000)])
    registry = CollectorRegistry()
    kafka = KafkaBus(KafkaConfig(broker.bootstrap, request_timeout_ms=5000))
    spool = Spool(SpoolConfig(tmp_path / "spool", max_bytes=300_000))  # ~400 events
    with caplog.at_level(logging.ERROR, logger="ingest.sender"):
        async with kafka, Sender(kafka, spool, registry, CONFIG) as sender:
            sender.offer = _retarget(sender, topic)  # type: ignore[method-assign]
            load = Load(sender, rate_per_s=1000)
            producing = asyncio.create_task(load.run())
            await outage(broker, load, down_s=2.0)
            load.stop()
            await producing
            assert await sender.wait_idle(60)
    dropped = value(registry, "alb_events_dropped_total", topic=topic, reason="spool_full")
    delivered_expected = load.count + load.refused - int(dropped)
    got = await read_all(broker.bootstrap, topic, delivered_expected)
    ids = {d.json()["event_id"] for d in got}
    offered = {i for per in load.offered.values() for i in per}
    assert dropped > 0
    assert "events dropped" in caplog.text
    assert len(ids) == delivered_expected  # exactly the events not counted as dropped
    assert ids <= offered
    for key, order in first_seen_per_key(got).items():
        assert order == [i for i in load.offered[key] if i in ids]


def _retarget(sender: Sender, topic: str):  # type: ignore[no-untyped-def]
    """Route the sample access-log events to this test's own topic."""
    from ingest.bus import Record  # noqa: PLC0415

    offer = sender.offer

    def to_topic(event):  # type: ignore[no-untyped-def]
        return offer(Record(topic, event.key(), event.to_json()))

    return to_topic
