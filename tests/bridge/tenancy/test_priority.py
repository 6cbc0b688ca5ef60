"""A key's priority class on a live bridge in front of ``ollamasim`` (issue #16): a
priority-3 key gets three turns in the model's fair queue to a priority-1 key's one.

One daemon with two slots and a model that takes a second to load: both keys' requests
queue behind the load, and the order they are served in is read from when their answers
arrive (each request holds its slot ~50 ms, so the pairs come 50 ms apart)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.http.state import Bridge
from bridge.policy.keys import parse_scopes
from bridge.tenancy import keyring
from bridge.tenancy.store import SqliteKeys
from ollamasim.testing import RunningFleet, serve_in_thread
from tests.bridge._support import running_bridge, settings_for

pytestmark = pytest.mark.timeout(60)

GIB = 1024**3
PER_KEY = 6
#: Real time: a 1 s load, 10 tokens at 200 tokens/s held per request.
FLEET: dict[str, Any] = {
    "time_scale": 1.0,
    "gen_tokens_per_s": 200,
    "prefill_tokens_per_s": 100000,
    "models": [
        {"name": "first", "size": GIB, "response_tokens": 10, "capabilities": ["completion"]},
        {"name": "second", "size": GIB, "response_tokens": 10, "capabilities": ["completion"]},
    ],
    "daemons": [{"name": "a", "memory": 16 * GIB, "load_fixed_s": 1.0, "num_parallel": 2}],
}


@dataclass
class Keyed:
    url: str
    store: SqliteKeys
    bridge: Bridge

    async def key(self, priority: int) -> str:
        token, _ = await keyring.create(
            self.store, "t", parse_scopes("inference,read"), priority=priority
        )
        return token


@pytest.fixture
def fleet() -> Iterator[RunningFleet]:
    with serve_in_thread(FLEET) as f:
        yield f


@pytest.fixture
async def keyed(fleet: RunningFleet, tmp_path: Path) -> AsyncIterator[Keyed]:
    path = tmp_path / "keys.sqlite"
    settings = settings_for(fleet, auth="keys", keys_file=str(path), keys_refresh=0.1)
    async with running_bridge(settings) as b:
        yield Keyed(b.base_url, SqliteKeys(path), b.app.state.bridge)


async def _known(c: httpx.AsyncClient, token: str) -> None:
    for _ in range(200):
        r = await c.get("/api/version", headers={"Authorization": f"Bearer {token}"})
        if r.status_code != 401:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the bridge never learnt the key")


async def _queued(keyed: Keyed, n: int) -> None:
    """Until ``n`` requests wait on the daemon (admitted, behind the load)."""
    scheduler = keyed.bridge.rt().scheduler
    for _ in range(500):
        if scheduler.outstanding("a") >= n:
            return
        await asyncio.sleep(0.002)
    raise AssertionError(f"{scheduler.outstanding('a')} of {n} requests queued")


async def _served_order(
    c: httpx.AsyncClient, keyed: Keyed, model: str, low: str, high: str
) -> list[str]:
    """Both keys' requests queued behind ``model``'s load (``low``'s first): which key
    each answer was for, in the order they arrived."""
    arrived: list[tuple[float, str]] = []

    async def one(token: str, who: str) -> None:
        r = await c.post(
            "/api/generate",
            json={"model": model, "prompt": "hi", "stream": False},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 200, r.text
        arrived.append((time.monotonic(), who))

    tasks = [asyncio.create_task(one(low, "low")) for _ in range(PER_KEY)]
    await _queued(keyed, PER_KEY)
    tasks += [asyncio.create_task(one(high, "high")) for _ in range(PER_KEY)]
    await _queued(keyed, 2 * PER_KEY)
    await asyncio.gather(*tasks)
    return [who for _, who in sorted(arrived)]


async def test_a_higher_priority_key_gets_more_turns_in_the_queue(keyed: Keyed) -> None:
    async with httpx.AsyncClient(base_url=keyed.url, timeout=30) as c:
        low, even, high = [await keyed.key(p) for p in (1, 1, 3)]
        for token in (low, even, high):
            await _known(c, token)
        # Equal classes: the two sessions take turns, so the last four served are two
        # of each (pairs L+E, L+E, ... by the round-robin).
        same = await _served_order(c, keyed, "first", low, even)
        # Priority 3 against 1: turns go L, H, H, H, L, H, H, H, then the rest of L, so
        # every high request is served before the last four low ones.
        weighted = await _served_order(c, keyed, "second", low, high)
    assert same[-4:].count("low") == 2, same
    assert weighted[-4:] == ["low"] * 4, weighted
    assert weighted[:8].count("high") == 6, weighted
