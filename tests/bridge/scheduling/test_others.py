"""What the other replicas' requests mean to this one's scheduler: the high-water mark
counts the daemon's whole queue, and a runner they use is neither idle nor free to
evict, retire or unload (``Coordinator.others``, their peaks as the last round read
them). Scheduler state only: no daemon is contacted."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from bridge.coord import Solo
from bridge.errors import Overloaded
from bridge.metrics import Metrics
from bridge.policy.numctx import Need
from bridge.policy.queueing import CopyQueue, copy_depth
from bridge.scheduling.decisions import DecisionLog
from bridge.scheduling.fleet import Fleet
from bridge.scheduling.scheduler import Lease, Scheduler, Ticket
from bridge.settings import load_settings
from bridge.upstream import Upstream

GIB = 1024**3


class Others(Solo):
    """Owns every daemon; the other replicas' requests are what the test says."""

    def __init__(self) -> None:
        super().__init__()
        self.theirs: dict[tuple[str, str], int] = {}

    def others(self, daemon: str, model: str) -> int:
        return self.theirs.get((daemon, model), 0)


@pytest.fixture
async def scheduler() -> AsyncIterator[tuple[Scheduler, Others]]:
    settings = load_settings(
        {
            "ALB_DAEMONS": "a=http://127.0.0.1:1?parallel=2",
            "ALB_QUEUE_CAPACITY": "10",
            "ALB_HIGH_WATER": "0.8",
            "ALB_RECLAIM": "idle",
            "ALB_IDLE_UNLOAD_AFTER": "1",
        }
    )
    upstream = Upstream.create(settings)
    coord = Others()
    try:
        fleet = Fleet(settings.daemon_specs(), upstream, 10)
        s = Scheduler(settings, fleet, upstream, Metrics(), DecisionLog(16), coord=coord)
        d = s.fleet.get("a")
        d.up = True
        d.catalog = {"m": {}}
        d.loaded = {"m": {"size": GIB, "context_length": 4096}}
        yield s, coord
    finally:
        await upstream.aclose()


def test_a_copy_queues_everyones_requests_beyond_the_daemons_slots() -> None:
    assert copy_depth(CopyQueue(depth=3, outstanding=5, share=2, slots=4)) == 3
    # 5 here and 9 there on 4 slots: 10 wait, whichever replica holds them.
    assert copy_depth(CopyQueue(depth=3, outstanding=5, share=2, slots=4, theirs=9)) == 10
    # Their peak is over (it drained): never shorter than this replica's own queue.
    assert copy_depth(CopyQueue(depth=3, outstanding=5, share=2, slots=4, theirs=1)) == 3


def test_the_high_water_mark_counts_the_other_replicas_queues(
    scheduler: tuple[Scheduler, Others],
) -> None:
    s, coord = scheduler
    s.upkeep.reconcile()
    held = [s.admit("m", Need(100)) for _ in range(2)]  # both slots here
    assert all(isinstance(h, Lease) for h in held)
    coord.theirs[("a", "m")] = 7  # 2 + 7 on 2 slots: 7 wait, under the mark of 8
    assert isinstance(s.admit("m", Need(100)), Ticket)
    coord.theirs[("a", "m")] = 8  # 8 wait: at the mark, though none of them here
    with pytest.raises(Overloaded, match="8 requests queued") as refused:
        s.admit("m", Need(100))
    assert refused.value.retry_after is not None
    assert refused.value.retry_after >= 1
    # The bridge's own waiter for a load (one another replica wants, an admin load, a
    # copy's) adds no client's request: it is never refused for the queue it loads for.
    assert isinstance(s.admit("m", Need(100), internal=True), Ticket)
    coord.theirs.clear()  # alone: its own queue, empty
    assert isinstance(s.admit("m", Need(100)), Ticket)


def test_a_runner_the_others_use_is_busy_and_not_idle(
    scheduler: tuple[Scheduler, Others],
) -> None:
    s, coord = scheduler
    s.upkeep.reconcile()
    s.used_at[("a", "m")] = time.monotonic() - 3600
    d = s.fleet.get("a")
    view = s.view(d).runners["m"]
    assert not view.busy
    assert view.idle_s >= 3600
    coord.theirs[("a", "m")] = 1
    view = s.view(d).runners["m"]
    assert view.busy
    assert view.idle_s == 0


def test_a_round_that_reads_the_others_requests_marks_the_runner_used(
    scheduler: tuple[Scheduler, Others], monkeypatch: pytest.MonkeyPatch
) -> None:
    s, coord = scheduler
    s.upkeep.reconcile()
    unloads: list[tuple[str, str]] = []
    monkeypatch.setattr(s.loader, "spawn", lambda coro: (unloads.append(("a", "m")), coro.close()))
    s.used_at[("a", "m")] = time.monotonic() - 3600
    coord.theirs[("a", "m")] = 2
    s.upkeep.unload_idle()  # the others' requests are on it
    assert unloads == []
    s.peers.shares_changed()  # a round read their demands
    assert time.monotonic() - s.used_at[("a", "m")] < 1
    coord.theirs.clear()
    s.used_at[("a", "m")] = time.monotonic() - 3600
    s.upkeep.unload_idle()  # nobody's now: idle for an hour
    assert unloads == [("a", "m")]
