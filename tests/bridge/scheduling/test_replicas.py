"""A burst for one model over real sockets: with replication the bridge loads copies on
the other daemons and the burst's tail wait halves at least; after it, the copies go."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from bridge.settings import load_settings
from ollamasim.testing import RunningFleet, running_fleet
from replay.report import percentile
from tests.bridge._events import wait_for
from tests.bridge._support import kinds, running_bridge

GIB = 1024**3
BURST = 80

FLEET: dict[str, Any] = {
    "time_scale": 0.02,
    "gen_tokens_per_s": 10,  # 40 tokens: a request holds a slot 4 s (80 ms of wall time)
    "prefill_tokens_per_s": 100000,
    "models": [{"name": "hot", "size": 2 * GIB, "response_tokens": 40}],
    "daemons": [
        {"name": n, "memory": 16 * GIB, "num_parallel": 2, "load_fixed_s": 2.0}
        for n in ("a", "b", "c", "d")
    ],
}


async def _burst(fleet: RunningFleet, *, replication: bool) -> tuple[list[float], set[str], Any]:
    daemons = ",".join(f"{d.name}={d.base_url}?parallel=2&memory={16 * GIB}" for d in fleet.daemons)
    settings = load_settings(
        {"ALB_DAEMONS": daemons},
        replication=replication,
        replica_idle=0.3,
        refresh_interval=0.05,
    )
    body = {"model": "hot", "prompt": "hi", "stream": False}
    async with (
        running_bridge(settings) as b,
        httpx.AsyncClient(
            base_url=b.base_url, timeout=60, limits=httpx.Limits(max_connections=BURST)
        ) as c,
    ):
        assert (await c.post("/api/generate", json=body)).status_code == 200  # a loads it

        async def one() -> tuple[float, str]:
            t0 = time.monotonic()
            r = await c.post("/api/generate", json=body)
            assert r.status_code == 200, r.text
            return time.monotonic() - t0, r.headers["x-alb-daemon"]

        burst = asyncio.gather(*(one() for _ in range(BURST)))
        seen: set[str] = set()
        while replication and not burst.done() and not seen:
            # While the burst runs, the copies show as replicas in /alb/v1/models.
            state = (await c.get("/alb/v1/models")).json()["daemons"]
            seen = {
                d["name"]
                for d in state
                for m in d["models"]
                if m["replica"] and m["state"] == "loaded"
            }
            await asyncio.sleep(0.01)
        results = await burst
        served = {name for _, name in results}
        if replication:
            assert seen, "no copy showed as a replica"
            assert "a" not in seen  # the first copy is not a replica

        def holders() -> set[str]:
            loaded = {d.name for d in fleet.daemons if "loaded" in kinds(d.events())}
            return loaded - {d.name for d in fleet.daemons if "unload" in kinds(d.events())}

        retired = True
        if replication:
            # After the burst, the copies are retired: one daemon holds the model again.
            try:
                await wait_for(lambda: len(holders()) == 1, 20, "the copies' retirement")
            except TimeoutError:
                retired = False
        rows = (await c.get("/alb/v1/decisions", params={"limit": 1000})).json()["decisions"]
        assert retired, (holders(), [(r["kind"], r["daemon"], r["reason"]) for r in rows])
    return [t for t, _ in results], served, rows


async def test_a_burst_spreads_over_copies_and_the_copies_retire_after_it() -> None:
    async with running_fleet(FLEET) as fleet:
        one_daemon, served_alone, _ = await _burst(fleet, replication=False)
    async with running_fleet(FLEET) as fleet:
        spread, served, rows = await _burst(fleet, replication=True)
    assert served_alone == {"a"}
    assert len(served) >= 3, served  # copies on at least three daemons served the burst
    p95_alone, p95 = percentile(one_daemon, 95), percentile(spread, 95)
    assert p95 <= p95_alone / 2, (p95, p95_alone)
    print(f"p95 wait: {p95:.2f} s with copies, {p95_alone:.2f} s on one daemon")
    kinds = [r["kind"] for r in rows]
    assert kinds.count("replicate") >= 2
    replicated = [r for r in rows if r["kind"] == "replicate" and r["reason"] != "rebalanced"]
    assert all(r["inputs"]["wait_s"] > r["inputs"]["load_s"] for r in replicated)
    retired = {r["daemon"] for r in rows if r["kind"] == "retire-replica"}
    assert len(retired) == len({r["daemon"] for r in replicated})
