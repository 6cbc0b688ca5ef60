"""``bridge.policy.shares``: who owns which daemon, and each replica's slots."""

from __future__ import annotations

from bridge.policy.shares import preference, quota, slot_share, to_release, to_take

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
