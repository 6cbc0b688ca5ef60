"""``bridge.policy.shares``: who owns which daemon, and each replica's slots."""

from __future__ import annotations

import asyncio
import random

from bridge.policy.shares import apportion, preference, quota, slot_share, to_release, to_take
from bridge.scheduling.gate import Gate

DAEMONS = [f"gpu{i}" for i in range(6)]


def test_the_quota_is_a_fair_share_rounded_up() -> None:
    assert quota(6, 1) == 6
    assert quota(6, 4) == 2
    assert quota(3, 3) == 1
    assert quota(2, 5) == 1
    assert quota(0, 3) == 0


def test_replicas_reach_for_different_daemons_and_always_the_same_ones() -> None:
    firsts = {preference(f"r{i}", DAEMONS)[0] for i in range(6)}
    assert len(firsts) > 1  # not every replica wants gpu0
    assert preference("r1", DAEMONS) == preference("r1", reversed(DAEMONS))
    assert sorted(preference("r1", DAEMONS)) == DAEMONS


def test_a_replica_takes_up_to_its_quota_and_hands_back_one_over_it_per_round() -> None:
    taken = to_take("r1", ["gpu0"], DAEMONS[1:], daemons=6, replicas=3)
    assert len(taken) == 1
    assert taken[0] in DAEMONS[1:]
    assert to_take("r1", DAEMONS[:2], DAEMONS[2:], daemons=6, replicas=3) == []
    assert to_release("r1", DAEMONS[:2], daemons=6, replicas=3) == []
    # A third replica joined: the one who owned three hands one back, the least preferred.
    given = to_release("r1", DAEMONS[:3], daemons=6, replicas=3)
    assert given == [preference("r1", DAEMONS[:3])[-1]]


def test_slot_shares_sum_to_at_most_the_slots_or_one_each() -> None:
    for slots in (1, 2, 4, 8):
        for replicas in (1, 2, 3, 5):
            share = slot_share(slots, replicas)
            assert share >= 1
            assert share * replicas <= max(slots, replicas)


def test_the_slots_beyond_one_each_follow_the_demand() -> None:
    demands = {"a": 30, "b": 0, "c": 10}
    shares = {r: apportion(8, demands, r) for r in demands}
    assert shares == {"a": 5, "b": 1, "c": 2}  # 3 kept, 5 by demand: 3.75 / 0 / 1.25
    assert sum(shares.values()) == 8
    # No demand anywhere: evenly, the first by name getting the remainder.
    idle = {r: apportion(8, dict.fromkeys("abc", 0), r) for r in "abc"}
    assert idle == {"a": 3, "b": 3, "c": 2}
    # Fewer slots than replicas: one each (the documented bound, max(slots, replicas)).
    assert {r: apportion(2, demands, r) for r in demands} == dict.fromkeys(demands, 1)
    # A replica not yet in the others' view still counts itself (one slot); until the
    # next round "a" still takes all four: the transient the bound allows for.
    assert apportion(4, {"a": 5}, "b") == 1
    assert apportion(4, {"a": 5}, "a") == 4


def test_the_shares_always_sum_to_max_of_slots_and_replicas() -> None:
    rng = random.Random(5)
    for _ in range(500):
        n = rng.randint(1, 6)
        demands = {f"r{i}": rng.choice([0, 0, 1, 3, 20]) for i in range(n)}
        slots = rng.randint(1, 12)
        total = sum(apportion(slots, demands, r) for r in demands)
        assert total == max(slots, n)


async def test_a_gates_demand_is_its_peak_since_the_last_round() -> None:
    gate = Gate(2)
    gate.open(ctx=4096)
    assert gate.try_acquire()
    assert gate.try_acquire()
    waiter = asyncio.ensure_future(gate.wait("s"))
    await asyncio.sleep(0)  # queued: 2 in flight + 1 waiting
    gate.release()  # the waiter takes the slot
    await waiter
    gate.release()
    gate.release()
    assert gate.outstanding == 0
    assert gate.take_peak() == 3  # not the idle instant the round happens to see
    assert gate.take_peak() == 0  # from now on
