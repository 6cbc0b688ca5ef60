"""Idle memory is reclaimed on demand (``ALB_RECLAIM=demand``, the default): an idle
runner stays loaded while its room is not needed, and goes as soon as a load needs it."""

from __future__ import annotations

import asyncio

import httpx

from bridge.settings import load_settings
from ollamasim.testing import running_fleet
from tests.bridge._support import kinds, running_bridge

GIB = 1024**3
SCALE = 0.0005  # an hour on the simulator's clock is 1.8 s of wall time
HOUR_WALL_S = 3600 * SCALE

FLEET = {
    "time_scale": SCALE,
    "gen_tokens_per_s": 2000,
    "prefill_tokens_per_s": 100000,
    "models": [
        {"name": "small", "size": 2 * GIB, "response_tokens": 4},
        {"name": "big", "size": 12 * GIB, "response_tokens": 4},
    ],
    # 0.9 x 16 GiB: room for either with its 4096-token cache, not for both.
    "daemons": [{"name": "a", "memory": 16 * GIB, "num_parallel": 1, "load_fixed_s": 2.0}],
}


async def test_an_ample_fleet_keeps_an_idle_model_until_a_load_needs_its_room() -> None:
    async with running_fleet(FLEET) as fleet:
        d = fleet.daemon("a")
        spec = f"a={d.base_url}?parallel=1&memory={16 * GIB}"
        # A keep-alive far shorter than the wait: in the idle reclaim mode it would unload.
        settings = load_settings(
            {"ALB_DAEMONS": spec}, idle_unload_after=0.2, refresh_interval=0.05
        )
        assert settings.reclaim == "demand"
        async with (
            running_bridge(settings) as b,
            httpx.AsyncClient(base_url=b.base_url, timeout=30) as c,
        ):
            gen = {"prompt": "hi", "stream": False}
            assert (
                await c.post("/api/generate", json={"model": "small", **gen})
            ).status_code == 200
            await asyncio.sleep(HOUR_WALL_S)  # an hour of simulated time passes, idle
            ps = (await c.get("/api/ps")).json()["models"]
            assert [m["name"] for m in ps] == ["small:latest"]
            assert "unload" not in kinds(d.events())
            r = await c.post("/api/generate", json={"model": "big", **gen})
            assert r.status_code == 200
            unloads = [e for e in d.events() if e.kind == "unload"]
            assert [e.model for e in unloads] == ["small:latest"]
            evictions = (await c.get("/alb/v1/decisions", params={"kind": "evict"})).json()
            assert [e["model"] for e in evictions["decisions"]] == ["small:latest"]
            assert evictions["decisions"][0]["reason"] == "room for big:latest"
