"""The daemon's event log: what tests of the bridge assert on.

Every event carries simulated and wall timestamps and the memory in use right
after it, so a test can check that capacity was never exceeded.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

EventKind = Literal[
    "load-start",
    "loaded",
    "load-failed",
    "load-aborted",
    "unload",
    "request-start",
    "request-end",
    "request-interrupted",
    "rejected",
    "crash",
    "restart",
]


@dataclass(frozen=True)
class SimEvent:
    kind: EventKind
    daemon: str
    model: str | None
    sim_ts: float
    wall_ts: float
    memory_used: int
    memory_capacity: int
    reason: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class EventLog:
    """Append-only, thread-safe (tests read it from another thread).

    Bounded: a long-running ``alb sim`` or ``make run`` fallback keeps the newest
    ``limit`` events (0 = all) and counts the ones it let go in ``dropped``.
    """

    def __init__(self, limit: int = 0) -> None:
        self._lock = threading.Lock()
        self._events: deque[SimEvent] = deque(maxlen=limit or None)
        self._cond = threading.Condition(self._lock)
        self.dropped = 0

    def append(self, event: SimEvent) -> None:
        with self._cond:
            if len(self._events) == self._events.maxlen:
                self.dropped += 1
            self._events.append(event)
            self._cond.notify_all()

    def snapshot(self) -> list[SimEvent]:
        with self._lock:
            return list(self._events)

    def wait_for(self, predicate: Any, timeout: float) -> list[SimEvent]:
        """Block until ``predicate(events)`` is true; returns the snapshot."""
        with self._cond:
            self._cond.wait_for(lambda: predicate(list(self._events)), timeout=timeout)
            return list(self._events)
