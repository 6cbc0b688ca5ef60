"""Replicas of a hot model, pure: when to load a copy elsewhere, where, and when to retire it.

A burst for one model queues behind that model's slots on the daemon that holds it,
while other daemons have room. ``replicate`` decides whether a copy is worth it: the
expected queue wait on the daemons that hold the model (the requests waiting there,
drained at every copy's slots per service time, a copy being loaded included) against
the cost of loading a copy (the model's load seconds). When the wait is longer, the copy
goes where it costs least (``placement.plan_room`` on each daemon that has the model and
holds no copy yet): room in free memory first, then the least value evicted; never a
busy runner (``plan_room`` evicts only idle ones) and never more value than the copy
saves (the wait beyond the load). At most ``max_copies`` copies of a model.

Requests then go to the copy with the fewest outstanding requests
(``placement.route``), a copy being loaded included, so the burst spreads over the
copies; when a copy is ready, ``rebalance`` names the copies whose queue is longer than
their share, and their waiters are placed again. ``retirements`` says which copies to
unload once the burst is over: a copy this policy made that has been idle ``idle_s``
while another copy of the model is loaded, the longest idle first, never the last copy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from bridge.policy.placement import DaemonView, ReuseOracle, RoomPlan, eviction_value, plan_room

__all__ = [
    "Backlog",
    "Replicate",
    "Retire",
    "expected_wait",
    "rebalance",
    "replicate",
    "retirements",
    "worth_a_copy",
]


@dataclass(frozen=True, slots=True)
class Backlog:
    """One daemon's copy of a model: requests waiting for it, its slots, and the
    smoothed seconds a request holds a slot."""

    daemon: str
    queued: int
    slots: int
    service_s: float


@dataclass(frozen=True, slots=True)
class Replicate:
    """Load a copy of ``key`` on ``daemon`` (``plan``: its evictions), with the numbers
    the decision was made on."""

    key: str
    daemon: str
    plan: RoomPlan
    wait_s: float
    load_s: float
    copies: int
    queued: int


@dataclass(frozen=True, slots=True)
class Retire:
    """Unload the copy of ``key`` on ``daemon``, idle ``idle_s``, one of ``copies``."""

    key: str
    daemon: str
    idle_s: float
    copies: int


def expected_wait(backlogs: Sequence[Backlog]) -> float:
    """Seconds a newcomer would wait for a slot: the queued requests drained at every
    copy's slots per service time."""
    rate = sum(max(b.slots, 1) / max(b.service_s, 1e-3) for b in backlogs)
    queued = sum(b.queued for b in backlogs)
    return queued / rate if rate else 0.0


def worth_a_copy(backlogs: Sequence[Backlog], *, load_s: float, max_copies: int) -> bool:
    """Whether one more copy could be worth it: below the cap, and the expected wait
    over the copies there are is longer than a load (the cheap half of ``replicate``,
    checked before any daemon is looked at)."""
    return 0 < len(backlogs) < max_copies and expected_wait(backlogs) > load_s


def replicate(
    views: Sequence[DaemonView],
    key: str,
    backlogs: Sequence[Backlog],
    *,
    size_of: Callable[[DaemonView], int],
    oracle: ReuseOracle,
    load_s: float,
    max_copies: int,
) -> Replicate | None:
    """Whether (and where) to load one more copy of ``key`` (see the module doc).
    ``backlogs``: the copies there are (loaded or being loaded), one per daemon."""
    if not worth_a_copy(backlogs, load_s=load_s, max_copies=max_copies):
        return None
    copies = len(backlogs)
    wait = expected_wait(backlogs)
    gain = wait - load_s
    held = {b.daemon for b in backlogs}
    best: tuple[tuple[float, ...], Replicate] | None = None
    for v in views:
        if not v.up or v.name in held or key not in v.models or key in v.failing:
            continue
        plan = plan_room(v, key, size_of(v), lambda r, v=v: eviction_value(oracle, v.name, r))  # type: ignore[misc]
        if not isinstance(plan, RoomPlan) or plan.value_lost >= gain:
            continue
        rank = (float(bool(plan.victims)), plan.value_lost, float(v.outstanding))
        decision = Replicate(
            key, v.name, plan, wait, load_s, copies, sum(b.queued for b in backlogs)
        )
        if best is None or (rank, v.name) < (best[0], best[1].daemon):
            best = (rank, decision)
    return None if best is None else best[1]


def rebalance(backlogs: Sequence[Backlog], ready: str) -> list[str]:
    """A new copy on ``ready`` can serve: the other copies whose queue is longer than
    their share of every copy's queue (by slots) plus one round of their slots, whose
    waiters are placed again (they spread over the copies, the new one included)."""
    slots = sum(max(b.slots, 1) for b in backlogs)
    queued = sum(b.queued for b in backlogs)
    return [
        b.daemon
        for b in backlogs
        if b.daemon != ready and b.queued > queued * max(b.slots, 1) / slots + max(b.slots, 1)
    ]


def retirements(
    copies: Mapping[str, Sequence[tuple[str, float, bool]]],
    *,
    idle_s: float,
) -> list[Retire]:
    """Copies to unload: ``copies[key]`` lists each daemon holding ``key`` as
    (daemon, seconds idle, made by replication); seconds idle is negative while
    requests are in flight or queued there. One retirement per model per call (the
    longest idle replica), never its last copy."""
    out: list[Retire] = []
    for key, held in copies.items():
        if len(held) < 2:
            continue
        idle = [(s, d) for d, s, replica in held if replica and s >= idle_s]
        if idle:
            s, d = max(idle)
            out.append(Retire(key, d, s, len(held)))
    return out
