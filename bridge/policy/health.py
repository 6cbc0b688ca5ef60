"""Per-daemon circuit breaker, and what failed loads teach: pure, fed by outcomes.

``closed``: traffic flows; ``failures`` consecutive failures open it. ``open``: the
daemon gets no new traffic; after ``cooldown`` seconds it is ``half-open``: the
next active health check is the probe — success closes it, failure opens it
again for another cooldown. Times are passed in (monotonic seconds), so the
machine is tested without clocks.

``LoadBook`` remembers what loads taught, per daemon: a load that timed out or
failed marks its (daemon, model) as failing for a cooldown (placement keeps loads
of the model on other daemons meanwhile, and the failure counts against the
daemon's breaker); a load refused for want of memory (Ollama's "model requires more
system memory (X) than is available (Y)" and kin, ``is_memory_error``) sets the
daemon's ceiling: no load that big is tried there again without evidence (a daemon
whose memory the bridge does not know learns its real limit this way). ``held``, the
most a daemon has been seen holding at once, is the evidence that lets the bridge
evict for a load on a daemon of unknown memory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
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


# --- what failed loads teach -------------------------------------------------------------
#: Words Ollama's load errors use when memory is what is missing: 0.12-0.20's "model
#: requires more system memory (X) than is available (Y)", and the words later versions
#: classify a load error as out of memory by.
_MEMORY_WORDS = (
    "requires more system memory",
    "out of memory",
    "not enough memory",
    "insufficient memory",
    "failed to allocate",
    "allocation failed",
)
_OLLAMA_MEMORY = re.compile(
    r"requires more system memory \(([0-9.]+) ?([KMGT]i?B|B)\) than is available "
    r"\(([0-9.]+) ?([KMGT]i?B|B)\)"
)
_UNITS = {"B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4}
_UNITS |= {"KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}


def is_memory_error(message: str) -> bool:
    """Does a failed load's error say that memory is what is missing?"""
    text = message.lower()
    return any(w in text for w in _MEMORY_WORDS) or ("memory" in text and "available" in text)


def memory_figures(message: str) -> tuple[int, int] | None:
    """(needed, available) bytes from Ollama's "requires more system memory" error."""
    m = _OLLAMA_MEMORY.search(message)
    if m is None:
        return None
    needed = float(m.group(1)) * _UNITS[m.group(2)]
    available = float(m.group(3)) * _UNITS[m.group(4)]
    return int(needed), int(available)


@dataclass(frozen=True, slots=True)
class LoadFailure:
    """A (daemon, model) whose last load failed, as data: what was tried, the error, and
    until when placement keeps loads of the model off the daemon (``until``, monotonic)."""

    size: int
    error: str
    at: float
    until: float
    #: Consecutive failures (each doubles the cooldown, up to the maximum).
    count: int = 1


@dataclass(frozen=True, slots=True)
class Lesson:
    """What one failed load taught: ``memory``: the daemon cannot hold ``size`` bytes
    (its ceiling is now at most that); otherwise the pair is ``failing`` for a cooldown
    and the failure counts against the daemon's breaker."""

    memory: bool
    ceiling: int | None
    failing: LoadFailure | None
    figures: tuple[int, int] | None = None


@dataclass(slots=True)
class LoadBook:
    """What loads taught about each daemon; pure (times passed in).

    * ``failing``: (daemon, model) pairs whose last load timed out or failed for a
      reason other than memory, until a cooldown ends (``cooldown`` seconds, doubled
      for each consecutive failure up to ``cooldown_max``); a success forgets it.
    * ``ceiling``: per daemon, the smallest planned size a load failed with for want
      of memory: a load at least that big is not tried there again without evidence.
    * ``held``: per daemon, the most bytes it has been seen holding at once (``/api/ps``):
      evidence that that much fits. A load at or above the ceiling that succeeds (one
      started behind the bridge, say) lifts the ceiling; a restart forgets it all.
    """

    cooldown: float
    cooldown_max: float
    failing: dict[tuple[str, str], LoadFailure] = field(default_factory=dict)
    ceiling: dict[str, int] = field(default_factory=dict)
    held: dict[str, int] = field(default_factory=dict)

    def failed(self, daemon: str, key: str, size: int, error: str, now: float) -> Lesson:
        """Learn from a load of ``key`` on ``daemon`` (``size`` planned bytes) that failed."""
        if is_memory_error(error) and size > 0:
            # Not the daemon's fault, and a client chooses the size: no cooldown, no
            # breaker; no load this big is tried there again.
            ceiling = min(self.ceiling.get(daemon, size), size)
            self.ceiling[daemon] = ceiling
            return Lesson(True, ceiling, None, memory_figures(error))
        last = self.failing.get((daemon, key))
        count = last.count + 1 if last is not None else 1
        wait = min(self.cooldown * 2 ** (count - 1), max(self.cooldown_max, self.cooldown))
        failure = LoadFailure(size, error, now, now + wait, count)
        self.failing[(daemon, key)] = failure
        return Lesson(False, self.ceiling.get(daemon), failure, memory_figures(error))

    def loaded(self, daemon: str, key: str, size: int) -> None:
        """A load of ``size`` bytes succeeded: the pair is healthy, the size fits."""
        self.failing.pop((daemon, key), None)
        ceiling = self.ceiling.get(daemon)
        if ceiling is not None and size >= ceiling:
            del self.ceiling[daemon]

    def observe(self, daemon: str, total: int) -> None:
        """``daemon`` holds ``total`` bytes of runners now (``/api/ps``)."""
        if total > self.held.get(daemon, 0):
            self.held[daemon] = total

    def failing_for(self, daemon: str, key: str, now: float) -> LoadFailure | None:
        """The pair's failure while its cooldown runs, else None."""
        f = self.failing.get((daemon, key))
        return f if f is not None and now < f.until else None

    def forget(self, daemon: str) -> None:
        """``daemon`` restarted: what it taught may no longer hold."""
        self.ceiling.pop(daemon, None)
        self.held.pop(daemon, None)
        for pair in [p for p in self.failing if p[0] == daemon]:
            del self.failing[pair]
