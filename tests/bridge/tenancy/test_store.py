"""One contract over both key stores: SQLite (embedded) and Redis (distributed)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.policy.keys import KeyRecord, Limits, Scope
from bridge.tenancy import keyring
from bridge.tenancy.store import KeyStore, RedisKeys, SqliteKeys, Usage


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[KeyStore]:
    s: KeyStore
    if request.param == "sqlite":
        s = SqliteKeys(tmp_path / "keys.sqlite")
    else:
        url = request.getfixturevalue("redis_url")
        s = RedisKeys(url, namespace=f"test-{uuid.uuid4().hex[:8]}", timeout=1.0)
    try:
        yield s
    finally:
        await s.aclose()


async def test_an_empty_store(store: KeyStore) -> None:
    assert await store.all() == []
    assert await store.get("0123456789ab") is None
    assert await store.usage(["2026-12-04"]) == []


async def test_create_list_rotate_revoke_and_every_change_moves_the_version(
    store: KeyStore,
) -> None:
    v0 = await store.version()
    token, record = await keyring.create(
        store, "app", frozenset({Scope.INFERENCE}), models=["llama3*"], limits=Limits(rpm=60)
    )
    v1 = await store.version()
    assert v1 != v0
    assert await store.get(record.id) == record
    assert [r.id for r in await store.all()] == [record.id]
    new_token, rotated = await keyring.rotate(store, record.id)
    assert new_token != token
    assert rotated.digest != record.digest
    assert rotated.limits == record.limits
    v2 = await store.version()
    assert v2 not in (v0, v1)
    revoked = await keyring.revoke(store, record.id)
    assert revoked.revoked_at is not None
    assert (await store.get(record.id)) == revoked
    assert await store.version() not in (v0, v1, v2)
    with pytest.raises(ValueError, match="revoked"):
        await keyring.rotate(store, record.id)
    with pytest.raises(LookupError):
        await keyring.revoke(store, "ffffffffffff")


async def test_usage_adds_up_per_key_and_day(store: KeyStore) -> None:
    await store.add_usage([Usage("2026-12-03", "k1", 1, 10, 5), Usage("2026-12-04", "k1", 2, 3, 4)])
    await store.add_usage([Usage("2026-12-04", "k1", 1, 1, 1), Usage("2026-12-04", "k2", 5, 0, 0)])
    got = await store.usage(["2026-12-04", "2026-12-03"])
    assert sorted(got, key=lambda u: (u.day, u.key_id)) == [
        Usage("2026-12-03", "k1", 1, 10, 5),
        Usage("2026-12-04", "k1", 3, 4, 5),
        Usage("2026-12-04", "k2", 5, 0, 0),
    ]


async def test_a_record_survives_the_store_as_it_was_put(store: KeyStore) -> None:
    record = KeyRecord(
        id="00aa11bb22cc",
        name="ü name",
        digest="d" * 64,
        scopes=frozenset(Scope),
        models=("a*", "b:1b"),
        limits=Limits(1, 2, 3, 4),
        priority=16,
        created_at=1.5,
    )
    await store.put(record)
    assert await store.get(record.id) == record
