"""One contract, two prompt registries: memory, and Redis (real server, marker ``redis``)."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

from ingest.errors import IngestError, RegistryUnavailable
from ingest.prompts import (
    MemoryPromptRegistry,
    PromptRegistry,
    PromptRegistryConfig,
    RedisPromptRegistry,
)

pytestmark = pytest.mark.timeout(30)
Factory = Callable[[PromptRegistryConfig], PromptRegistry]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    if request.param == "memory":
        yield MemoryPromptRegistry
        return
    url: str = request.getfixturevalue("redis_url")
    client = Redis.from_url(url)
    namespace = f"alb-test-{uuid.uuid4().hex[:8]}"
    yield lambda config: RedisPromptRegistry(client, config, namespace=namespace)
    await client.aclose()


async def test_put_returns_the_sha256_and_get_returns_the_text(make: Factory) -> None:
    registry = make(PromptRegistryConfig())
    text = "Tu es un assistant concis. \u2728"
    digest = await registry.put(text)
    assert digest == hashlib.sha256(text.encode()).hexdigest()
    assert await registry.get(digest) == text
    assert await registry.get("0" * 64) is None


async def test_entries_expire_after_the_ttl(make: Factory) -> None:
    registry = make(PromptRegistryConfig(ttl_s=0.3))
    digest = await registry.put("short lived")
    assert await registry.get(digest) == "short lived"
    await asyncio.sleep(0.5)
    assert await registry.get(digest) is None


async def test_the_least_recently_registered_go_first(make: Factory) -> None:
    registry = make(PromptRegistryConfig(max_entries=3, refresh_s=0))
    a, b, c = [await registry.put(t) for t in ("a", "b", "c")]
    assert await registry.put("a") == a  # registering again makes it recent
    d = await registry.put("d")
    assert await registry.get(b) is None
    for digest, text in ((a, "a"), (c, "c"), (d, "d")):
        assert await registry.get(digest) == text


async def test_a_text_over_the_size_bound_is_not_kept(make: Factory) -> None:
    registry = make(PromptRegistryConfig(max_text_bytes=10))
    digest = await registry.put("x" * 11)
    assert digest == hashlib.sha256(b"x" * 11).hexdigest()
    assert await registry.get(digest) is None


@pytest.mark.redis
async def test_redis_registry_skips_recent_repeats(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    namespace = f"alb-test-{uuid.uuid4().hex[:8]}"
    try:
        registry = RedisPromptRegistry(
            client, PromptRegistryConfig(refresh_s=60), namespace=namespace
        )
        digest = await registry.put("hot prompt")
        await client.delete(f"{{{namespace}}}:text:{digest}")
        await registry.put("hot prompt")  # within refresh_s: no round trip
        assert await registry.get(digest) is None
    finally:
        await client.aclose()


async def test_an_unreachable_redis_is_registry_unavailable() -> None:
    """Redis's and the socket's errors come out of the seam as ingest's own."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_connect_timeout=1)
    registry = RedisPromptRegistry(client, PromptRegistryConfig(), namespace="gone")
    try:
        with pytest.raises(RegistryUnavailable):
            await registry.put("You are helpful.")
        with pytest.raises(RegistryUnavailable) as caught:
            await registry.get("0" * 64)
        assert isinstance(caught.value, IngestError)
    finally:
        await client.aclose()
