"""Several bridges, one fleet, pure: which daemons a replica should own, and its share
of a daemon's slots.

Each daemon has one owner among the replicas (a lease in Redis, ``bridge.coord``). A
replica takes unowned daemons up to its fair share, ``quota`` (the daemons over the
replicas, rounded up), and hands back the ones above it when more replicas join, one
per lease round so ownership moves gently. Which daemons it prefers is
``preference``: rendezvous hashing of (replica, daemon), so replicas that start
together reach for different daemons and a daemon goes back to the same replica
after a restart.

A replica hands out at most ``slot_share`` of each daemon's slots: the slots over the
replicas it last saw, at least one. Summed over the replicas, the requests in flight
on a daemon are at most ``max(slots, replicas)``; beyond its slots a daemon queues
them itself (Ollama's own queue), so the bound costs a short wait, never an error.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

__all__ = ["preference", "quota", "slot_share", "to_release", "to_take"]


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
    """How many of a daemon's ``slots`` one of ``replicas`` replicas hands out."""
    return max(slots // max(replicas, 1), 1)
