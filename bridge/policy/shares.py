"""Several bridges, one fleet, pure: which daemons a replica should own, and its share
of a daemon's slots.

Each daemon has one owner among the replicas (a lease in Redis, ``bridge.coord``). A
replica takes unowned daemons up to its fair share, ``quota`` (the daemons over the
replicas, rounded up), and hands back the ones above it when more replicas join, one
per lease round so ownership moves gently. Which daemons it prefers is
``preference``: rendezvous hashing of (replica, daemon), so replicas that start
together reach for different daemons and a daemon goes back to the same replica
after a restart.

A replica hands out its ``apportion`` of each (daemon, model)'s slots: one each, and
the rest by the replicas' demand as each round reads it from Redis (``slot_share``,
an even split, while Redis is away). Summed over the replicas, the requests in flight
on a daemon for one model are at most ``max(slots, replicas)`` once their rounds agree;
while demand moves, one replica may grow a round before another shrinks (and a shrunk
share takes effect as its requests finish). Beyond its slots a daemon queues requests
itself (Ollama's own queue), so the bound costs a short wait, never an error.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

__all__ = ["apportion", "preference", "quota", "slot_share", "to_release", "to_take"]


def quota(daemons: int, replicas: int) -> int:
    """The most daemons one replica should own: a fair share, rounded up."""
    return -(-daemons // max(replicas, 1)) if daemons else 0


def preference(replica: str, daemons: Iterable[str]) -> list[str]:
    """The daemons in the order ``replica`` reaches for them (rendezvous hashing)."""

    def weight(daemon: str) -> bytes:
        return hashlib.blake2b(f"{replica}\0{daemon}".encode(), digest_size=8).digest()

    return sorted(daemons, key=lambda d: (weight(d), d))


def to_take(
    replica: str, owned: Sequence[str], unowned: Sequence[str], *, daemons: int, replicas: int
) -> list[str]:
    """The unowned daemons ``replica`` should try to take this round (its preference
    order, up to its quota)."""
    room = quota(daemons, replicas) - len(owned)
    return preference(replica, unowned)[: max(room, 0)]


def to_release(replica: str, owned: Sequence[str], *, daemons: int, replicas: int) -> list[str]:
    """The owned daemon to hand back this round when ``replica`` owns more than its
    quota (at most one, the one it prefers least), else none."""
    if len(owned) <= quota(daemons, replicas):
        return []
    return preference(replica, owned)[-1:]


def slot_share(slots: int, replicas: int) -> int:
    """How many of a daemon's ``slots`` one of ``replicas`` replicas hands out, knowing
    nothing of their demand (degraded mode: the membership last seen)."""
    return max(slots // max(replicas, 1), 1)


def apportion(slots: int, demands: Mapping[str, int], replica: str) -> int:
    """``replica``'s share of a model's ``slots`` on one daemon, given every live
    replica's demand there (requests in flight or queued). Each replica keeps one slot
    (a request never waits a round for its first); the slots beyond those go by demand,
    largest remainder first, ties by name; with no demand anywhere, evenly. Every
    replica computes the same split from the same demands: the shares sum to
    ``max(slots, replicas)``."""
    names = sorted({*demands, replica})
    n = len(names)
    if slots <= n:
        return 1
    extra = slots - n
    wants = {r: max(demands.get(r, 0), 0) for r in names}
    total = sum(wants.values())
    if total == 0:
        base, rest = divmod(extra, n)
        return 1 + base + (1 if names.index(replica) < rest else 0)
    quotas = {r: extra * wants[r] / total for r in names}
    got = {r: int(q) for r, q in quotas.items()}
    left = extra - sum(got.values())
    for r in sorted(names, key=lambda r: (got[r] - quotas[r], r))[:left]:
        got[r] += 1
    return 1 + got[replica]
