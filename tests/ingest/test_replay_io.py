"""Replay import pacing (pure, on the in-process bus) and export/import round trips on Kafka."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from ingest.bus import Delivery, Record
from ingest.bus_kafka import KafkaBus, KafkaConfig
from ingest.bus_memory import MemoryBus
from ingest.cli import replay_app, topics_app
from ingest.messages import AccessLogEvent, Topic
from ingest.replay_io import import_file
from ingest.topics import TopicSpec, ensure_topics
from tests.ingest import _samples
from tests.ingest.conftest import unique

pytestmark = pytest.mark.timeout(60)
ACCESS = Topic.ACCESS_LOG.value


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


def write_events(path: Path, offsets_s: list[float]) -> list[bytes]:
    lines = [
        _samples.access_log(ts=_samples.NOW + timedelta(seconds=s), session=f"s{i % 3}").to_json()
        for i, s in enumerate(offsets_s)
    ]
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return lines


async def published(bus: MemoryBus, topic: str, count: int) -> list[Delivery]:
    async with bus.subscribe([topic], unique("g")) as sub:
        got: list[Delivery] = []
        while len(got) < count:
            got += await sub.getmany(1.0)
    return got


async def test_import_is_paced_by_ts_over_speed(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    lines = write_events(path, [0, 0, 1, 3, 2.5, 3])
    bus, fake = MemoryBus(), FakeTime()
    count = await import_file(bus, path, ACCESS, speed=2, clock=fake.clock, sleep=fake.sleep)
    assert count == 6
    assert fake.sleeps == [0.5, 1.0]  # at +0.5 s and +1.5 s; 2.5 s is late: sent at once
    got = await published(bus, ACCESS, 6)
    assert sorted(d.value for d in got) == sorted(lines)
    assert {d.key for d in got} == {"s0", "s1", "s2"}


async def test_speed_zero_does_not_wait_and_keeps_file_order_per_key(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    lines = write_events(path, [5, 4, 3, 2, 1, 0])
    bus, fake = MemoryBus(partitions=1), FakeTime()
    await import_file(bus, path, ACCESS, speed=0, clock=fake.clock, sleep=fake.sleep)
    assert fake.sleeps == []
    assert [d.value for d in await published(bus, ACCESS, 6)] == lines


async def test_import_validates_and_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    good = _samples.access_log().to_json()
    bad = orjson.dumps(orjson.loads(good) | {"http_status": 42})
    path.write_bytes(good + b"\n\n" + bad + b"\n")
    with pytest.raises(ValueError, match=r"events.jsonl:3: not a valid alb.access-log.v1"):
        await import_file(MemoryBus(), path, ACCESS, speed=0)
    assert await import_file(MemoryBus(), path, ACCESS, speed=0, validate=False) == 2


async def test_unknown_topics_import_unkeyed(tmp_path: Path) -> None:
    path = tmp_path / "misc.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": 2}\n')
    bus = MemoryBus()
    assert await import_file(bus, path, "some.topic", speed=0) == 2
    assert {d.key for d in await published(bus, "some.topic", 2)} == {None}


def per_key(lines: list[bytes]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for line in lines:
        data = orjson.loads(line)
        out[data["session"]].append(data["event_id"])
    return dict(out)


async def _publish(bootstrap: str, topic: str, events: list[AccessLogEvent]) -> None:
    await ensure_topics(bootstrap, [TopicSpec(topic, 3, 3_600_000)])
    async with KafkaBus(KafkaConfig(bootstrap)) as bus:
        await bus.publish_many([Record(topic, e.key(), e.to_json()) for e in events])


@pytest.mark.kafka
def test_export_then_import_round_trips_on_kafka(kafka_bootstrap: str, tmp_path: Path) -> None:
    source, copy = unique("alb-replay-src"), unique("alb-replay-copy")
    events = [
        _samples.access_log(session=f"s{i % 5}", ts=_samples.NOW + timedelta(milliseconds=i))
        for i in range(300)
    ]
    asyncio.run(_publish(kafka_bootstrap, source, events))
    asyncio.run(ensure_topics(kafka_bootstrap, [TopicSpec(copy, 3, 3_600_000)]))
    runner = CliRunner()
    env = {"ALB_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"

    result = runner.invoke(replay_app, ["export", "--topic", source, "--out", str(first)], env=env)
    assert result.exit_code == 0, result.output
    assert f"300 records from {source}" in result.output
    args = ["import", "--in", str(first), "--topic", copy, "--speed", "0", "--key-as", ACCESS]
    result = runner.invoke(replay_app, args, env=env)
    assert result.exit_code == 0, result.output
    result = runner.invoke(replay_app, ["export", "--topic", copy, "--out", str(second)], env=env)
    assert result.exit_code == 0, result.output

    exported = first.read_bytes().splitlines()
    assert sorted(exported) == sorted(e.to_json() for e in events)
    assert sorted(second.read_bytes().splitlines()) == sorted(exported)
    assert per_key(second.read_bytes().splitlines()) == per_key([e.to_json() for e in events])


@pytest.mark.kafka
def test_topics_cli_creates_idempotently_and_describes(kafka_bootstrap: str) -> None:
    runner = CliRunner()
    env = {"ALB_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "COLUMNS": "200"}
    first = runner.invoke(topics_app, ["create"], env=env)
    assert first.exit_code == 0, first.output
    again = runner.invoke(topics_app, ["create"], env=env)
    assert again.exit_code == 0, again.output
    assert "created" not in again.output
    described = runner.invoke(topics_app, ["describe"], env=env)
    assert described.exit_code == 0, described.output
    for topic in Topic:
        assert topic.value in described.output
    assert "168 h" in described.output  # access log: 7 days
    assert "delete" in described.output


@pytest.mark.kafka
async def test_describe_reports_drift_without_changing_anything(kafka_bootstrap: str) -> None:
    name = unique("alb-drift")
    await ensure_topics(kafka_bootstrap, [TopicSpec(name, 1, 3_600_000)])
    (state,) = await ensure_topics(kafka_bootstrap, [TopicSpec(name, 4, 7_200_000)])
    assert state.partitions == 1
    assert state.drift[0].startswith("partitions=1, spec says 4")
    assert any("retention.ms='3600000'" in d for d in state.drift)


@pytest.mark.kafka
async def test_export_of_an_empty_topic_and_of_a_missing_one(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    from ingest.replay_io import export_topic  # noqa: PLC0415

    empty = unique("alb-empty")
    await ensure_topics(kafka_bootstrap, [TopicSpec(empty, 2, 3_600_000)])
    assert await export_topic(kafka_bootstrap, empty, tmp_path / "e.jsonl") == 0
    assert (tmp_path / "e.jsonl").read_bytes() == b""
    with pytest.raises(ValueError, match="does not exist"):
        await export_topic(kafka_bootstrap, unique("alb-missing"), tmp_path / "m.jsonl")
