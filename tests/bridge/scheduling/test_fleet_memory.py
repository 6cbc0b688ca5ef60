"""Memory budget across a fleet: randomised concurrent traffic over 3 daemons x 24 GB
and 8 models of 4-40 GB, every invariant asserted from the simulator's event log;
capacity from NVML for the local daemon, from configuration otherwise."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from bridge.scheduling.fleet import Fleet
from bridge.scheduling.gpu import GpuMemory, GpuReading
from bridge.settings import load_settings
from bridge.upstream import Upstream
from ollamasim.eventlog import SimEvent
from ollamasim.testing import RunningFleet, serve_in_thread
from tests.bridge._support import running_bridge

GB = 10**9
SIZES = {"m4": 4, "m6": 6, "m8": 8, "m10": 10, "m12": 12, "m16": 16, "m20": 20, "m40": 40}
PINNED = "m4"
CONFIG: dict[str, Any] = {
    # 1 s of wall time = 250 s simulated: a 20 GB load (~11 s) takes ~45 ms.
    "time_scale": 0.004,
    "gen_tokens_per_s": 4,
    "prefill_tokens_per_s": 100_000,
    "models": [
        {"name": n, "size": g * GB, "kv_bytes_per_token": 16384, "response_tokens": 6}
        for n, g in SIZES.items()
    ],
    "daemons": [{"name": f"g{i}", "memory": 24 * GB, "num_parallel": 2} for i in range(3)],
}
WALL_S = 5.0
WORKERS = 14


def _inflight_violations(events: list[SimEvent]) -> list[str]:
    """Unloads of a model while one of its requests was in flight on that daemon."""
    running: Counter[str] = Counter()
    bad = []
    for e in events:
        if e.kind == "request-start" and e.model:
            running[e.model] += 1
        elif e.kind in ("request-end", "request-interrupted") and e.model:
            running[e.model] -= 1
        elif e.kind == "unload" and e.model and running[e.model] > 0:
            bad.append(f"{e.daemon}: {e.model} unloaded with {running[e.model]} in flight")
    return bad


async def _traffic(base_url: str, seed: int, stop_at: float) -> list[tuple[str, int, str]]:
    rng = random.Random(seed)
    names = list(SIZES)
    weights = [8, 6, 5, 4, 3, 3, 2, 0.3]  # Zipf-ish; m40 now and then
    out: list[tuple[str, int, str]] = []
    async with httpx.AsyncClient(base_url=base_url, timeout=20) as c:
        while time.monotonic() < stop_at:
            model = rng.choices(names, weights)[0]
            body = {"model": model, "prompt": f"q{rng.randint(0, 9)} hello", "stream": False}
            r = await c.post("/api/generate", json=body)
            out.append((model, r.status_code, r.text if r.status_code != 200 else ""))
            await asyncio.sleep(rng.random() * 0.01)
    return out


@pytest.mark.parametrize("linger_s", [0.0, 20.0], ids=["cpu-unloads", "gpu-unloads"])
async def test_randomised_traffic_never_exceeds_capacity_interrupts_or_evicts_pins(
    linger_s: float,
) -> None:
    # gpu-unloads: an unloaded runner stays in /api/ps, memory held, for 20 simulated s
    # (80 ms) as on a GPU (docs/real-ollama.md); the bridge must wait for it to go.
    daemons_cfg = [{**d, "unload_linger_s": linger_s} for d in CONFIG["daemons"]]
    with serve_in_thread({**CONFIG, "daemons": daemons_cfg}) as fleet:
        daemons = ",".join(f"{d.name}={d.base_url}?parallel=2&memory=24GB" for d in fleet.daemons)
        settings = load_settings(
            {"ALB_DAEMONS": daemons, "ALB_PINNED": PINNED, "ALB_REFRESH_INTERVAL": "0.5"}
        )
        async with running_bridge(settings) as b:
            await _wait_pinned(b.base_url)
            stop_at = time.monotonic() + WALL_S
            runs = await asyncio.gather(*(_traffic(b.base_url, s, stop_at) for s in range(WORKERS)))
            async with httpx.AsyncClient(base_url=b.base_url) as c:
                evictions = (await c.get("/alb/v1/decisions?kind=evict&limit=10000")).json()
        _check(fleet, [r for run in runs for r in run], evictions["decisions"])


async def _wait_pinned(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as c:
        for _ in range(200):
            state = (await c.get("/alb/v1/models")).json()["daemons"]
            if any(m["pinned"] and m["state"] == "loaded" for d in state for m in d["models"]):
                return
            await asyncio.sleep(0.02)
    raise AssertionError("the pinned model was not loaded at start")


def _check(fleet: RunningFleet, results: list[tuple[str, int, str]], evictions: list[Any]) -> None:
    statuses = Counter((m == "m40", s) for m, s, _ in results)
    too_big = [text for m, s, text in results if m == "m40"]
    assert statuses[(False, 200)] == sum(1 for m, _, _ in results if m != "m40"), [
        (m, t) for m, s, t in results if m != "m40" and s != 200
    ]
    assert too_big
    assert all("m40:latest needs about" in t for t in too_big)
    lines = []
    sim_s = 0.0
    for d in fleet.daemons:
        events = d.events()
        sim_s = max(sim_s, events[-1].sim_ts - events[0].sim_ts)
        cap = events[0].memory_capacity
        peak = max(e.memory_used for e in events)
        loads = [e for e in events if e.kind == "load-start"]
        unloads = [e for e in events if e.kind == "unload"]
        lines.append(
            f"{d.name}: {len(loads)} loads, {len(unloads)} unloads, "
            f"peak {peak / GB:.1f} GB of {cap / GB:.0f} GB"
        )
        assert all(e.memory_used <= e.memory_capacity for e in events), d.name
        assert not [e for e in events if e.kind in ("request-interrupted", "load-failed")]
        assert {e.reason for e in unloads} <= {"requested"}, "Ollama chose an eviction itself"
        assert not _inflight_violations(events)
        assert not [e for e in unloads if e.model == f"{PINNED}:latest"]
        assert not [e for e in loads if e.model == "m40:latest"]
    print(
        f"\n{len(results)} requests over {sim_s:.0f} simulated s "
        f"({sum(s == 200 for _, s, _ in results)} ok, {len(too_big)} m40 → 400), "
        f"{len(evictions)} evictions; " + "; ".join(lines)
    )
    assert sim_s >= 180  # several minutes of simulated time
    assert evictions, "the traffic was meant to need evictions"
    assert all(e["inputs"]["needed"] > 0 for e in evictions)


# --- capacity sources ----------------------------------------------------------------------
async def test_capacity_comes_from_nvml_for_the_local_daemon_and_config_otherwise() -> None:
    reading = GpuReading(
        gpus=(GpuMemory(0, "GPU-0", "H200", total=150 * GB, used=12 * GB, free=138 * GB),),
        driver="580",
    )
    settings = load_settings(
        {
            "ALB_DAEMONS": "near=http://127.0.0.1:1?local=1,far=http://127.0.0.1:2?memory=24GiB,x=http://127.0.0.1:3",
            "ALB_HEADROOM": "0.1",
        }
    )
    upstream = Upstream.create(settings)
    try:
        fleet = Fleet(settings.daemon_specs(), upstream, 10, gpu_reader=lambda: reading)
        near, far, unknown = fleet.get("near"), fleet.get("far"), fleet.get("x")
        near.loaded = {"m:latest": {"size": 10 * GB, "size_vram": 10 * GB}}
        await fleet.read_local_memory()
        assert (near.capacity, near.capacity_source, near.external) == (150 * GB, "nvml", 2 * GB)
        assert fleet.budget(near, 0.1) == int(150 * GB * 0.9) - 2 * GB
        assert (far.capacity, far.capacity_source) == (24 * 2**30, "config")
        assert fleet.budget(far, 0.1) == int(24 * 2**30 * 0.9)
        assert unknown.capacity is None
        assert fleet.budget(unknown, 0.1) is None
        no_gpu = Fleet(
            settings.daemon_specs(),
            upstream,
            10,
            gpu_reader=lambda: GpuReading(gpus=(), unavailable="NVML: no driver"),
        )
        await no_gpu.read_local_memory()
        assert no_gpu.get("near").capacity is None  # no GPU here: configure ?memory=
        assert no_gpu.gpu is not None
        assert no_gpu.gpu.unavailable == "NVML: no driver"
    finally:
        await upstream.aclose()
