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
    copies_retry_after,
    fleet_backlog,
    retry_after,
)
from bridge.scheduling.gate import Gate
from ollamasim.testing import RunningFleet
from tests.bridge._support import RunningBridge, kinds, running_bridge, settings_for


@pytest.fixture
async def small_queue(fleet: RunningFleet) -> AsyncIterator[RunningBridge]:
    async with running_bridge(settings_for(fleet, queue_capacity=10, high_water=0.8)) as b:
        yield b


async def test_over_high_water_is_503_with_retry_after_in_both_shapes(
    fleet: RunningFleet, small_queue: RunningBridge
) -> None:
    d = fleet.daemon("a")
    d.faults.hang_load("chatty")
    gen = {"model": "chatty", "prompt": "hi", "stream": False}
    async with httpx.AsyncClient(base_url=small_queue.base_url, timeout=30) as c:
        queued = [asyncio.create_task(c.post("/api/generate", json=gen)) for _ in range(8)]
        await asyncio.to_thread(d.wait_for_event, lambda ev: "load-start" in kinds(ev))
        for _ in range(100):
            m = (await c.get("/alb/v1/models")).json()["daemons"][0]["models"]
            if m and m[0]["queue_depth"] == 8:
                break
            await asyncio.sleep(0.01)
        native = await c.post("/api/generate", json=gen)
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


def test_retry_after_grows_with_depth_and_load_time() -> None:
    assert retry_after(0, 1, load_remaining_s=0, service_s=1) == 1
    assert retry_after(10, 2, load_remaining_s=0, service_s=1) == 5
    assert retry_after(10, 2, load_remaining_s=30, service_s=1) == 35
    assert retry_after(10**6, 1, load_remaining_s=0, service_s=10) == 600
    assert retry_after(3, 1, load_remaining_s=0.2, service_s=0.1) == 1


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


def test_a_retry_after_counts_the_other_replicas_queues() -> None:
    # Alone (no one else's requests): this replica's queue at its share, as before.
    assert fleet_backlog([CopyQueue(depth=6, outstanding=8, share=2, slots=2)]) == (6, 2)
    # Two others have 10 in flight or queued on a daemon of 4 slots where this replica
    # has 2 running and 3 queued: 2 + 3 + 10 - 4 = 11 wait, drained by all 4 slots.
    mine = CopyQueue(depth=3, outstanding=5, share=2, slots=4, theirs=10)
    assert fleet_backlog([mine]) == (11, 4)
    assert retry_after(11, 4, load_remaining_s=0, service_s=2) > retry_after(
        3, 2, load_remaining_s=0, service_s=2
    )
    # Never shorter than this replica's own queue.
    assert fleet_backlog([CopyQueue(depth=9, outstanding=9, share=1, slots=4, theirs=1)]) == (9, 4)
    # Two copies add up.
    other = CopyQueue(depth=0, outstanding=1, share=2, slots=2)
    assert fleet_backlog([mine, other]) == (11, 6)


def test_a_retry_after_drains_every_copy_once_the_soonest_load_is_done() -> None:
    loaded = CopyWait(CopyQueue(depth=20, outstanding=22, share=2, slots=2), service_s=2.0)
    # One copy: 20 queued at 2 slots of 2 s = 20 s.
    assert copies_retry_after([loaded]) == 20.0
    # A second copy loading (5 s left, 2 more slots): the soonest copy, ready now, sets
    # when the drain starts, and every copy's slots drain: 20 / (4 / 2 s) = 10 s.
    loading = CopyWait(CopyQueue(depth=0, outstanding=0, share=2, slots=0), 2.0, 5.0)
    assert copies_retry_after([loaded, loading]) == 10.0
    # Only copies still loading: from the soonest one's end.
    assert copies_retry_after([loading, replace(loading, load_left_s=9.0)]) == 5.0
    # A copy that is slower sets the pace for all (the estimate errs late, not early).
    slow = CopyWait(CopyQueue(depth=0, outstanding=0, share=2, slots=2), service_s=4.0)
    assert copies_retry_after([loaded, slow]) == 20.0
    # No copy (none known yet): the shortest hint.
    assert copies_retry_after([]) == 1.0
