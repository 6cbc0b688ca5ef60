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
def bus_bootstrap(request: pytest.FixtureRequest) -> str | None:
    """None for the in-process bus, else the real broker (resolved outside any event loop:
    the session fixture starts the broker with ``asyncio.run``)."""
    if request.param == "memory":
        return None
    bootstrap: str = request.getfixturevalue("kafka_bootstrap")
    return bootstrap


@pytest.fixture
async def bus_env(bus_bootstrap: str | None) -> AsyncIterator[BusEnv]:
    """The same tests against ``MemoryBus`` and ``KafkaBus`` on the real broker."""
    if bus_bootstrap is None:
        bus = MemoryBus(partitions=PARTITIONS)
        yield BusEnv("memory", bus)
        await bus.close()
        return
    async with KafkaBus(KafkaConfig(bus_bootstrap, client_id="alb-test")) as kafka:
        yield BusEnv("kafka", kafka, bus_bootstrap)
