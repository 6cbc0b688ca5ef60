"""The Faust worker's model hints in a Kafka-mode bridge (``bridge.events.hints``): the book's
rules, and the reader on the in-process bus (the real broker: ``test_events_kafka``)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry

from bridge.events.hints import HintBook, HintConsumer, HintEstimate, HintKeepAlive, HintMetrics
from bridge.policy.placement import RunnerView
from bridge.policy.reuse import PredictedReuse
from ingest.bus import Delivery
from ingest.bus_memory import MemoryBus
from ingest.messages import Topic
from tests.bridge._events import model_hint, wait_for


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _book() -> tuple[HintBook, Clock]:
    event = model_hint("x")
    clock = Clock(event.ts.timestamp())
    return HintBook(clock), clock


def test_the_newest_unexpired_hint_per_model_wins() -> None:
    book, clock = _book()
    first = model_hint("Alpha", reuse_probability=0.2, keep_alive_s=100)
    newer = first.model_copy(
        update={"ts": first.ts + timedelta(seconds=5), "reuse_probability": 0.7}
    )
    assert book.offer(newer) == "applied"
    assert book.offer(first) == "older"  # a late copy of an older tick changes nothing
    assert book.reuse("alpha:latest") == 0.7  # keys as bridge.wire.names.key
    assert book.offer(model_hint("beta", expires_in_s=-1)) == "expired"
    assert book.reuse("beta:latest") is None
    assert len(book) == 1
    clock.now += 61  # past expires_at: no evidence any more
    assert book.reuse("alpha:latest") is None
    assert len(book) == 0


def test_keep_alive_is_the_hints_capped_and_the_cap_without_one() -> None:
    book, _ = _book()
    book.offer(model_hint("a", keep_alive_s=0.0, prefetched_keep_alive_s=600.0))
    book.offer(model_hint("b", keep_alive_s=900.0))
    assert book.keep_alive("a:latest", 1800.0) == 0.0
    assert book.keep_alive("a:latest", 1800.0, prefetched=True) == 600.0
    assert book.keep_alive("b:latest", 300.0) == 300.0  # ALB_IDLE_UNLOAD_AFTER caps it
    assert book.keep_alive("c:latest", 1800.0) == 1800.0  # no hint: the bridge's own
    keep = HintKeepAlive(book, prefetched=lambda daemon, model: daemon == "gpu1")
    assert keep.seconds("gpu0", "a:latest", 1800.0) == 0.0
    assert keep.seconds("gpu1", "a:latest", 1800.0) == 600.0


def test_the_eviction_value_reads_the_hint_and_recency_without_one() -> None:
    book, _ = _book()
    book.offer(model_hint("likely", reuse_probability=0.9))
    book.offer(model_hint("unlikely", reuse_probability=0.05))
    book.offer(model_hint("unknown", reuse_probability=None))  # no evidence yet
    oracle = PredictedReuse(HintEstimate(book))

    def view(key: str, idle_s: float) -> RunnerView:
        return RunnerView(
            key=key,
            size=1,
            ctx=2048,
            auto=False,
            busy=False,
            pinned=False,
            idle_s=idle_s,
            reload_s=1.0,
        )

    likely = oracle.reuse("d", view("likely:latest", 60))
    unlikely = oracle.reuse("d", view("unlikely:latest", 60))
    assert likely > unlikely  # equally recent: the hint orders them
    fresh = oracle.reuse("d", view("unknown:latest", 0))
    stale = oracle.reuse("d", view("unknown:latest", 600))
    assert fresh > stale  # without evidence, recency alone


def _delivery(value: bytes, topic: str = Topic.MODEL_HINTS.value) -> Delivery:
    return Delivery(topic, 0, 0, "m", value, 0)


def test_an_invalid_record_is_counted_and_skipped() -> None:
    book, _ = _book()
    registry = CollectorRegistry()
    reader = HintConsumer(MemoryBus(), book, HintMetrics(registry), group_prefix="g")
    assert reader.handle(_delivery(b'{"model": "a"}')) == "invalid"
    assert reader.handle(_delivery(model_hint("a").to_json())) == "applied"
    assert registry.get_sample_value("alb_model_hints_total", {"outcome": "invalid"}) == 1
    assert registry.get_sample_value("alb_model_hints_total", {"outcome": "applied"}) == 1


@pytest.mark.timeout(10)
async def test_every_replica_reads_every_hint_from_the_end() -> None:
    bus = MemoryBus()
    await bus.publish(Topic.MODEL_HINTS.value, "old", model_hint("old"))  # before they start
    readers = [
        HintConsumer(bus, HintBook(), HintMetrics(CollectorRegistry()), group_prefix="alb-bridge")
        for _ in range(2)
    ]
    assert readers[0].group != readers[1].group  # a group of one each
    for r in readers:
        r.start()
    try:
        await asyncio.gather(*(asyncio.wait_for(r.ready.wait(), 5) for r in readers))
        await bus.publish(Topic.MODEL_HINTS.value, "new", model_hint("new", reuse_probability=0.4))
        for r in readers:
            await wait_for(lambda r=r: r.book.reuse("new:latest") == 0.4, 5, "the hint")
            assert r.book.reuse("old:latest") is None  # from the end: the worker re-sends
    finally:
        for r in readers:
            await r.aclose()
        await bus.close()
