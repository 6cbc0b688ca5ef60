"""aiokafka against the real broker: idempotent producer, consumer group, committed offsets."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from tests.integration._kafka import create_topic, unique

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(60)]

N_MESSAGES = 300
KEYS = [f"session-{i}" for i in range(7)]


class _Assigned(ConsumerRebalanceListener):  # type: ignore[misc]
    """Sets an event once the group coordinator has given this consumer partitions."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        pass

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if assigned:
            self.event.set()


async def _produce(bootstrap: str, topic: str) -> dict[str, list[int]]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    sent: dict[str, list[int]] = defaultdict(list)
    try:
        deliveries = []
        for seq in range(N_MESSAGES):
            key = KEYS[seq % len(KEYS)]
            deliveries.append(await producer.send(topic, key=key.encode(), value=str(seq).encode()))
            sent[key].append(seq)
        await asyncio.gather(*deliveries)
    finally:
        await producer.stop()
    return sent


async def _group_consumer(bootstrap: str, topic: str, group: str) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    listener = _Assigned()
    consumer.subscribe([topic], listener=listener)
    await consumer.start()
    await asyncio.wait_for(listener.event.wait(), timeout=20)
    return consumer


async def test_idempotent_producer_and_consumer_group_commit(kafka_bootstrap: str) -> None:
    topic, group = unique("alb-smoke-topic"), unique("alb-smoke-group")
    await create_topic(kafka_bootstrap, topic, partitions=3)
    sent = await _produce(kafka_bootstrap, topic)

    received: dict[str, list[int]] = defaultdict(list)
    consumer = await _group_consumer(kafka_bootstrap, topic, group)
    try:
        deadline = time.monotonic() + 20
        while sum(map(len, received.values())) < N_MESSAGES:
            assert time.monotonic() < deadline, f"only {sum(map(len, received.values()))} arrived"
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    received[record.key.decode()].append(int(record.value))
        await consumer.commit()
        partitions = consumer.assignment()
        end_offsets = await consumer.end_offsets(list(partitions))
    finally:
        await consumer.stop()  # leaves the group, so the next member is assigned at once

    assert dict(received) == dict(sent)  # all of them, once each, in order per key
    assert sum(end_offsets.values()) == N_MESSAGES

    again = await _group_consumer(kafka_bootstrap, topic, group)
    try:
        for tp in again.assignment():
            assert await again.committed(tp) == end_offsets[tp]
            assert await again.position(tp) == end_offsets[tp]
        assert await again.getmany(timeout_ms=300) == {}
    finally:
        await again.stop()
