"""Per-daemon circuit breaker: a pure state machine fed by check and request outcomes.

``closed``: traffic flows; ``failures`` consecutive failures open it. ``open``: the
daemon gets no new traffic; after ``cooldown`` seconds it is ``half-open``: the
next active health check is the probe — success closes it, failure opens it
again for another cooldown. Times are passed in (monotonic seconds), so the
machine is tested without clocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

State = Literal["closed", "open", "half-open"]


@dataclass(slots=True)
class Breaker:
    failures_to_open: int
    cooldown: float
    state: State = "closed"
    failures: int = 0
    opened_at: float = 0.0
    last_error: str = ""

    def allows_traffic(self, now: float) -> bool:
        self._tick(now)
        return self.state == "closed"

    def wants_probe(self, now: float) -> bool:
        """Should the health loop probe now? (always when closed; after the cooldown
        when open)."""
        self._tick(now)
        return self.state != "open"

    def success(self) -> bool:
        """Record a success; True when this closed an open/half-open circuit."""
        reopened = self.state != "closed"
        self.state, self.failures, self.last_error = "closed", 0, ""
        return reopened

    def failure(self, now: float, why: str) -> bool:
        """Record a failure; True when this opened the circuit."""
        self.last_error = why
        self._tick(now)
        if self.state == "half-open":
            self.state, self.opened_at = "open", now
            return True
        self.failures += 1
        if self.state == "closed" and self.failures >= self.failures_to_open:
            self.state, self.opened_at = "open", now
            return True
        return False

    def _tick(self, now: float) -> None:
        if self.state == "open" and now - self.opened_at >= self.cooldown:
            self.state = "half-open"
