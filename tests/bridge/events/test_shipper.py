"""The event shipper process (``bridge.events.shipper``): the same events as the in-loop path,
nothing lost when the child dies or cannot start, its metrics served by the bridge."""

from __future__ import annotations

import asyncio
import logging
import marshal
import os
import signal
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from bridge.events.builders import access_log_record, identify
from bridge.events.shipper import Shipper, ShipperConfig, event_id_at
from bridge.events.sink import RequestRecord
from ingest.bus import Delivery
from ingest.bus_kafka import KafkaBus, KafkaConfig
from ingest.messages import Topic
from ingest.topics import ensure_topics
from tests.bridge._events import first_seen_per_key, invalid, read_topic

SESSIONS = [f"s{i}" for i in range(8)]


def record(n: int, *, doc: Any = None) -> RequestRecord:
    return RequestRecord(
        endpoint="/api/chat",
        model="chatty",
        status=200,
        session=SESSIONS[n % len(SESSIONS)],
        daemon="d0",
        cold=n == 0,
        queue_ms=0.1,
        load_ms=0.0,
        ttft_ms=1.5,
        total_ms=2.5,
        stream_failed=False,
        finished_at=time.time(),
        doc=doc
        if doc is not None
        else {
            "model": "chatty",
            "messages": [
                {"role": "system", "content": f"prompt {n % 3}"},
                {"role": "user", "content": f"request {n}"},
            ],
        },
        headers=[(b"x-alb-session", SESSIONS[n % len(SESSIONS)].encode())],
        tail=b'{"done":true,"prompt_eval_count":12,"eval_count":5}',
    )


