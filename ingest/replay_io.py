"""Topic <-> JSON Lines file: ``alb replay export`` and ``alb replay import``.

Export reads every partition of a topic from its oldest retained record to the end
offsets taken when it starts (records arriving later are not waited for), and
writes each value as one line, in the order fetched: order per key (per
partition) is kept, the interleaving of partitions is not. Consumers of the file
that need time order sort by ``ts``.

Import publishes a file's lines in file order through an ``EventBus``, keyed as
DESIGN.md keys that topic's events, and paced by the events' ``ts``: an event
``ts - ts_first`` after the first is sent ``(ts - ts_first) / speed`` seconds after
the start (``speed <= 0``: as fast as the bus takes them). An event whose ``ts`` is
earlier than one already sent is sent at once, never reordered. ``event_id`` is
kept, so consumers see a re-import as duplicates and drop them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from ingest.bus import BusUnavailable, EventBus, Record
from ingest.contracts import schema_names, validation_errors
from ingest.messages import key_for

Progress = Callable[[int], None]
_BATCH = 500


def _nothing(_: int) -> None:
    pass


async def export_topic(
    bootstrap: str,
    topic: str,
    out: Path,
    *,
    on_total: Progress = _nothing,
    on_progress: Progress = _nothing,
) -> int:
    """Write ``topic`` (oldest retained to current end) to ``out`` as JSONL; return the count.

    ``on_total`` gets the number of records to expect once known; ``on_progress``
    the number just written, after each fetch.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    written = 0
    try:
        await consumer.start()
        partitions = await _partitions(bootstrap, topic)
        consumer.assign(partitions)
        starts = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        on_total(sum(ends[tp] - starts[tp] for tp in partitions))
        for tp in partitions:
            consumer.seek(tp, starts[tp])
        # Done with a partition once a record at or past its end offset was seen
        # (tracked from the records themselves: ``position`` can lag a seek).
        following = dict(starts)
        remaining = {tp for tp in partitions if ends[tp] > starts[tp]}
        with out.open("wb") as sink:
            while remaining:
                batches = await consumer.getmany(*remaining, timeout_ms=1000, max_records=5000)
                count = 0
                for tp, messages in batches.items():
                    for message in messages:
                        if message.offset < ends[tp]:
                            sink.write(_line(message.value))
                            count += 1
                        following[tp] = message.offset + 1
                remaining = {tp for tp in remaining if following[tp] < ends[tp]}
                written += count
                on_progress(count)
    except KafkaError as exc:
        raise BusUnavailable(f"export from {bootstrap} failed: {exc!r}") from exc
    finally:
        await consumer.stop()
    return written


async def _partitions(bootstrap: str, topic: str) -> list[TopicPartition]:
    """The topic's partitions, from the cluster's metadata."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described.get("error_code") or not described.get("partitions"):
        raise ValueError(f"topic {topic!r} does not exist at {bootstrap}")
    numbers = sorted(p["partition"] for p in described["partitions"])
    return [TopicPartition(topic, n) for n in numbers]


def _line(value: bytes | None) -> bytes:
    if value is None:
        return b"null\n"
    if b"\n" in value:  # pretty-printed by some other producer: one line, same JSON
        value = orjson.dumps(orjson.loads(value))
    return value + b"\n"


def _ts(data: Any) -> float | None:
    if isinstance(data, dict) and isinstance(data.get("ts"), str):
        try:
            return datetime.fromisoformat(data["ts"].replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


async def import_file(
    bus: EventBus,
    path: Path,
    topic: str,
    *,
    speed: float = 1.0,
    key_as: str | None = None,
    validate: bool = True,
    on_progress: Progress = _nothing,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> int:
    """Publish the lines of ``path`` to ``topic``, paced by ``ts`` / ``speed``; return the count.

    Keys follow the events of ``key_as`` (default ``topic``). With ``validate``,
    a line that breaks that topic's schema stops the import before it is sent
    (``ValueError`` naming the line). ``on_progress`` gets bytes read.
    """
    schema = key_as or topic
    check = validate and schema in schema_names()
    pending: list[Record] = []
    first_ts: float | None = None
    started = clock()
    sent = 0
    with path.open("rb") as source:
        for number, line in enumerate(source, 1):
            if not line.strip():
                on_progress(len(line))
                continue
            value = line.rstrip(b"\r\n")
            data = orjson.loads(value)
            if check and (errors := validation_errors(schema, data, strict=False)):
                raise ValueError(f"{path}:{number}: not a valid {schema} event: {errors[0]}")
            ts = _ts(data)
            if speed > 0 and ts is not None:
                first_ts = ts if first_ts is None else first_ts
                due = started + (ts - first_ts) / speed
                if due > clock():
                    sent += await _flush(bus, pending)
                    wait = due - clock()
                    if wait > 0:
                        await sleep(wait)
            pending.append(Record(topic, key_for(schema, value), value))
            on_progress(len(line))
            if len(pending) >= _BATCH:
                sent += await _flush(bus, pending)
    return sent + await _flush(bus, pending)


async def _flush(bus: EventBus, pending: list[Record]) -> int:
    if not pending:
        return 0
    await bus.publish_many(pending)
    count = len(pending)
    pending.clear()
    return count
