"""The scheduler's record of the copies made by replication (``Scheduler.replicas``):
a copy is remembered from the decision on, before its load task has run, so that
``Upkeep.retire_replicas`` retires it once the burst is over. Scheduler state only:
no daemon is contacted."""

from __future__ import annotations

import asyncio

import pytest

from bridge.policy.numctx import Need
from bridge.policy.queueing import SERVICE_PRIOR_S
from bridge.policy.sizing import ModelInfo
from bridge.scheduling.scheduler import Lease, Scheduler

GIB = 1024**3
INFO = ModelInfo("m", GIB, 4096, 1000)


async def test_a_copy_decided_but_not_yet_loading_is_not_forgotten(scheduler: Scheduler) -> None:
    s = scheduler
    # A queue on "a" long enough that a copy on "b" is worth its load.
    tickets = [s.admit("m", Need(100), INFO) for _ in range(30)]
    waiters = [asyncio.create_task(s.wait(t, "t")) for t in tickets if not isinstance(t, Lease)]
    await asyncio.sleep(0)  # the waiters join a's queue
    s.admit("m", Need(100), INFO)
    assert s.replicas == {("b", "m")}
    # Upkeep runs before the copy's load task has made b's gate: nothing of the copy is
    # on b yet, but it is on its way, so it stays a replica (and is retired later).
    assert ("b", "m") not in s.gates
    assert "m" not in s.fleet.get("b").loaded
    s.upkeep.retire_replicas()
    assert s.replicas == {("b", "m")}
    # The copy's load fails (nothing listens on b): then it is gone and forgotten.
    for _ in range(200):
        if not s.copying:
            break
        await asyncio.sleep(0.01)
    assert not s.copying
    s.upkeep.retire_replicas()
    assert s.replicas == set()
    for w in waiters:
        w.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)


async def test_a_new_copy_is_taken_to_serve_at_the_pace_the_model_was_measured_at(
    scheduler: Scheduler,
) -> None:
    s = scheduler
    assert s.service_s("a", "m") == SERVICE_PRIOR_S  # nothing served yet
    a = s.gates[("a", "m")]
    a.busy += 1
    a.release(held_s=0.08)  # one request held a's slot 80 ms
    assert s.service_s("a", "m") == 0.08  # the first measurement itself, not 1 s smoothed
    # A copy on b, before it served anything, is taken to serve at a's pace: routing a
    # burst between them compares queues, not a 1 s prior against a measured 80 ms.
    assert s.service_s("b", "m") == 0.08
    s.loader.estimate["m"] = 0.5  # a load takes 0.5 s: a queue of 30 at 80 ms is worth a copy
    tickets = [s.admit("m", Need(100), INFO) for _ in range(30)]
    waiters = [asyncio.create_task(s.wait(t, "t")) for t in tickets if not isinstance(t, Lease)]
    await asyncio.sleep(0)
    s.admit("m", Need(100), INFO)
    (decision,) = s.decisions.query(kind="replicate")
    # The expected wait on a: its queue drained at 2 slots per 80 ms.
    queued = decision.inputs["queued"]
    assert decision.inputs["wait_s"] == pytest.approx(queued * 0.08 / 2, abs=1e-3)
    b = s.gate("b", "m")
    b.busy += 1
    b.release(held_s=0.2)  # then b's own measurement is b's
    assert s.service_s("b", "m") == 0.2
    assert s.service_s("a", "m") == 0.08
    for w in waiters:
        w.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
