"""``Scheduler.admit``'s fast path (a free slot found without fleet views) places every
request where ``placement.route`` would, and ``release`` wakes the load driver only when
requests wait on the daemon. Scheduler state only: no daemon is contacted."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest

from bridge.metrics import Metrics
from bridge.policy.numctx import Need
from bridge.policy.placement import Serve, route
from bridge.scheduling.decisions import DecisionLog
from bridge.scheduling.fleet import Fleet
from bridge.scheduling.scheduler import Lease, Scheduler
from bridge.settings import load_settings
from bridge.upstream import Upstream

GIB = 1024**3
NAMES = ("a", "b", "c")


@pytest.fixture
async def scheduler() -> AsyncIterator[Scheduler]:
    daemons = ",".join(f"{n}=http://127.0.0.1:{i + 1}?parallel=2" for i, n in enumerate(NAMES))
    settings = load_settings({"ALB_DAEMONS": daemons})
    upstream = Upstream.create(settings)
    try:
        fleet = Fleet(settings.daemon_specs(), upstream, 10)
        yield Scheduler(settings, fleet, upstream, Metrics(), DecisionLog(16))
    finally:
        await upstream.aclose()


def _randomise(s: Scheduler, rng: random.Random) -> None:
    """Models loaded here and there with random contexts, slots taken at random."""
    s.gates.clear()
    for gates in s.gates_of.values():
        gates.clear()
    for d in s.fleet.daemons.values():
        d.up = rng.random() < 0.9
        d.catalog = {"m": {}, "o": {}}
        d.loaded = {}
        for key in ("m", "o"):
            if rng.random() < 0.7:
                d.loaded[key] = {"size": GIB, "context_length": rng.choice((2048, 8192))}
        for key in d.loaded:
            gate = s.gate(d.name, key)
            for _ in range(rng.randint(0, 2)):
                gate.try_acquire()


async def test_the_fast_path_serves_where_route_would(scheduler: Scheduler) -> None:
    s, rng = scheduler, random.Random(1234)
    fast = 0
    for _ in range(500):
        _randomise(s, rng)
        need = Need(rng.choice((1000, 4000)))
        exclude = frozenset(rng.sample(NAMES, rng.randint(0, 1)))
        views = [s.view(d) for d in s.fleet.daemons.values() if d.name not in exclude]
        expected = route(views, "m", need, lambda v: GIB, s.oracle)
        try:
            got = s.admit("m", need, None, exclude=exclude)
        except Exception:
            assert not isinstance(expected, Serve)
            continue
        if isinstance(expected, Serve):
            assert got.daemon.name == expected.daemon
        if isinstance(got, Lease):
            fast += 1
            assert isinstance(expected, Serve)
            assert got.daemon.name == expected.daemon
    assert fast > 50  # the fast path was exercised, not only the fallback


async def test_release_kicks_the_driver_only_when_requests_wait(
    scheduler: Scheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = scheduler
    kicked: list[str] = []
    monkeypatch.setattr(s, "kick", kicked.append)
    a = s.fleet.get("a")
    a.up, a.catalog = True, {"m": {}, "o": {}}
    a.loaded = {"m": {"size": GIB, "context_length": 8192}}
    lease = s.admit("m", Need(100))
    assert isinstance(lease, Lease)
    s.release(lease)
    assert kicked == []  # idle model, nobody waiting: nothing for the driver
    cold = s.gate("a", "o")  # a request waits for "o" to load on the same daemon
    waiter = asyncio.get_running_loop().create_future()
    cold.queue.push("x", (waiter, Need(100)))
    lease = s.admit("m", Need(100))
    assert isinstance(lease, Lease)
    s.release(lease)
    assert kicked == ["a"]  # "m" went idle: it may make room for "o"
