"""``KafkaBus.publish_many`` sends producer batches (one per partition, split when full):
per-key order and the key's partition are those of one ``send`` per record, and a record
over the request size is refused for good (``BusRejected``) without spoiling the bus."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner

from ingest.bus import BusRejected, Delivery, Record
from ingest.bus_kafka import KafkaBus, KafkaConfig
from ingest.topics import TopicSpec, ensure_topics
from tests.ingest.conftest import unique
from tests.ingest.test_bus_contract import by_key, drain

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(60)]
PARTITIONS = 3


async def test_split_batches_keep_order_and_partition_per_key(kafka_bootstrap: str) -> None:
    topic = unique("alb-test")
    await ensure_topics(kafka_bootstrap, [TopicSpec(topic, PARTITIONS, 3_600_000)])
    # 1 KiB batches: ~200 records of ~100 bytes take several batches per partition.
    config = KafkaConfig(kafka_bootstrap, client_id="alb-test", max_batch_size=1024)
    records = [
        Record(topic, None if i % 7 == 0 else f"session-{i % 11}", f"{i:090d}".encode())
        for i in range(200)
    ]
    async with KafkaBus(config) as bus:
        await bus.publish_many(records[:150])
        await bus.publish_many(records[150:])
        async with bus.subscribe([topic], unique("g")) as sub:
            got = await drain(sub, len(records))
            assert await sub.getmany(0.3) == []
    assert sorted(d.value for d in got) == sorted(r.value for r in records)
    sent = [Delivery(r.topic, 0, 0, r.key, r.value, 0) for r in records]
    want = {k: v for k, v in by_key(sent).items() if k is not None}
    assert {k: v for k, v in by_key(got).items() if k is not None} == want
    partitioner = DefaultPartitioner()
    everyone = list(range(PARTITIONS))
    for d in got:
        if d.key is not None:
            assert d.partition == partitioner(d.key.encode(), everyone, everyone)


async def test_a_record_over_the_request_size_is_refused_for_good(kafka_bootstrap: str) -> None:
    topic = unique("alb-test")
    await ensure_topics(kafka_bootstrap, [TopicSpec(topic, 1, 3_600_000)])
    config = KafkaConfig(kafka_bootstrap, client_id="alb-test", max_request_size=10_000)
    async with KafkaBus(config) as bus:
        with pytest.raises(BusRejected):
            await bus.publish_many([Record(topic, "k", b"x" * 20_000)])
        await bus.publish_many([Record(topic, "k", b"after")])  # a fresh producer works
        async with bus.subscribe([topic], unique("g")) as sub:
            (got,) = await drain(sub, 1)
    assert got.value == b"after"
