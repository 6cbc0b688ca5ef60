"""The bridge's own waiters (an admin load, a load another replica wants of this
daemon's owner, a copy's load) make the driver load, but are nobody's demand: the
high-water depth and the slot shares (``Gate.take_peak``) count clients only. Before,
the owner's waiter for a load another replica wanted counted one request more in the
fleet's depth and in the owner's demand for as long as the load ran."""

from __future__ import annotations

import asyncio
import contextlib

from bridge.errors import BridgeError
from bridge.policy.numctx import Need
from bridge.policy.sizing import ModelInfo
from bridge.scheduling.gate import Gate
from bridge.scheduling.scheduler import Scheduler, Ticket

GIB = 1024**3
N = ModelInfo("n", GIB, 32768, 1000)


async def test_the_bridges_own_waiter_is_no_demand(scheduler: Scheduler) -> None:
    s = scheduler
    own = s.admit("n", Need(100), N, only="b", internal=True)
    assert isinstance(own, Ticket)
    assert own.internal
    loading = asyncio.create_task(s.wait(own, "alb:admin"))
    await asyncio.sleep(0)
    b, gate = s.fleet.get("b"), own.gate
    assert (gate.depth, gate.internal) == (1, 1)  # queued: the driver loads for it
    assert s.fleet_depth(b, "n", gate) == 0
    assert gate.take_peak() == 0
    # A client's request for the same model, on the same gate: that one counts.
    client = s.admit("n", Need(100), N, only="b")
    assert isinstance(client, Ticket)
    assert not client.internal
    waiting = asyncio.create_task(s.wait(client, "c"))
    await asyncio.sleep(0)
    assert s.fleet_depth(b, "n", gate) == 1
    assert gate.take_peak() == 1
    for task in (loading, waiting):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, BridgeError):
            await task
    assert (gate.depth, gate.internal) == (0, 0)


async def test_a_failed_load_leaves_no_internal_waiter_counted() -> None:
    gate = Gate(2)
    own = asyncio.create_task(gate.wait("alb:admin", internal=True))
    client = asyncio.create_task(gate.wait("c"))
    await asyncio.sleep(0)
    assert (gate.queued_clients, gate.outstanding_clients, gate.internal) == (1, 1, 1)
    gate.fail(BridgeError("the load failed"))
    for task in (own, client):
        with contextlib.suppress(BridgeError):
            await task
    assert (gate.depth, gate.internal, gate.outstanding_clients) == (0, 0, 0)


async def test_a_served_internal_waiter_leaves_the_count_at_once() -> None:
    gate = Gate(1)
    own = asyncio.create_task(gate.wait("alb:admin", internal=True))
    await asyncio.sleep(0)
    gate.open(4096, True)
    await own
    assert gate.internal == 0
    assert gate.busy == 1  # its slot, until the caller gives it back
    gate.release()
    assert gate.outstanding_clients == 0


async def test_only_a_clients_wait_is_a_cold_start(scheduler: Scheduler) -> None:
    """``alb_cold_starts_total`` and ``alb_queue_wait_seconds`` count requests: the
    bridge's own waiter and a prefetch's wait for the same load are not among them."""
    s = scheduler
    own = s.admit("n", Need(100), N, only="b", internal=True)
    prefetch = s.admit("n", Need(100), N, only="b")
    client = s.admit("n", Need(100), N, only="b")
    assert isinstance(own, Ticket)
    assert isinstance(prefetch, Ticket)
    assert isinstance(client, Ticket)
    waits = [
        asyncio.create_task(s.wait(own, "alb:admin")),
        asyncio.create_task(s.wait(prefetch, "alb:prefetch", background=True)),
        asyncio.create_task(s.wait(client, "c")),
    ]
    await asyncio.sleep(0)
    client.gate.open(4096, True)
    for done in asyncio.as_completed(waits):  # two slots: the third waits for a release
        s.release(await done)
    registry = s._metrics.registry
    cold = registry.get_sample_value("alb_cold_starts_total", {"cause": "first"})
    waited = registry.get_sample_value(
        "alb_queue_wait_seconds_count", {"model": "n", "cold": "true"}
    )
    assert (cold, waited) == (1.0, 1.0)
