"""The Faust app under test in ``test_faust_smoke``: count events per key into a Table.

Run as ``python -m faust -A tests.integration._faust_counter worker``; everything it
needs comes from ``ALB_SMOKE_*`` environment variables so that each test run uses its
own app id (hence consumer group and changelog topic) and source topic.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import faust

app = faust.App(
    os.environ["ALB_SMOKE_APP_ID"],
    broker=f"kafka://{os.environ['ALB_SMOKE_BROKER']}",
    store="memory://",
    datadir=os.environ["ALB_SMOKE_DATADIR"],
    topic_partitions=1,
    topic_replication_factor=1,
    web_enabled=False,
)
events = app.topic(os.environ["ALB_SMOKE_SOURCE"], key_type=str, value_type=bytes)
counts = app.Table("counts", default=int, key_type=str, value_type=int, partitions=1)


@app.agent(events)
async def count(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
    """Add one to the key's count for every event; the Table writes its changelog."""
    async for key, _value in stream.items():
        counts[key] += 1
        yield None
