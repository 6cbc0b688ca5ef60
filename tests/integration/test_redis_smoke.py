"""redis.asyncio against a real redis-server: SET with expiry, GET, TTL, expiry observed."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

pytestmark = [pytest.mark.redis, pytest.mark.timeout(30)]

TTL_MS = 1000


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """A client on the session's Redis, closed after the test."""
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


async def test_set_with_expiry_then_gone(redis: Redis) -> None:
    key = f"alb-smoke:{uuid.uuid4().hex}"
    assert await redis.set(key, b"warm", px=TTL_MS)
    assert await redis.get(key) == b"warm"
    assert 0 < await redis.pttl(key) <= TTL_MS
    assert await redis.ttl(key) in (0, 1)  # TTL rounds to whole seconds

    deadline = time.monotonic() + 5
    while await redis.exists(key):
        assert time.monotonic() < deadline, "key outlived its expiry"
        await asyncio.sleep(0.02)
    assert await redis.get(key) is None
    assert await redis.ttl(key) == -2  # no such key


async def test_persistent_key_has_no_ttl(redis: Redis) -> None:
    key = f"alb-smoke:{uuid.uuid4().hex}"
    try:
        await redis.set(key, "pinned")
        assert await redis.ttl(key) == -1
    finally:
        await redis.delete(key)
