"""Fixtures for the ingest tests: one parametrised ``bus_env`` over both buses."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from ingest.bus import EventBus
from ingest.bus_kafka import KafkaBus, KafkaConfig
from ingest.bus_memory import MemoryBus
from ingest.topics import TopicSpec, ensure_topics

PARTITIONS = 3


def unique(prefix: str) -> str:
    """A fresh topic / group name, so tests never see each other's data."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass
class BusEnv:
    kind: str
    bus: EventBus
    bootstrap: str | None = None

    async def new_topic(self, partitions: int = PARTITIONS) -> str:
        name = unique("alb-test")
        if self.bootstrap is not None:
            await ensure_topics(self.bootstrap, [TopicSpec(name, partitions, 3_600_000)])
        return name


@pytest.fixture(params=["memory", pytest.param("kafka", marks=pytest.mark.kafka)])
async def bus_env(request: pytest.FixtureRequest) -> AsyncIterator[BusEnv]:
    """The same tests against ``MemoryBus`` and ``KafkaBus`` on the real broker."""
    if request.param == "memory":
        bus = MemoryBus(partitions=PARTITIONS)
        yield BusEnv("memory", bus)
        await bus.close()
        return
    bootstrap: str = request.getfixturevalue("kafka_bootstrap")
    async with KafkaBus(KafkaConfig(bootstrap, client_id="alb-test")) as kafka:
        yield BusEnv("kafka", kafka, bootstrap)
