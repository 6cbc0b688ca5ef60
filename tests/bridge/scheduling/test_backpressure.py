"""Backpressure: the high-water mark answers 503 with Retry-After in each API's shape."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import httpx
import pytest

from bridge.errors import LoadFailed
from bridge.policy.queueing import (
    CopyQueue,
    CopyWait,
    FairQueue,
    drain_s,
    retry_hint,
)
from bridge.scheduling.gate import Gate
from ollamasim.testing import RunningDaemon, RunningFleet
from tests.bridge._support import RunningBridge, kinds, running_bridge, settings_for


@pytest.fixture
async def small_queue(fleet: RunningFleet) -> AsyncIterator[RunningBridge]:
    async with running_bridge(settings_for(fleet, queue_capacity=10, high_water=0.8)) as b:
        yield b


GEN = {"model": "chatty", "prompt": "hi", "stream": False}


async def _full_queue(c: httpx.AsyncClient, d: RunningDaemon) -> list[asyncio.Task[httpx.Response]]:
    """Eight requests queued behind a load of chatty that hangs (the high-water mark of
    ``small_queue``): the requests, still waiting."""
    queued = [asyncio.create_task(c.post("/api/generate", json=GEN)) for _ in range(8)]
    await asyncio.to_thread(d.wait_for_event, lambda ev: "load-start" in kinds(ev))
    for _ in range(100):
        m = (await c.get("/alb/v1/models")).json()["daemons"][0]["models"]
        if m and m[0]["queue_depth"] == 8:
            break
        await asyncio.sleep(0.01)
    return queued


async def test_over_high_water_is_503_with_retry_after_in_both_shapes(
    fleet: RunningFleet, small_queue: RunningBridge
) -> None:
    d = fleet.daemon("a")
    d.faults.hang_load("chatty")
    async with httpx.AsyncClient(base_url=small_queue.base_url, timeout=30) as c:
        queued = await _full_queue(c, d)
        native = await c.post("/api/generate", json=GEN)
        openai = await c.post(
            "/v1/chat/completions",
            json={"model": "chatty", "messages": [{"role": "user", "content": "hi"}]},
        )
        d.faults.clear_hang()
        done = await asyncio.gather(*queued)
        metrics = (await c.get("/metrics")).text
    assert native.status_code == 503
    assert int(native.headers["retry-after"]) >= 1
    assert set(native.json()) == {"error"}
    assert "overloaded" in native.json()["error"]
    assert openai.status_code == 503
    assert int(openai.headers["retry-after"]) >= 1
    err = openai.json()["error"]
    assert err["type"] == "api_error"
    assert err["param"] is None
    assert err["code"] is None
    assert "overloaded" in err["message"]
    assert [r.status_code for r in done] == [200] * 8  # every admitted request answered
    assert 'alb_rejections_total{reason="high-water"} 2.0' in metrics


async def test_refused_requests_are_told_to_come_back_spread_at_the_pace_of_the_queue(
    fleet: RunningFleet, small_queue: RunningBridge
) -> None:
    # The queue is full behind a load that hangs; each refusal after the first is told to
    # come back one departure later (2 slots of the 1 s service prior: half a second),
    # not all at the same second.
    d = fleet.daemon("a")
    d.faults.hang_load("chatty")
    async with httpx.AsyncClient(base_url=small_queue.base_url, timeout=30) as c:
        queued = await _full_queue(c, d)
        refused = [await c.post("/api/generate", json=GEN) for _ in range(8)]
        d.faults.clear_hang()
        done = await asyncio.gather(*queued)
    assert [r.status_code for r in refused] == [503] * 8
    hints = [int(r.headers["retry-after"]) for r in refused]
    assert hints == sorted(hints), hints
    assert 3 <= hints[-1] - hints[0] <= 5, hints  # seven departures of 0.5 s: 3.5 s
    assert [r.status_code for r in done] == [200] * 8


def _copy(slots: int = 2, service_s: float = 2.0, load_left_s: float = 0.0) -> CopyWait:
    """One copy that only this replica uses: ``slots`` of ``service_s``."""
    queue = CopyQueue(depth=0, outstanding=0, share=slots, slots=slots)
    return CopyWait(queue, service_s, load_left_s)


def test_a_queue_drains_at_each_copys_pace_from_the_end_of_its_load() -> None:
    loaded = _copy()  # 2 slots of 2 s: one request a second
    assert drain_s([loaded], 20) == 20.0
    # A second copy loading (5 s left): 5 of the 20 leave in those 5 s at one a second,
    # the other 15 at two a second.
    assert drain_s([loaded, _copy(load_left_s=5.0)], 20) == 12.5
    # A copy loaded after the queue would have drained changes nothing.
    assert drain_s([loaded, _copy(load_left_s=30.0)], 20) == 20.0
    # Each copy at its own pace: 1 + 0.5 requests a second.
    assert drain_s([loaded, _copy(service_s=4.0)], 20) == pytest.approx(20 / 1.5)
    # Only copies still loading, nothing to drain: the soonest load's end.
    assert drain_s([_copy(load_left_s=9.0), _copy(load_left_s=5.0)], 0) == 5.0
    assert drain_s([], 5) == 0.0


def test_refused_requests_are_told_to_come_back_one_departure_apart() -> None:
    copies = [_copy(), _copy()]  # two requests a second leave the queues
    hints = [retry_hint(copies, now=100.0)]
    for _ in range(5):
        hints.append(retry_hint(copies, now=100.0, promised_at=hints[-1].promised_at))
    # The first when the first seat frees, each next one a departure later.
    assert [h.promised_at for h in hints] == [100.5, 101.0, 101.5, 102.0, 102.5, 103.0]
    assert [h.retry_after_s for h in hints] == [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]
    # Promises in the past: the line starts again at the first seat to free.
    assert retry_hint(copies, now=200.0, promised_at=103.0).promised_at == 200.5
    # No copy loaded yet: the first seat frees after the load and one service.
    assert retry_hint([_copy(load_left_s=30.0)], now=0.0).retry_after_s == 31.0
    # Whole seconds, at least one, at most ``max_s`` (120 by default): past it no place
    # is promised later, so the refused are told ``max_s`` as they come.
    assert retry_hint([_copy(load_left_s=5000.0)], now=0.0).retry_after_s == 120.0
    assert retry_hint([], now=0.0).retry_after_s == 1.0
    late = [retry_hint(copies, now=100.0, promised_at=250.0, max_s=60.0) for _ in range(2)]
    assert [(h.retry_after_s, h.promised_at) for h in late] == [(60.0, 160.0)] * 2
    assert retry_hint([_copy(load_left_s=90.0)], now=0.0, max_s=600.0).retry_after_s == 91.0


def test_with_other_replicas_a_shared_copy_serves_at_the_daemons_slots() -> None:
    # Others use the daemon too: its 4 slots drain everyone's queue (2 a second); only
    # this replica there: its share of 1 slot (0.5 a second).
    shared = CopyWait(CopyQueue(depth=3, outstanding=5, share=1, slots=4, theirs=10), 2.0)
    alone = replace(shared, queue=replace(shared.queue, theirs=0))
    assert (shared.rate, alone.rate) == (2.0, 0.5)
    # Three replicas each refusing their own: each spaces its line by three departures.
    first = retry_hint([shared], now=0.0, replicas=3)
    second = retry_hint([shared], now=0.0, promised_at=first.promised_at, replicas=3)
    assert second.promised_at - first.promised_at == 1.5


def test_fair_queue_round_robins_sessions() -> None:
    q: FairQueue[str] = FairQueue()
    for i in range(3):
        q.push("greedy", f"g{i}")
    q.push("polite", "p0")
    q.push("other", "o0")
    assert [q.pop() for _ in range(5)] == ["g0", "p0", "o0", "g1", "g2"]
    assert len(q) == 0
    q.push("a", "x")
    q.push("a", "y")
    assert q.remove("a", "x")
    assert not q.remove("a", "x")
    assert q.pop() == "y"


def test_a_heavier_session_gets_more_turns_in_a_row() -> None:
    """A key's priority class is its sessions' weight: weight 3 against 1 is three
    requests served to one, in each round, until the heavy session runs dry."""
    q: FairQueue[str] = FairQueue()
    for i in range(7):
        q.push("gold", f"g{i}", 3)
    for i in range(3):
        q.push("free", f"f{i}")
    got = [q.pop() for _ in range(10)]
    assert got == ["g0", "g1", "g2", "f0", "g3", "g4", "g5", "f1", "g6", "f2"]
    # pop_first keeps the turns too, and a refused head keeps its place.
    for i in range(4):
        q.push("gold", f"g{i}", 2)
    q.push("free", "f0")
    assert q.pop_first(lambda x: x.startswith("f")) == "f0"
    assert [q.pop() for _ in range(4)] == ["g0", "g1", "g2", "g3"]
    assert len(q) == 0


async def test_gate_hands_slots_in_fair_order_and_fails_waiters_on_load_error() -> None:
    gate = Gate(slots=1)
    order: list[str] = []

    async def use(session: str) -> None:
        await gate.wait(session)
        order.append(session)
        gate.release(0.01)

    tasks = [asyncio.create_task(use(s)) for s in ("a", "a", "a", "b")]
    await asyncio.sleep(0)
    gate.open()
    await asyncio.gather(*tasks)
    assert order == ["a", "b", "a", "a"]
    assert gate.busy == 0
    gate.close()
    waiter = asyncio.create_task(gate.wait("c"))
    await asyncio.sleep(0)
    gate.fail(LoadFailed("disk on fire"))
    with pytest.raises(LoadFailed):
        await waiter


async def test_cancelled_waiter_returns_its_slot() -> None:
    gate = Gate(slots=1)
    gate.open()
    assert gate.try_acquire()
    waiter = asyncio.create_task(gate.wait("a"))
    await asyncio.sleep(0)
    gate.release()  # hands the slot to the waiter...
    waiter.cancel()  # ...which is cancelled before it runs
    await asyncio.gather(waiter, return_exceptions=True)
    assert gate.busy == 0
    assert gate.try_acquire()
