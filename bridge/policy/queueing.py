"""Queueing, pure: ``FairQueue`` (weighted round-robin over sessions, FIFO within one) and
``retry_after`` (the hint a refused request gets), used by the gates
(``bridge.scheduling.gate``) and the replay."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

_MIN_RETRY_S = 1.0
_MAX_RETRY_S = 600.0


class FairQueue(Generic[T]):
    """Round-robin over sessions, FIFO within a session. A session's ``weight`` (an API
    key's priority class, 1 by default) is how many of its requests are served in a
    row when its turn comes: a weight-2 session gets two turns to a weight-1's one."""

    __slots__ = ("_by_session", "_credit", "_len", "_order", "_weight")

    def __init__(self) -> None:
        self._by_session: dict[str, deque[T]] = {}
        self._order: deque[str] = deque()
        self._weight: dict[str, int] = {}
        self._credit: dict[str, int] = {}
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def push(self, session: str, item: T, weight: int = 1) -> None:
        q = self._by_session.get(session)
        if q is None:
            q = self._by_session[session] = deque()
            self._order.append(session)
            self._weight[session] = self._credit[session] = max(1, weight)
        q.append(item)
        self._len += 1

    def pop(self) -> T:
        return self._take(self._order.popleft())

    def _take(self, session: str) -> T:
        """The head of ``session`` (already off the order): it keeps the front while it
        has turns left, else goes to the back with its turns renewed."""
        q = self._by_session[session]
        item = q.popleft()
        self._len -= 1
        if not q:
            del self._by_session[session], self._weight[session], self._credit[session]
            return item
        self._credit[session] -= 1
        if self._credit[session] > 0:
            self._order.appendleft(session)
        else:
            self._credit[session] = self._weight[session]
            self._order.append(session)
        return item

    def __iter__(self) -> Iterator[T]:
        for q in self._by_session.values():
            yield from q

    def pop_first(self, pred: Callable[[T], bool]) -> T | None:
        """The first session head (in round-robin order) that ``pred`` accepts."""
        for _ in range(len(self._order)):
            session = self._order[0]
            if pred(self._by_session[session][0]):
                self._order.popleft()
                return self._take(session)
            self._order.rotate(-1)
        return None

    def remove(self, session: str, item: T) -> bool:
        q = self._by_session.get(session)
        if q is None or item not in q:
            return False
        q.remove(item)
        self._len -= 1
        if not q:
            del self._by_session[session], self._weight[session], self._credit[session]
            self._order.remove(session)
        return True


@dataclass(frozen=True, slots=True)
class CopyQueue:
    """One copy of a model as a replica sees it: its own queue (``depth``), its own
    requests in flight or queued (``outstanding``), its share of the slots, the daemon's
    slots, and the other replicas' requests in flight or queued there (``theirs``)."""

    depth: int
    outstanding: int
    share: int
    slots: int
    theirs: int = 0


def copy_depth(c: CopyQueue) -> int:
    """The queue at one copy, every replica's: a copy the others use too queues
    everyone's requests beyond the daemon's slots; one only this replica uses, its own
    queue (a replica's own queue is never counted shorter than it is). The high-water
    mark is judged on this, so N replicas admit one queue's worth, not N."""
    if c.theirs:
        return max(c.depth, c.outstanding + c.theirs - c.slots)
    return c.depth


def fleet_backlog(copies: Iterable[CopyQueue]) -> tuple[int, int]:
    """``(depth, slots)`` for ``retry_after`` over every copy and every replica: each
    copy's ``copy_depth``, drained by the daemon's slots where the others use it too,
    by this replica's share where only it does."""
    depth = slots = 0
    for c in copies:
        depth += copy_depth(c)
        slots += c.slots if c.theirs else c.share
    return depth, slots


def retry_after(
    depth: int,
    slots: int,
    *,
    load_remaining_s: float,
    service_s: float,
) -> float:
    """Seconds until a newcomer would plausibly be admitted.

    The queue drains at ``slots / service_s`` requests per second once the model
    is ready (``load_remaining_s`` from now; 0 when loaded). Clamped to
    [1, 600] s and rounded up to whole seconds, as Retry-After wants.
    """
    rate = max(slots, 1) / max(service_s, 1e-3)
    wait = max(load_remaining_s, 0.0) + depth / rate
    return float(min(max(math.ceil(wait), _MIN_RETRY_S), _MAX_RETRY_S))


#: Seconds a request is taken to hold a slot before one was measured for the model.
SERVICE_PRIOR_S = 1.0


@dataclass(frozen=True, slots=True)
class CopyWait:
    """One copy of a model as admission's ``Retry-After`` sees it: its queue, the
    smoothed seconds a request holds one of its slots, and what is left of its load
    (0 when it is loaded, or when its load has not started)."""

    queue: CopyQueue
    service_s: float
    load_left_s: float = 0.0


def copies_retry_after(copies: Sequence[CopyWait]) -> float:
    """``Retry-After`` for a request refused at the high-water mark: every copy's queue
    (every replica's, ``fleet_backlog``) drained at the copies' slots, at the slowest
    copy's service time, once the soonest load in progress is done. The live scheduler
    and the replay both answer with this."""
    depth, slots = fleet_backlog(c.queue for c in copies)
    service = max((c.service_s for c in copies), default=SERVICE_PRIOR_S)
    remaining = min((c.load_left_s for c in copies), default=0.0)
    return retry_after(depth, slots, load_remaining_s=remaining, service_s=service)


def smooth_service(prev: float | None, held_s: float) -> float:
    """A copy's smoothed seconds per request after one more held a slot ``held_s``: the
    first measurement itself, then an exponential average (a fifth on the newest)."""
    return held_s if prev is None else 0.8 * prev + 0.2 * held_s


def service_estimate(own: float | None, model: Iterable[float | None]) -> float:
    """Seconds a request will hold a slot of one copy: its own measurement once it has
    one; before that, the mean of what the model's other copies measured (the same
    model serves at a like pace elsewhere: a prior of its own would make a new copy
    look slower, or faster, than the copy it relieves, and route a burst by the
    difference); ``SERVICE_PRIOR_S`` when no copy has served yet."""
    if own is not None:
        return own
    known = [s for s in model if s is not None]
    return sum(known) / len(known) if known else SERVICE_PRIOR_S
