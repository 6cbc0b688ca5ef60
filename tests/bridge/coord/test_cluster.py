"""Three ``alb serve`` processes in front of one simulated fleet, sharing it through a
real Redis (issue #15's "done when", cold burst).

Each replica is told a different story about memory: its own daemon is large, the other
two hold the filler model and no more. So, alone, replica i would load a cold model on
gpu-i (the others would need an eviction): three replicas, three different places. With
the claims, the first replica to claim the model decides for all, and its owner loads it
once."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from ollamasim.testing import RunningFleet, serve_in_thread
from tests.bridge._events import wait_for
from tests.bridge._procs import ALB, Proc, StoppableRedis, clean_env, free_port
from tests.bridge._support import kinds

pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(120)]

GIB = 1024**3
NAMES = ("gpu0", "gpu1", "gpu2")
BURST = 300
LEASE_S = 1.5

FLEET: dict[str, Any] = {
    "time_scale": 0.02,
    "gen_tokens_per_s": 200,
    "prefill_tokens_per_s": 100000,
    "models": [
        {"name": "filler", "size": GIB, "response_tokens": 4},
        {"name": "cold", "size": 2 * GIB, "response_tokens": 8},
    ],
    "daemons": [
        {
            "name": n,
            "memory": 24 * GIB,
            "num_parallel": 2,
            "load_fixed_s": 4.0,
            "context_length": 4096,
        }
        for n in NAMES
    ],
}


class Cluster:
    def __init__(self, fleet: RunningFleet, procs: list[Proc], urls: list[str]) -> None:
        self.fleet = fleet
        self.procs = procs
        self.urls = urls


def _daemons(fleet: RunningFleet, own: int) -> str:
    """ALB_DAEMONS for replica ``own``: its daemon large, the others just big enough for
    one of the two models (filler 1 GiB, cold 2 GiB, each with 1 GiB of KV cache)."""
    parts = []
    for i, n in enumerate(NAMES):
        memory = 64 * GIB if i == own else 5 * GIB
        url = fleet.daemon(n).base_url
        parts.append(f"{n}={url}?parallel=2&memory={memory}&default_ctx=4096")
    return ",".join(parts)


@pytest.fixture
def cluster(redis_url: str) -> Iterator[Cluster]:
    yield from _cluster(redis_url, FLEET)


def _cluster(
    redis_url: str,
    config: dict[str, Any],
    daemons: Callable[[RunningFleet, int], str] | None = None,
    **settings: str,
) -> Generator[Cluster]:
    """Three ``alb serve`` processes; ``daemons(fleet, i)``: replica i's ALB_DAEMONS
    (default: each told its own daemon is the one with room, ``_daemons``);
    ``settings``: more of their environment."""
    daemons = daemons or _daemons
    namespace = f"alb-cluster-{uuid.uuid4().hex[:8]}"
    with serve_in_thread(config) as fleet, ExitStack() as stack:
        procs, urls = [], []
        for i in range(3):
            port = free_port()
            env = clean_env(
                ALB_DAEMONS=daemons(fleet, i),
                ALB_REDIS_URL=redis_url,
                ALB_COORD_NAMESPACE=namespace,
                ALB_REPLICA_ID=f"r{i}",
                ALB_LEASE_TTL=str(LEASE_S),
                ALB_REFRESH_INTERVAL="0.2",
                ALB_REPLICATION="false",
                ALB_QUEUE_CAPACITY="1024",
            )
            env.update(settings)
            proc = Proc([ALB, "serve", "--host", "127.0.0.1", "--port", str(port)], env)
            stack.callback(proc.stop)
            procs.append(proc)
            urls.append(f"http://127.0.0.1:{port}")
        for proc in procs:
            proc.wait_line("bridge listening on", timeout=30)
        yield Cluster(fleet, procs, urls)


async def _owners_settled(c: httpx.AsyncClient, urls: list[str]) -> dict[str, str]:
    """Wait until every replica names one owner per daemon, the same on each, and each
    replica owns one daemon; returns daemon -> owner."""
    for _ in range(200):
        views = [(await c.get(u + "/alb/v1/models")).json() for u in urls]
        owners = [{d["name"]: d["owner"] for d in v["daemons"]} for v in views]
        if (
            all(o == owners[0] for o in owners)
            and None not in owners[0].values()
            and sorted(owners[0].values()) == ["r0", "r1", "r2"]
            and all(v["coordination"]["mode"] == "shared" for v in views)
        ):
            return owners[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"owners never settled: {owners}")


def _loads(fleet: RunningFleet, model: str) -> dict[str, int]:
    return {d.name: kinds(d.events(), model).count("loaded") for d in fleet.daemons}


async def test_a_cold_burst_over_three_replicas_loads_the_model_once(cluster: Cluster) -> None:
    urls = cluster.urls
    limits = httpx.Limits(max_connections=BURST + 10)
    async with httpx.AsyncClient(timeout=60, limits=limits) as c:
        owners = await _owners_settled(c, urls)
        # The filler on every daemon, each asked of a replica that does not own it.
        for n in NAMES:
            asker = next(u for u, r in zip(urls, ("r0", "r1", "r2"), strict=True) if r != owners[n])
            r = await c.post(f"{asker}/alb/v1/models/filler/load", json={"daemon": n})
            assert r.status_code == 200, r.text
            assert r.json()["daemon"] == n
        assert _loads(cluster.fleet, "filler:latest") == dict.fromkeys(NAMES, 1)

        async def one(i: int) -> httpx.Response:
            body = {"model": "cold", "prompt": f"hi {i}", "stream": False}
            return await c.post(urls[i % 3] + "/api/generate", json=body)

        answers = await asyncio.gather(*(one(i) for i in range(BURST)))
        statuses = [a.status_code for a in answers]
        assert statuses == [200] * BURST, {s: statuses.count(s) for s in set(statuses)}
        loads = _loads(cluster.fleet, "cold:latest")
        assert sum(loads.values()) == 1, loads
        (where,) = [n for n, k in loads.items() if k]
        assert {a.headers["x-alb-daemon"] for a in answers} == {where}
        # Alone, the others would have loaded it on their own daemon: their records say so.
        moved = []
        for u in urls:
            records = (await c.get(u + "/alb/v1/decisions", params={"limit": 1000})).json()
            moved += [
                r
                for r in records.get("decisions", records)
                if isinstance(r, dict) and r.get("reason") == "claimed-by-another-replica"
            ]
        chosen = {r.get("chosen") for r in moved}
        assert chosen, "no replica followed another's claim"
        assert where not in chosen
        assert len(chosen | {where}) >= 2

        # Admin actions sent to a replica that does not own the daemon: its owner acts.
        others = [u for u, r in zip(urls, ("r0", "r1", "r2"), strict=True) if r != owners[where]]
        asker = others[0]
        gone = await c.post(f"{asker}/alb/v1/models/cold/unload", json={"daemon": where})
        assert gone.status_code == 200, gone.text
        assert gone.json()["unloaded_from"] == [where]
        unloads = [e for e in cluster.fleet.daemon(where).events() if e.kind == "unload"]
        assert [(e.model, e.reason) for e in unloads][-1] == ("cold:latest", "requested")
        pin = await c.post(f"{asker}/alb/v1/models/filler/pin", json={"daemon": where})
        assert pin.status_code == 200, pin.text
        await _pinned_everywhere(c, urls, where, pinned=True)
        refused = await c.post(f"{others[1]}/alb/v1/models/filler/unload", json={"daemon": where})
        assert refused.status_code == 409  # pinned: every replica knows it
        unpin = await c.post(f"{others[1]}/alb/v1/models/filler/unpin", json={"daemon": where})
        assert unpin.status_code == 200, unpin.text
        await _pinned_everywhere(c, urls, where, pinned=False)


async def _pinned_everywhere(
    c: httpx.AsyncClient, urls: list[str], daemon: str, *, pinned: bool
) -> None:
    """Wait until every replica shows filler pinned (or not) on ``daemon``."""

    def shown(view: dict[str, Any]) -> bool:
        rows = [m for d in view["daemons"] if d["name"] == daemon for m in d["models"]]
        return any(m["model"] == "filler:latest" and m["pinned"] for m in rows)

    for u in urls:
        for _ in range(100):  # the notice reaches the others within milliseconds
            if shown((await c.get(u + "/alb/v1/models")).json()) == pinned:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError(f"{u}: filler pinned is not {pinned}")


SLOW_LOAD: dict[str, Any] = {
    **FLEET,
    "daemons": [{**d, "load_fixed_s": 100.0} for d in FLEET["daemons"]],  # 2 s of wall time
}
LOAD_S = 100.0 * 0.02


@pytest.fixture
def slow_cluster(redis_url: str) -> Iterator[Cluster]:
    yield from _cluster(redis_url, SLOW_LOAD)


async def test_killing_the_owner_mid_load_the_load_completes_through_the_new_owner(
    slow_cluster: Cluster,
) -> None:
    cluster, urls = slow_cluster, slow_cluster.urls
    async with httpx.AsyncClient(timeout=60) as c:
        owners = await _owners_settled(c, urls)
        target = "gpu0"
        victim = int(owners[target][1:])
        asker = urls[(victim + 1) % 3]  # survives; not the owner of gpu0
        load = asyncio.ensure_future(
            c.post(f"{asker}/alb/v1/models/cold/load", json={"daemon": target})
        )
        await wait_for(
            lambda: "load-start" in kinds(cluster.fleet.daemon(target).events(), "cold:latest"),
            what="the load under way",
        )
        body = {"model": "cold", "prompt": "hi", "stream": False}
        waiting = [
            asyncio.ensure_future(c.post(asker + "/api/generate", json=body)) for _ in range(20)
        ]
        await asyncio.sleep(0.1)  # the requests are queued behind the load on the asker
        killed_at = time.monotonic()
        cluster.procs[victim].p.kill()  # SIGKILL: no hand-over, the lease must expire
        answers = await asyncio.gather(load, *waiting)
        took = time.monotonic() - killed_at
        statuses = [a.status_code for a in answers]
        assert all(s in {200, 503} for s in statuses), statuses
        assert all("retry-after" in a.headers for a in answers if a.status_code == 503)
        assert statuses[0] == 200, answers[0].text  # the load itself went through
        events = kinds(cluster.fleet.daemon(target).events(), "cold:latest")
        # The dead owner's connection carried the first load: the daemon gave it up
        # (as Ollama does when the loading client goes) and the new owner loaded again.
        assert events.count("load-aborted") == 1, events
        assert events.count("load-start") == 2, events
        assert events.count("loaded") == 1, events
        print(f"owner killed mid-load: loaded through the new owner {took:.2f}s later")
        assert took <= LEASE_S + LOAD_S + 2.0  # expiry, a round and a refresh, the load
        after = (await c.get(asker + "/alb/v1/models")).json()
        owner = {d["name"]: d["owner"] for d in after["daemons"]}[target]
        assert owner not in {None, f"r{victim}"}


OUTAGE_S = 30.0


@pytest.fixture
def own_redis() -> Iterator[StoppableRedis]:
    r = StoppableRedis()
    r.start()
    try:
        yield r
    finally:
        r.remove()


@pytest.mark.timeout(150)
async def test_redis_stopped_under_steady_load_fails_nothing_and_shared_mode_comes_back(
    own_redis: StoppableRedis,
) -> None:
    gen = _cluster(own_redis.url, FLEET)
    cluster = next(gen)
    try:
        await _steady_load_through_an_outage(cluster, own_redis)
    finally:
        gen.close()


async def _steady_load_through_an_outage(cluster: Cluster, redis: StoppableRedis) -> None:
    urls = cluster.urls
    statuses: list[int] = []
    stop = asyncio.Event()
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=64)) as c:
        await _owners_settled(c, urls)

        async def client(i: int) -> None:
            model = ("filler", "cold")[i % 2]
            n = 0
            while not stop.is_set():
                body = {"model": model, "prompt": f"{i} {n}", "stream": False}
                r = await c.post(urls[(i + n) % 3] + "/api/generate", json=body)
                statuses.append(r.status_code)
                n += 1

        clients = [asyncio.ensure_future(client(i)) for i in range(4)]
        await wait_for(lambda: len(statuses) > 200, 20, "traffic before the outage")
        before = {m: _loads(cluster.fleet, m) for m in ("filler:latest", "cold:latest")}
        redis.stop()
        stopped_at = time.monotonic()
        served_before = len(statuses)
        await asyncio.sleep(OUTAGE_S)  # the outage's length is the test's subject
        during = len(statuses) - served_before
        redis.start()
        back = await _until_shared(c, urls)
        stop.set()
        await asyncio.gather(*clients)
        outage_loads = {
            m: sum(_loads(cluster.fleet, m).values()) - sum(before[m].values()) for m in before
        }
        print(
            f"Redis stopped {OUTAGE_S:.0f}s: {during} requests served meanwhile, "
            f"{len(statuses)} in all, statuses {sorted(set(statuses))}; "
            f"shared again {back:.2f}s after Redis returned; loads meanwhile {outage_loads}"
        )
        assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
        assert during > 100
        assert all(n <= 3 for n in outage_loads.values())  # at most one per replica
        assert back < 5.0
        assert time.monotonic() - stopped_at < OUTAGE_S + 10
        for u in urls:
            query: dict[str, str | int] = {"kind": "coordination", "limit": 1000}
            records = (await c.get(u + "/alb/v1/decisions", params=query)).json()
            reasons = [r["reason"] for r in reversed(records["decisions"])]  # oldest first
            assert "degraded" in reasons
            assert "shared-again" in reasons
            assert reasons.index("degraded") < reasons.index("shared-again")


async def _until_shared(c: httpx.AsyncClient, urls: list[str]) -> float:
    t0 = time.monotonic()
    while True:
        modes = [(await c.get(u + "/alb/v1/models")).json()["coordination"]["mode"] for u in urls]
        if modes == ["shared"] * 3:
            return time.monotonic() - t0
        assert time.monotonic() - t0 < 10, modes
        await asyncio.sleep(0.05)


MIXED_MODELS = [f"m{i}" for i in range(8)]
MIXED: dict[str, Any] = {
    "time_scale": 0.02,
    "gen_tokens_per_s": 10,  # 20 tokens: a request holds a slot 2 s (40 ms of wall time)
    "prefill_tokens_per_s": 100000,
    "seed": 3,
    "models": [{"name": m, "size": 2 * GIB, "response_tokens": 20} for m in MIXED_MODELS],
    "daemons": [
        {
            "name": n,
            "memory": 7 * GIB,  # two runners of 3 GiB (2 GiB + 1 GiB of KV): six of eight
            "num_parallel": 2,
            "load_fixed_s": 2.0,
            "context_length": 4096,
        }
        for n in NAMES
    ],
}


def _uniform(fleet: RunningFleet) -> str:
    return ",".join(
        f"{n}={fleet.daemon(n).base_url}?parallel=2&memory={7 * GIB}&default_ctx=4096"
        for n in NAMES
    )


@pytest.fixture
def mixed_cluster(redis_url: str) -> Iterator[Cluster]:
    yield from _cluster(redis_url, MIXED, daemons=lambda fleet, _i: _uniform(fleet))


async def test_mixed_traffic_over_three_replicas_keeps_ollamas_limits(
    mixed_cluster: Cluster,
) -> None:
    """Several simulated minutes of random traffic over eight models that do not all fit,
    through three replicas: from the simulator's own event log, no daemon ever went over
    its memory or max_loaded, Ollama never had to choose an eviction (the owners made
    every one), and no (daemon, model) had more requests in flight than the replicas'
    slot shares allow together (max(slots, replicas))."""
    cluster, urls = mixed_cluster, mixed_cluster.urls
    rng = random.Random(7)
    statuses: list[int] = []
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as c:
        await _owners_settled(c, urls)
        sim_started = time.monotonic()

        async def client(i: int) -> None:
            for n in range(40):
                model = rng.choice(MIXED_MODELS[:5] if rng.random() < 0.7 else MIXED_MODELS)
                body = {"model": model, "prompt": f"{i} {n}", "stream": False}
                r = await c.post(rng.choice(urls) + "/api/generate", json=body)
                statuses.append(r.status_code)
                await asyncio.sleep(rng.random() * 0.02)

        await asyncio.gather(*(client(i) for i in range(12)))
        simulated_s = (time.monotonic() - sim_started) / MIXED["time_scale"]
    assert simulated_s > 120, simulated_s  # several minutes of simulated time
    assert set(statuses) <= {200, 503}, {s: statuses.count(s) for s in set(statuses)}
    assert statuses.count(200) >= 0.95 * len(statuses)
    bound = max(2, 3)  # max(slots, replicas)
    for d in cluster.fleet.daemons:
        events = d.events()
        chosen = [
            e for e in events if e.kind == "unload" and (e.reason or "").startswith("evicted")
        ]
        assert chosen == [], f"{d.name}: Ollama chose evictions: {chosen[:3]}"
        assert not [e for e in events if e.kind in {"load-failed", "rejected"}]
        assert all(e.memory_used <= e.memory_capacity for e in events)
        loaded: set[str] = set()
        in_flight: dict[str, int] = {}
        most: dict[str, int] = {}
        for e in events:
            if e.kind == "loaded":
                loaded.add(str(e.model))
                assert len(loaded) <= 3, f"{d.name}: over max_loaded: {loaded}"
            elif e.kind == "unload":
                loaded.discard(str(e.model))
            elif e.kind == "request-start":
                in_flight[str(e.model)] = in_flight.get(str(e.model), 0) + 1
                most[str(e.model)] = max(most.get(str(e.model), 0), in_flight[str(e.model)])
            elif e.kind in {"request-end", "request-interrupted"}:
                in_flight[str(e.model)] -= 1
        assert all(n <= bound for n in most.values()), f"{d.name}: in flight {most}"
    evictions = sum(1 for d in cluster.fleet.daemons for e in d.events() if e.kind == "unload")
    print(
        f"mixed traffic: {len(statuses)} requests over {simulated_s:.0f} simulated s, "
        f"{statuses.count(503)} answered 503, {evictions} unloads, all by the owners"
    )
    assert evictions > 0  # the eight models did not all fit: the test exercised eviction


@pytest.fixture
def small_queue_cluster(redis_url: str) -> Iterator[Cluster]:
    yield from _cluster(
        redis_url,
        FLEET,
        daemons=lambda fleet, _i: _uniform(fleet),
        ALB_QUEUE_CAPACITY="8",
        ALB_HIGH_WATER="0.75",  # refused from 6 waiting
    )


async def test_the_high_water_mark_counts_every_replicas_queue(
    small_queue_cluster: Cluster,
) -> None:
    """Six requests wait for a load that hangs, two through each replica: every replica
    sees the daemon's queue of six or more (``fleet_queue_depth``, as its coordination
    round read the others'; the owner's own waiter for the load the others want is one
    more), so each refuses the next one with 503 and Retry-After though its own queue
    holds two or three. Alone, each would have taken six."""
    cluster, urls = small_queue_cluster, small_queue_cluster.urls
    for d in cluster.fleet.daemons:
        d.faults.hang_load("cold")
    async with httpx.AsyncClient(timeout=60) as c:
        await _owners_settled(c, urls)

        async def one(u: str, i: int) -> httpx.Response:
            body = {"model": "cold", "prompt": f"hi {i}", "stream": False}
            return await c.post(u + "/api/generate", json=body)

        waiting = [asyncio.create_task(one(urls[i % 3], i)) for i in range(6)]

        async def depths() -> list[tuple[int, int]]:
            out = []
            for u in urls:
                view = (await c.get(u + "/alb/v1/models")).json()
                rows = [m for d in view["daemons"] for m in d["models"] if m["queue_depth"]]
                own = sum(m["queue_depth"] for m in rows)
                out.append((own, max((m["fleet_queue_depth"] for m in rows), default=0)))
            return out

        for _ in range(400):
            seen = await depths()
            if all(own <= 3 and fleet >= 6 for own, fleet in seen):
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError(f"the replicas never saw the queue of six: {seen}")
        refused = [await one(u, 100 + i) for i, u in enumerate(urls)]
        assert [r.status_code for r in refused] == [503] * 3, [r.text for r in refused]
        assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
        assert all("overloaded" in r.json()["error"] for r in refused)
        for d in cluster.fleet.daemons:
            d.faults.clear_hang()
        answers = await asyncio.gather(*waiting)
    assert [a.status_code for a in answers] == [200] * 6
