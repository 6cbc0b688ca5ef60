"""keep_alive belongs to the bridge: clients cannot evict; idle models are unloaded by it."""

from __future__ import annotations

import asyncio

import httpx

from ollamasim.testing import RunningFleet
from tests.bridge._support import kinds, running_bridge, settings_for

GEN = {"model": "chatty", "prompt": "hi", "stream": False}


async def test_bridge_policy_ignores_client_evictions_and_unloads_idle_models(
    fleet: RunningFleet,
) -> None:
    d = fleet.daemon("a")
    settings = settings_for(fleet, reclaim="idle", idle_unload_after=0.5, refresh_interval=0.1)
    async with (
        running_bridge(settings) as b,
        httpx.AsyncClient(base_url=b.base_url, timeout=10) as c,
    ):
        assert (await c.post("/api/generate", json={**GEN, "keep_alive": "1s"})).status_code == 200
        unload = await c.post("/api/generate", json={"model": "chatty", "keep_alive": 0})
        assert unload.json()["done_reason"] == "unload"
        ps = (await d_ps(d.base_url))["models"]
        assert ps[0]["expires_at"].startswith("23"), "the bridge loads with keep_alive -1"
        assert "unload" not in kinds(d.events())  # the client could not evict it
        events = await asyncio.to_thread(d.wait_for_event, lambda ev: "unload" in kinds(ev), 5)
        unloads = [e for e in events if e.kind == "unload"]
        assert unloads[0].reason == "requested"  # the bridge's own keep_alive: 0
        r = await c.post("/api/generate", json=GEN)
        assert r.headers["x-alb-cold"] == "true"


async def test_honour_policy_clamps_and_forwards_unloads(fleet: RunningFleet) -> None:
    d = fleet.daemon("a")
    settings = settings_for(fleet, keep_alive_policy="honour", keep_alive_min=60)
    async with (
        running_bridge(settings) as b,
        httpx.AsyncClient(base_url=b.base_url, timeout=10) as c,
    ):
        assert (await c.post("/api/generate", json={**GEN, "keep_alive": 1})).status_code == 200
        ps = (await d_ps(d.base_url))["models"]
        assert not ps[0]["expires_at"].startswith("23")
        unload = await c.post("/api/generate", json={"model": "chatty", "keep_alive": 0})
        assert unload.json()["done_reason"] == "unload"
        assert (await d_ps(d.base_url))["models"] == []
        assert (await c.get("/api/ps")).json() == {"models": []}


async def d_ps(url: str) -> dict[str, list[dict[str, str]]]:
    async with httpx.AsyncClient(timeout=5) as c:
        data: dict[str, list[dict[str, str]]] = (await c.get(url + "/api/ps")).json()
        return data
