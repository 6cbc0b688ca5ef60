"""The scheduler says why a request must wait for a load (``Ticket.cause``, counted as
``alb_cold_starts_total{cause}`` when its wait ends), with ``bridge.policy.cold``'s
words. Scheduler state only: the fixture's daemons are never contacted."""

from __future__ import annotations

from bridge.policy.cold import CONTEXT, FIRST, GONE
from bridge.policy.numctx import Need
from bridge.policy.sizing import ModelInfo
from bridge.scheduling.scheduler import Lease, Scheduler, Ticket

GIB = 1024**3
M = ModelInfo("m", GIB, 32768, 1000)
N = ModelInfo("n", GIB, 32768, 1000)


def _ticket(s: Scheduler, key: str, need: Need, info: ModelInfo) -> Ticket:
    got = s.admit(key, need, info)
    assert isinstance(got, Ticket)
    return got


async def test_a_ticket_says_why_it_is_cold(scheduler: Scheduler) -> None:
    s = scheduler
    # m is ready on a (4096 tokens, 2 slots): warm, then queued behind the slots.
    assert isinstance(s.admit("m", Need(100), M), Lease)
    assert isinstance(s.admit("m", Need(100), M), Lease)
    queued = _ticket(s, "m", Need(100), M)
    assert (queued.cold, queued.cause) == (False, "")
    # A prompt longer than a's runner holds: a load, though a runner of m is ready.
    longer = _ticket(s, "m", Need(8000), M)
    assert (longer.cold, longer.cause) == (True, CONTEXT)
    # n was never seen ready: its first load; once seen, a model not ready is gone.
    first = _ticket(s, "n", Need(100), N)
    assert (first.cold, first.cause) == (True, FIRST)
    s.seen_ready.add("n")
    again = _ticket(s, "n", Need(100), N)
    assert (again.cold, again.cause) == (True, GONE)


async def test_a_warm_lease_marks_the_model_seen(scheduler: Scheduler) -> None:
    assert "m" not in scheduler.seen_ready
    assert isinstance(scheduler.admit("m", Need(100), M), Lease)
    assert "m" in scheduler.seen_ready
