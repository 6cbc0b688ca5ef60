"""Faust against the real broker: an agent counts events per key into a Table.

The worker runs as a real subprocess (``faust worker``); the test produces keyed events
with aiokafka and reads the Table's changelog topic until the latest count of every
key is what was sent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from tests.integration._kafka import create_topic, unique
from tests.services._env import REPO_ROOT, spawn, stop_process, tail

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(90)]

EVENTS = {"alpha": 7, "beta": 3, "gamma": 5}
DEADLINE_S = 60.0


@pytest.fixture
async def faust_worker(
    kafka_bootstrap: str, tmp_path: Path
) -> AsyncIterator[tuple[str, str, subprocess.Popen[bytes], Path]]:
    """A ``faust worker`` subprocess on a fresh app id and source topic."""
    app_id, source = unique("alb-smoke-faust"), unique("alb-smoke-events")
    await create_topic(kafka_bootstrap, source, partitions=1)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "ALB_SMOKE_APP_ID": app_id,
        "ALB_SMOKE_BROKER": kafka_bootstrap,
        "ALB_SMOKE_SOURCE": source,
        "ALB_SMOKE_DATADIR": str(tmp_path / "faust-data"),
    }
    argv = [sys.executable, "-m", "faust", "-A", "tests.integration._faust_counter"]
    log = tmp_path / "worker.log"
    proc = spawn([*argv, "worker", "-l", "info", "--without-web"], log=log, cwd=tmp_path, env=env)
    try:
        yield app_id, source, proc, log
    finally:
        stop_process(proc, grace_s=15.0)


def _decode_key(raw: bytes | None) -> str:
    text = (raw or b"").decode()
    try:
        return str(json.loads(text))
    except ValueError:
        return text


async def test_agent_counts_events_into_table(
    kafka_bootstrap: str, faust_worker: tuple[str, str, subprocess.Popen[bytes], Path]
) -> None:
    app_id, source, proc, log = faust_worker
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for key, n in EVENTS.items():
            for i in range(n):
                await producer.send(source, key=key.encode(), value=f"{i}".encode())
        await producer.flush()
    finally:
        await producer.stop()

    changelog = f"{app_id}-counts-changelog"
    consumer = AIOKafkaConsumer(
        changelog,
        bootstrap_servers=kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        metadata_max_age_ms=500,  # the worker creates the changelog topic after we start
    )
    await consumer.start()
    latest: dict[str, int] = {}
    deadline = time.monotonic() + DEADLINE_S
    try:
        while latest != EVENTS:
            assert proc.poll() is None, f"faust worker exited:\n{tail(log)}"
            assert time.monotonic() < deadline, (
                f"table counts {latest} != {EVENTS} after {DEADLINE_S}s:\n{tail(log)}"
            )
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    latest[_decode_key(record.key)] = int(json.loads(record.value or b"0"))
    finally:
        await consumer.stop()
    assert Counter(latest) == Counter(EVENTS)
