"""Loads owned by the bridge: single flight, surviving disconnects, no head-of-line blocking."""

from __future__ import annotations

import asyncio
import statistics
import time

import httpx

from ollamasim.testing import RunningFleet
from tests.bridge._support import RunningBridge, kinds

GEN = {"model": "chatty", "prompt": "hello there", "stream": False}


async def test_hundred_concurrent_cold_requests_cause_one_load(
    fleet: RunningFleet, bridge: RunningBridge
) -> None:
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(base_url=bridge.base_url, timeout=30, limits=limits) as c:
        replies = await asyncio.gather(*(c.post("/api/generate", json=GEN) for _ in range(100)))
    assert [r.status_code for r in replies] == [200] * 100
    assert all(r.json()["done"] is True for r in replies)
    events = fleet.daemon("a").events()
    assert kinds(events, "chatty:latest").count("load-start") == 1
    served = [e for e in events if e.kind == "request-end" and e.reason == "ok"]
    assert len(served) == 100  # plus the bridge's own load request (reason "load")
    assert sum(r.headers["x-alb-cold"] == "true" for r in replies) >= 1


async def test_load_survives_the_disconnect_of_the_client_that_caused_it(
    fleet: RunningFleet, bridge: RunningBridge, client: httpx.AsyncClient
) -> None:
    d = fleet.daemon("a")
    d.faults.hang_load("chatty")
    first = asyncio.create_task(client.post("/api/generate", json=GEN))
    await asyncio.to_thread(d.wait_for_event, lambda ev: "load-start" in kinds(ev), 5)
    await asyncio.sleep(0.1)
    first.cancel()  # the client goes away while its load is running
    await asyncio.gather(first, return_exceptions=True)
    d.faults.clear_hang()
    await asyncio.to_thread(d.wait_for_event, lambda ev: "loaded" in kinds(ev), 5)
    assert "load-aborted" not in kinds(d.events())
    for _ in range(50):  # the bridge learns of the load when its own request returns
        state = (await client.get("/alb/v1/models")).json()["daemons"][0]["models"]
        if any(m["model"] == "chatty:latest" and m["state"] == "loaded" for m in state):
            break
        await asyncio.sleep(0.02)
    r = await client.post("/api/generate", json=GEN)
    assert r.status_code == 200
    assert r.headers["x-alb-cold"] == "false"
    assert kinds(d.events(), "chatty:latest").count("load-start") == 1


async def _p50(client: httpx.AsyncClient, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = await client.post("/api/generate", json=GEN)
        times.append(time.perf_counter() - t0)
        assert r.status_code == 200
        assert r.headers["x-alb-cold"] == "false"
    return statistics.median(times)


async def test_loaded_model_keeps_serving_while_another_loads_slowly(
    fleet: RunningFleet, bridge: RunningBridge, client: httpx.AsyncClient
) -> None:
    d = fleet.daemon("a")
    assert (await client.post("/api/generate", json=GEN)).status_code == 200  # warm A
    baseline = await _p50(client, 40)
    d.faults.hang_load("other")
    slow = asyncio.create_task(
        client.post("/api/generate", json={"model": "other", "prompt": "x", "stream": False})
    )
    await asyncio.to_thread(d.wait_for_event, lambda ev: "load-start" in kinds(ev, "other:latest"))
    # B's load hangs until it is cleared: A's 40 requests can only be answered (200,
    # warm) meanwhile if nothing of A's waits behind it. How much slower they are is a
    # figure, not a check (timings belong under bench/, not in a unit test).
    during = await _p50(client, 40)
    assert not slow.done(), "B's load was meant to be still running"
    d.faults.clear_hang()
    assert (await slow).status_code == 200
    print(f"p50 baseline {baseline * 1000:.2f} ms, during B's load {during * 1000:.2f} ms")
