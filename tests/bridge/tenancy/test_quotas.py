"""Per-key limits: in memory (one replica), shared through a real Redis by several
``Quotas`` (replicas in one process), and each replica's share while Redis is down."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from bridge.errors import RateLimited
from bridge.policy.keys import KeyRecord, Limits, Scope
from bridge.tenancy.quotas import Permit, QuotaMetrics, Quotas
from bridge.tenancy.store import SqliteKeys
from tests.bridge._procs import StoppableRedis, free_port


def _key(**limits: int) -> KeyRecord:
    return KeyRecord(
        id="0123456789ab",
        name="t",
        digest="d",
        scopes=frozenset({Scope.INFERENCE}),
        limits=Limits(**limits),
    )


@pytest.fixture
async def memory(tmp_path: Path) -> AsyncIterator[Quotas]:
    q = Quotas(SqliteKeys(tmp_path / "k.sqlite"), metrics=QuotaMetrics(CollectorRegistry()))
    yield q
    await q.aclose()


async def _tries(q: Quotas, key: KeyRecord, n: int, reserve: int = 1) -> list[Permit]:
    got = []
    for _ in range(n):
        with contextlib.suppress(RateLimited):
            got.append(await q.admit(key, reserve))
    return got


async def test_requests_per_minute_are_exact_and_a_refusal_says_when(memory: Quotas) -> None:
    key = _key(rpm=5)
    assert len(await _tries(memory, key, 5)) == 5
    with pytest.raises(RateLimited) as info:
        await memory.admit(key, 1)
    err = info.value
    assert err.status == 429
    assert err.retry_after is not None
    assert 1 <= err.retry_after <= 60
    headers = dict(err.headers)
    assert headers[b"x-ratelimit-limit-requests"] == b"5"
    assert headers[b"x-ratelimit-remaining-requests"] == b"0"


async def test_tokens_are_reserved_then_settled(memory: Quotas) -> None:
    key = _key(tpm=1000)
    first = await memory.admit(key, 400)
    await memory.admit(key, 400)
    with pytest.raises(RateLimited, match="tokens per minute"):
        await memory.admit(key, 400)
    # The first used 50: 350 come back, enough for one more of 400 (800 - 350 + 400).
    await first.settle(30, 20)
    third = await memory.admit(key, 400)
    assert dict(third.headers)[b"x-ratelimit-remaining-tokens"] == b"150"
    # A request that used more than it reserved pays the difference.
    await third.settle(500, 100)  # 600 against 400 reserved: 50 + 400 + 600 = 1050
    with pytest.raises(RateLimited):
        await memory.admit(key, 1)


async def test_a_refused_request_gives_back_what_it_took(memory: Quotas) -> None:
    key = _key(rpm=1, tpm=1000, concurrency=5)
    await memory.admit(key, 100)
    with pytest.raises(RateLimited, match="requests per minute"):
        await memory.admit(key, 100)
    # The refused one's tokens and slot came back: 900 tokens, 4 slots remain.
    other = _key(tpm=1000, concurrency=5)
    assert other.id == key.id
    permits = await _tries(memory, other, 10, reserve=225)
    assert len(permits) == 4


async def test_concurrency_counts_requests_in_flight(memory: Quotas) -> None:
    key = _key(concurrency=2)
    a = await memory.admit(key, 1)
    await memory.admit(key, 1)
    with pytest.raises(RateLimited, match="concurrent"):
        await memory.admit(key, 1)
    await a.release()
    await a.release()  # idempotent: frees one slot, not two
    await memory.admit(key, 1)
    with pytest.raises(RateLimited):
        await memory.admit(key, 1)


async def test_a_daily_budget_refuses_until_midnight(memory: Quotas) -> None:
    key = _key(daily_tokens=500)
    first = await memory.admit(key, 300)
    with pytest.raises(RateLimited, match="per day") as info:
        await memory.admit(key, 300)
    assert info.value.retry_after is not None
    assert info.value.retry_after <= 86400
    await first.settle(50, 50)
    await memory.admit(key, 300)


async def test_usage_is_written_to_the_store(tmp_path: Path) -> None:
    store = SqliteKeys(tmp_path / "k.sqlite")
    q = Quotas(store)
    key = _key()
    p = await q.admit(key, 10)
    await p.settle(7, 3)
    await q.admit(key, 10)
    await q.aclose()
    (row,) = await store.usage([datetime.now(UTC).strftime("%Y-%m-%d")])
    assert (row.key_id, row.requests, row.prompt_tokens, row.output_tokens) == (key.id, 2, 7, 3)


# --- shared through Redis ------------------------------------------------------------------


@pytest.fixture
def own_redis() -> Iterator[StoppableRedis]:
    r = StoppableRedis()
    r.start()
    try:
        yield r
    finally:
        r.remove()


def _replicas(url: str, tmp_path: Path, n: int) -> list[Quotas]:
    ns = f"q-{uuid.uuid4().hex[:8]}"
    return [
        Quotas(
            SqliteKeys(tmp_path / f"k{i}.sqlite"),
            redis_url=url,
            namespace=ns,
            timeout=1.0,
            replicas=lambda: n,
            replica=f"r{i}",
            cooldown_s=0.2,
            metrics=QuotaMetrics(CollectorRegistry()),
        )
        for i in range(n)
    ]


@pytest.mark.redis
async def test_three_replicas_share_one_limit_exactly(redis_url: str, tmp_path: Path) -> None:
    qs = _replicas(redis_url, tmp_path, 3)
    key = _key(rpm=30, concurrency=50)
    try:
        results = await asyncio.gather(
            *(qs[i % 3].admit(key, 1) for i in range(120)), return_exceptions=True
        )
        admitted = [r for r in results if isinstance(r, Permit)]
        refused = [r for r in results if isinstance(r, RateLimited)]
        assert len(admitted) == 30
        assert len(refused) == 90
        assert {q.mode for q in qs} == {"shared"}
    finally:
        for q in qs:
            await q.aclose()


@pytest.mark.redis
async def test_with_redis_gone_each_replica_keeps_to_its_share_of_what_is_left(
    own_redis: StoppableRedis, tmp_path: Path
) -> None:
    qs = _replicas(own_redis.url, tmp_path, 3)
    key = _key(rpm=30)
    try:
        # 18 through Redis, 6 per replica; then Redis goes.
        for i in range(18):
            await qs[i % 3].admit(key, 1)
        own_redis.stop()
        local = [len(await _tries(q, key, 20)) for q in qs]
        # Each may take its share (10) less what it took already (6): 4 each, 30 in all.
        assert local == [4, 4, 4]
        assert {q.mode for q in qs} == {"local"}
        metrics = qs[0]._metrics
        assert metrics is not None
        assert metrics.mode.labels(mode="local")._value.get() == 1
    finally:
        for q in qs:
            await q.aclose()


@pytest.mark.redis
async def test_what_a_replica_admitted_alone_is_handed_in_when_redis_is_back(
    tmp_path: Path,
) -> None:
    redis = StoppableRedis(persist=True)
    redis.start()
    qs = _replicas(redis.url, tmp_path, 3)
    key = _key(rpm=30)
    try:
        for i in range(9):  # 3 each through Redis
            await qs[i % 3].admit(key, 1)
        redis.stop()
        alone = [len(await _tries(q, key, 5)) for q in qs]  # each: its 10 less its 3
        assert alone == [5, 5, 5]
        redis.start()  # the 9 come back from the append-only file
        for _ in range(100):  # each replica hands in its 5 within a cooldown or two
            if {q.mode for q in qs} == {"shared"}:
                break
            await asyncio.sleep(0.05)
        # 9 + 15 handed in: 6 left for the minute, whichever replica asks.
        after = sum([len(await _tries(q, key, 10)) for q in qs])
        assert after == 6
        assert {q.mode for q in qs} == {"shared"}
    finally:
        for q in qs:
            await q.aclose()
        redis.remove()


@pytest.mark.redis
async def test_concurrency_is_shared_across_replicas(redis_url: str, tmp_path: Path) -> None:
    qs = _replicas(redis_url, tmp_path, 3)
    key = _key(concurrency=4)
    try:
        results = await asyncio.gather(
            *(qs[i % 3].admit(key, 1) for i in range(12)), return_exceptions=True
        )
        held = [r for r in results if isinstance(r, Permit)]
        assert len(held) == 4
        assert all(isinstance(r, RateLimited) for r in results if not isinstance(r, Permit))
        await held[0].release()
        again = await qs[2].admit(key, 1)  # any replica may take the freed one
        with pytest.raises(RateLimited, match="concurrent"):
            await qs[1].admit(key, 1)
        for p in [*held[1:], again]:
            await p.release()
        assert len([await q.admit(key, 1) for q in qs]) == 3
    finally:
        for q in qs:
            await q.aclose()


@pytest.mark.redis
async def test_a_redis_restart_costs_no_request_its_shared_count(tmp_path: Path) -> None:
    """The pool's connections to the Redis that went are dead: each is retried once on a
    new connection, so a burst after the restart is still counted in Redis (not each
    replica alone, where its share and a count of replicas that has not caught up yet
    could let more through)."""
    redis = StoppableRedis(persist=True)
    redis.start()
    (q,) = _replicas(redis.url, tmp_path, 1)
    key = _key(rpm=100, concurrency=100)
    try:
        held = await asyncio.gather(*(q.admit(key, 1) for _ in range(10)))  # 10 connections
        for p in held:
            await p.release()
        redis.stop()
        redis.start()
        again = await asyncio.gather(*(q.admit(key, 1) for _ in range(10)))
        for p in again:
            await p.release()
        assert q.mode == "shared"
        metrics = q._metrics
        assert metrics is not None
        assert metrics.errors._value.get() == 0
    finally:
        await q.aclose()
        redis.remove()


@pytest.mark.redis
async def test_with_redis_gone_the_share_counts_the_replicas_of_the_last_minute(
    tmp_path: Path,
) -> None:
    """A replica that was live a moment ago may hold requests in this minute's window: a
    count of replicas that drops (the others' heartbeats lapsed in Redis's outage, or they
    left) does not widen the share until a window has passed."""
    n = [3]
    q = Quotas(
        SqliteKeys(tmp_path / "k.sqlite"),
        redis_url=f"redis://127.0.0.1:{free_port()}/0",  # nothing listens
        replicas=lambda: n[0],
        cooldown_s=60,
        metrics=QuotaMetrics(CollectorRegistry()),
    )
    key = _key(rpm=30)
    try:
        assert len(await _tries(q, key, 5)) == 5
        n[0] = 1  # a third of 30, not all of it
        assert len(await _tries(q, key, 30)) == 5
        assert q.mode == "local"
    finally:
        await q.aclose()


@pytest.mark.redis
async def test_what_is_admitted_while_the_outage_is_handed_in_is_handed_in_too(
    tmp_path: Path,
) -> None:
    """The probe hands in the outage's requests in round trips; a request admitted
    alone meanwhile is counted in Redis as well before the replica is shared again."""
    redis = StoppableRedis(persist=True)
    redis.start()
    q = Quotas(
        SqliteKeys(tmp_path / "k.sqlite"),
        redis_url=redis.url,
        namespace=f"q-{uuid.uuid4().hex[:8]}",
        cooldown_s=0.05,
        metrics=QuotaMetrics(CollectorRegistry()),
    )
    key = _key(rpm=6)
    try:
        assert len(await _tries(q, key, 2)) == 2  # through Redis
        redis.stop()
        assert len(await _tries(q, key, 2)) == 2  # alone
        shared = q._shared
        assert shared is not None
        handing, go = asyncio.Event(), asyncio.Event()
        real = shared.acquire_entry

        async def slow(*args: Any, **kwargs: Any) -> bool:
            handing.set()
            await go.wait()
            return await real(*args, **kwargs)

        shared.acquire_entry = slow  # type: ignore[method-assign]
        redis.start()
        await asyncio.wait_for(handing.wait(), 10)
        assert len(await _tries(q, key, 1)) == 1  # alone, while the 2 are handed in
        shared.acquire_entry = real  # type: ignore[method-assign]
        go.set()
        for _ in range(200):
            if q.mode == "shared":
                break
            await asyncio.sleep(0.01)
        assert q.mode == "shared"
        # Redis counts 2 + 2 + 1 of the 6: one left.
        assert len(await _tries(q, key, 3)) == 1
    finally:
        await q.aclose()
        redis.remove()
