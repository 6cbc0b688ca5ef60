"""The embedded predictor over an EventBus: MemoryBus (the bridge's default) and real Kafka."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence

import pytest

from ingest.bus import BusUnavailable, Delivery, EventBus, Record, Subscription
from ingest.bus_kafka import KafkaBus, KafkaConfig
from ingest.bus_memory import MemoryBus
from ingest.contracts import validation_errors
from ingest.messages import Event, PrefetchEvent, Topic
from ingest.topics import TopicSpec, ensure_topics
from predictor.core.config import PredictorConfig
from predictor.embedded import EmbeddedPredictor
from tests.predictor._access import a_then_b, access_event, model_state_event

CFG = PredictorConfig(cooldown_s=0)


async def _publish(bus: EventBus, events: Sequence[Event], topic: str | None = None) -> None:
    await bus.publish_many([Record(topic or e.TOPIC.value, e.key(), e.to_json()) for e in events])


async def _collect(
    sub: Subscription, want: int, timeout_s: float = 10.0, *, settle_s: float = 0.3
) -> list[Delivery]:
    """At least ``want`` deliveries (then whatever else comes within ``settle_s``)."""
    out: list[Delivery] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < want:
        assert time.monotonic() < deadline, f"only {len(out)} of {want} deliveries"
        out.extend(await sub.getmany(0.2))
    out.extend(await sub.getmany(settle_s))
    return out


async def test_a_then_b_prefetches_b_over_the_memory_bus() -> None:
    bus = MemoryBus()
    now = time.time()
    async with (
        bus.subscribe([Topic.PREFETCH.value], "reader") as reader,
        EmbeddedPredictor(bus, CFG, "alb-bridge-1") as predictor,
    ):
        await _publish(bus, a_then_b(now - 30, 20))
        await _publish(bus, [access_event("probe", "A", now)])
        got = await _collect(reader, 1)
    events = [PrefetchEvent.model_validate(d.json()) for d in got]
    assert {e.model for e in events} == {"B"}
    assert all(validation_errors(Topic.PREFETCH.value, d.json()) == [] for d in got)
    assert all(
        e.producer == "alb-bridge-1" and d.key == "B" for e, d in zip(events, got, strict=True)
    )
    assert predictor.published >= len(got)
    # everything was committed: a new member of the group finds nothing to redo
    again = EmbeddedPredictor(bus, CFG)
    async with again:
        await asyncio.sleep(0.3)
    assert again.state.now is None or again.state.transitions.known == {}
    await bus.close()


async def test_loaded_models_are_skipped_and_bad_records_counted() -> None:
    bus = MemoryBus()
    now = time.time()
    async with (
        bus.subscribe([Topic.PREFETCH.value], "reader") as reader,
        EmbeddedPredictor(bus, CFG) as predictor,
    ):
        await _publish(bus, a_then_b(now - 30, 20))
        before = len(await _collect(reader, 1))
        await _publish(bus, [model_state_event("B", "loaded")])
        await bus.publish(Topic.ACCESS_LOG.value, "x", b"not json")
        await asyncio.sleep(0.3)
        await _publish(bus, [access_event("p1", "A", now)])
        await asyncio.sleep(0.3)
        assert await reader.getmany(0.2) == []
        await _publish(bus, [model_state_event("B", "unloaded")])
        await _publish(bus, [access_event("p2", "A", now + 1)])
        assert [d.key for d in await _collect(reader, 1)] == ["B"]
    assert before > 0
    assert predictor.rejected == 1
    await bus.close()


async def test_ticks_follow_the_clock() -> None:
    bus = MemoryBus()
    clock = [1_000_000.0]
    predictor = EmbeddedPredictor(bus, CFG, tick_interval_s=10, clock=lambda: clock[0])
    await predictor.start()
    clock[0] += 11
    for _ in range(50):
        await asyncio.sleep(0.05)
        if predictor.state.now == clock[0]:
            break
    assert predictor.state.now == clock[0]
    await predictor.stop()
    await bus.close()


class _Flaky:
    """A MemoryBus whose first publish fails; records the order of publishes and commits."""

    def __init__(self, bus: MemoryBus, log: list[str]) -> None:
        self._bus = bus
        self.log = log
        self.failures = 1

    async def publish(self, topic: str, key: str | None, value: bytes | Event) -> None:
        await self._bus.publish(topic, key, value)

    async def publish_many(self, records: Sequence[Record]) -> None:
        if any(r.topic == Topic.PREFETCH.value for r in records):
            if self.failures:
                self.failures -= 1
                self.log.append("publish-failed")
                raise BusUnavailable("down for a moment")
            self.log.append("publish")
        await self._bus.publish_many(records)

    def subscribe(
        self, topics: Sequence[str], group_id: str, *, from_beginning: bool = True
    ) -> Subscription:
        sub = self._bus.subscribe(topics, group_id, from_beginning=from_beginning)
        original = sub.commit

        async def commit(delivery: Delivery | None = None) -> None:
            self.log.append("commit")
            await original(delivery)

        sub.commit = commit  # type: ignore[method-assign]
        return sub

    async def close(self) -> None:
        await self._bus.close()


async def test_publish_failures_are_retried_before_the_commit() -> None:
    inner = MemoryBus()
    log: list[str] = []
    bus = _Flaky(inner, log)
    now = time.time()
    await _publish(inner, a_then_b(now - 30, 20))
    async with EmbeddedPredictor(bus, CFG, retry_s=0.05) as predictor:
        for _ in range(100):
            await asyncio.sleep(0.05)
            if predictor.published:
                break
    assert predictor.published > 0
    first = log.index("publish-failed")
    assert log[first + 1 : first + 3] == ["publish", "commit"]


async def test_stop_is_prompt_and_idempotent() -> None:
    bus = MemoryBus()
    predictor = EmbeddedPredictor(bus, CFG)
    await predictor.start()
    with pytest.raises(RuntimeError, match="already started"):
        await predictor.start()
    started = time.monotonic()
    await predictor.stop()
    await predictor.stop()
    assert time.monotonic() - started < 2.0
    await bus.close()


@pytest.mark.kafka
async def test_a_then_b_over_kafka(kafka_bootstrap: str) -> None:
    suffix = uuid.uuid4().hex[:10]
    topics = {k: f"alb-t-emb-{k}-{suffix}" for k in ("access", "state", "prefetch", "warm")}
    await ensure_topics(kafka_bootstrap, [TopicSpec(t, 3, 3_600_000) for t in topics.values()])
    now = time.time()
    async with KafkaBus(KafkaConfig(kafka_bootstrap, client_id="alb-test")) as bus:
        predictor = EmbeddedPredictor(
            bus,
            CFG,
            group_id=f"alb-predictor-{suffix}",
            access_log_topic=topics["access"],
            model_state_topic=topics["state"],
            prefetch_topic=topics["prefetch"],
            warm_cache_topic=topics["warm"],
        )
        async with (
            bus.subscribe([topics["prefetch"]], f"reader-{suffix}") as reader,
            predictor,
        ):
            await _publish(bus, a_then_b(now - 30, 20), topics["access"])
            await _publish(bus, [access_event("probe", "A", now)], topics["access"])
            got = await _collect(reader, 1, timeout_s=30.0)
    assert {d.key for d in got} == {"B"}
    assert all(validation_errors(Topic.PREFETCH.value, d.json()) == [] for d in got)