class Harness:
    """A ``Shipper`` with a fresh producer id, and what was offered per key, in order."""

    def __init__(self, bootstrap: str, spool_dir: Path, *, queue_max: int = 10_000) -> None:
        self.producer = f"alb-test-{uuid.uuid4().hex[:8]}"
        self.registry = CollectorRegistry()
        self.prompts: list[str] = []
        self.failed = 0
        self.shipper = Shipper(
            ShipperConfig(
                bootstrap_servers=bootstrap,
                client_id="alb-test",
                producer=self.producer,
                spool_dir=str(spool_dir),
                spool_max_bytes=64 * 1024**2,
                queue_max=queue_max,
                close_timeout_s=5.0,
            ),
            self.registry,
            on_prompt=self.prompts.append,
            on_failed=self._failed,
        )
        self.per_key: dict[str, list[str]] = defaultdict(list)
        self.refused = 0

    def _failed(self) -> None:
        self.failed += 1

    def offer(self, n: int) -> None:
        rec = record(n)
        index = self.shipper.offer_request(rec)
        if index is None:
            self.refused += 1
        else:
            session, _, key_id = identify(rec.headers, rec.doc)
            self.per_key[session or key_id or ""].append(self.shipper.event_id(index))

    @property
    def ids(self) -> set[str]:
        return {i for ids in self.per_key.values() for i in ids}

    def sample(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    async def read(self, bootstrap: str, want: int) -> list[Delivery]:
        async with KafkaBus(KafkaConfig(bootstrap)) as bus:
            return await read_topic(
                bus,
                Topic.ACCESS_LOG.value,
                want,
                timeout_s=60,
                where=lambda d: d["producer"] == self.producer,
            )


async def live_child(shipper: Shipper, timeout_s: float = 30) -> int:
    """The pid of the running child once it has acknowledged something."""
    async with asyncio.timeout(timeout_s):
        while True:
            proc = shipper._proc  # the test reaches in to kill the child
            if proc is not None and proc.returncode is None and shipper.families:
                return proc.pid
            await asyncio.sleep(0.01)


# --- pure: the metrics the bridge serves for the child ----------------------------------


def test_served_metrics_add_a_dead_childs_counters_and_the_bridges_own_drops() -> None:
    registry = CollectorRegistry()
    shipper = Shipper(
        ShipperConfig("127.0.0.1:1", "c", "p", "/nonexistent", 1, 10, 1.0),
        registry,
        on_prompt=lambda _: None,
        on_failed=lambda: None,
    )
    sent = ("alb_events_sent", "Events acknowledged by the bus.", "counter")
    shipper.families = [
        (*sent, [("alb_events_sent_total", {"topic": "t"}, 7.0)]),
        ("alb_events_queued", "queued", "gauge", [("alb_events_queued", {}, 3.0)]),
    ]
    shipper._retire_counters()  # the child died: 7 carried over, its gauges forgotten
    shipper.families = [
        (*sent, [("alb_events_sent_total", {"topic": "t"}, 5.0)]),
        ("alb_events_queued", "queued", "gauge", [("alb_events_queued", {}, 1.0)]),
    ]
    shipper.drops[("t", "shipper_down")] += 2

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("alb_events_sent_total", topic="t") == 12.0
    assert value("alb_events_queued") == 1.0
    assert value("alb_events_dropped_total", topic="t", reason="shipper_down") == 2.0
    assert value("alb_events_shipper_restarts_total") == 0.0
    text = generate_latest(registry).decode()
    assert "# TYPE alb_events_sent_total counter" in text


def test_a_record_marshal_cannot_carry_is_built_in_the_bridge() -> None:
    shipper = Shipper(
        ShipperConfig("127.0.0.1:1", "c", "prod-x", "/nonexistent", 1, 10, 1.0),
        CollectorRegistry(),
        on_prompt=lambda _: None,
        on_failed=lambda: None,
    )

    class Odd(dict[str, Any]):  # not a JSON-decoded body: marshal refuses subclasses
        pass

    assert shipper.offer_request(record(0)) == 0
    assert shipper.offer_request(record(1, doc=Odd(model="chatty", prompt="hi"))) == 1
    shipper._flush()  # no child yet: the batch waits in the unsettled frames
    [(end, count, payload)] = list(shipper._unsettled)
    assert (end, count) == (2, 2)
    plain, odd = marshal.loads(payload)
    assert plain[0] == "a"
    kind, topic, key, value = odd
    assert (kind, topic, key) == ("r", Topic.ACCESS_LOG.value, "s1")
    event = orjson.loads(value)
    assert event["event_id"] == shipper.event_id(1)
    assert event["producer"] == "prod-x"


def test_event_ids_are_uuid4_shaped_distinct_and_stable() -> None:
    seed = int.from_bytes(os.urandom(16), "big")
    ids = [event_id_at(seed, i) for i in range(100_000)]
    assert len(set(ids)) == len(ids)
    assert ids == [event_id_at(seed, i) for i in range(100_000)]
    for text in (ids[0], ids[-1], event_id_at((1 << 128) - 1, 5), event_id_at(0, 0)):
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
    assert event_id_at(seed, 7) != event_id_at(seed + 1, 7 + (1 << 64))  # other bridges


# --- against the real broker ---------------------------------------------------------


@pytest.fixture
async def topics(kafka_bootstrap: str) -> str:
    await ensure_topics(kafka_bootstrap)
    return kafka_bootstrap


@pytest.fixture
async def harness(topics: str, tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(topics, tmp_path / "spool")
    async with h.shipper:
        yield h


@pytest.mark.kafka
async def test_the_child_builds_the_same_event_the_loop_would(
    harness: Harness, topics: str
) -> None:
    rec = record(4)
    index = harness.shipper.offer_request(rec)
    assert index == 0
    assert await harness.shipper.wait_idle(30)
    [delivery] = await harness.read(topics, 1)
    event_id = harness.shipper.event_id(index)
    expected, system = access_log_record(rec, harness.producer, event_id=event_id)
    assert delivery.value == expected.value
    assert delivery.key == expected.key == "s4"
    assert harness.prompts == [system]
    assert invalid(Topic.ACCESS_LOG.value, [delivery]) == []
    assert harness.sample("alb_events_sent_total", topic=Topic.ACCESS_LOG.value) == 1.0


@pytest.mark.kafka
@pytest.mark.slow
async def test_a_killed_child_is_restarted_and_every_event_still_arrives_in_order(
    harness: Harness, topics: str, caplog: pytest.LogCaptureFixture
) -> None:
    n = 0
    with caplog.at_level(logging.ERROR, logger="bridge.events.shipper"):
        for round_ in range(3):
            for _ in range(600):
                harness.offer(n)
                n += 1
                if n % 50 == 0:
                    await asyncio.sleep(0.005)
            if round_ < 2:  # mid-stream: some records settled, some not
                os.kill(await live_child(harness.shipper), signal.SIGKILL)
                await asyncio.sleep(0.01)
        assert await harness.shipper.wait_idle(60)
    assert harness.refused == 0
    got = await harness.read(topics, n)
    ids = {d.json()["event_id"] for d in got}
    assert ids == harness.ids
    assert len(ids) == n
    assert first_seen_per_key(got) == dict(harness.per_key)
    assert harness.sample("alb_events_shipper_restarts_total") == 2.0
    status = harness.shipper.status()
    assert status["running"]
    assert status["restarts"] == 2
    assert status["unsettled"] == 0
    assert harness.sample("alb_events_sent_total", topic=Topic.ACCESS_LOG.value) >= n
    assert "event shipper exited" in caplog.text
    print(f"\n{n} events, 2 child kills: all arrived, {len(got) - n} duplicates")


@pytest.mark.kafka
@pytest.mark.slow
async def test_a_child_that_cannot_start_holds_a_bounded_backlog_then_delivers_it(
    topics: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("the spool cannot be created under a file")
    h = Harness(topics, blocker / "spool", queue_max=50)  # holds at most 100
    with caplog.at_level(logging.ERROR, logger="bridge.events.shipper"):
        async with h.shipper:
            for n in range(150):
                h.offer(n)
            assert h.refused == 50
            assert (
                h.sample(
                    "alb_events_dropped_total", topic=Topic.ACCESS_LOG.value, reason="shipper_down"
                )
                == 50.0
            )
            assert "events dropped" in caplog.text
            await asyncio.sleep(0.7)  # the first start has failed
            assert not h.shipper.idle
            blocker.unlink()  # now the child can start: it gets the 100 held
            assert await h.shipper.wait_idle(30)
    got = await h.read(topics, 100)
    assert {d.json()["event_id"] for d in got} == h.ids
    assert len(h.ids) == 100
    assert first_seen_per_key(got) == dict(h.per_key)
    assert h.sample("alb_events_shipper_restarts_total") >= 1.0


@pytest.mark.kafka
async def test_close_lets_the_child_deliver_everything_pending(topics: str, tmp_path: Path) -> None:
    h = Harness(topics, tmp_path / "spool")
    async with h.shipper:
        for n in range(300):
            h.offer(n)
        # no wait: close must flush the pending batch and let the child drain it
    assert h.shipper.idle
    got = await h.read(topics, 300)
    assert {d.json()["event_id"] for d in got} == h.ids
    assert h.sample("alb_events_sent_total", topic=Topic.ACCESS_LOG.value) == 300.0
