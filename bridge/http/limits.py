"""Client-side resource limits: the body budget, the body rate, memory given back.

Theory of operation. Three things bound what anonymous clients can make the bridge
hold, besides the per-connection limits ``bridge.http.connections`` enforces (header
timeout and size, idle keep-alive, the connection cap):

* ``BodyBudget``: the request-body bytes all requests in progress hold together. The
  edge (``bridge.http.edge``) takes a body's ``Content-Length`` from it before the body
  is read (a chunked body: chunk by chunk as it arrives) and gives it back when the
  request is over; a request it cannot cover is refused with 503 + ``Retry-After``.
  The bytes stay charged for the whole request because the handler holds the body
  that long (a retry resends it).
* ``body_too_slow``: a body must arrive at ``min_rate`` bytes/s on average once its
  ``grace`` is over (what Kestrel's MinRequestBodyDataRate does); the connection
  shell checks it about once a second and closes a connection that falls behind.
* ``Reclaimer``: why memory stayed high after a burst of large bodies. Measured
  (``bench/exhaustion.py``): after 40 concurrent 16 MiB bodies all answered 400, RSS
  stayed at ~1.9 GB (baseline 79 MB) for minutes. ``gc.collect()`` in the idle server
  brought it to ~90 MB, ``malloc_trim(0)`` then to the baseline: the bodies were
  *garbage in reference cycles*, not live and not (only) malloc fragmentation. A
  failed request leaves an exception whose traceback holds the handler frames that
  hold the body (and orjson's ``JSONDecodeError.doc``, a str copy of it); such a
  cycle is freed only by a full collection, which CPython runs rarely (and
  ``gc.freeze()`` at start-up leaves few objects to trigger one). Fixed-threshold
  malloc settings (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_ARENA_MAX``) did not help,
  measured. So when a large body (``BIG_BODY`` bytes or more) has been given back,
  the reclaimer runs one ``gc.collect()`` soon after and ``malloc_trim(0)`` (glibc:
  hands the freed heap pages back; elsewhere skipped): coalesced, at most once per
  ``interval`` unless ``urgent`` bytes are waiting. With the start-up heap frozen a
  collection walks only the young objects (1.6 ms with 40,000 of them, measured;
  ``malloc_trim`` 0.3 ms), so even a steady stream of large bodies costs under 1 %
  of a core.

``BodyBudget`` and ``body_too_slow`` are pure; ``Reclaimer`` decides in pure code
(``due``) and its asyncio shell only arms one timer.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
from collections.abc import Callable

#: A body at least this large, once given back, asks for a collection.
BIG_BODY = 1024 * 1024


class BodyBudget:
    """Request-body bytes held by requests in progress, bridge-wide."""

    __slots__ = ("capacity", "in_use", "refused")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        self.refused = 0

    def take(self, n: int) -> bool:
        """Charge ``n`` bytes; False (nothing charged) when the budget cannot cover them."""
        if self.in_use + n > self.capacity:
            self.refused += 1
            return False
        self.in_use += n
        return True

    def give(self, n: int) -> None:
        self.in_use -= n


def body_too_slow(seen: int, elapsed: float, min_rate: float, grace: float) -> bool:
    """Has a body that has sent ``seen`` bytes in ``elapsed`` seconds fallen below
    ``min_rate`` bytes/s, counted from the end of its ``grace``?"""
    return elapsed > grace and seen < min_rate * (elapsed - grace)


class Reclaimer:
    """Frees the garbage large bodies leave behind (see the module docstring)."""

    def __init__(
        self,
        *,
        interval: float = 0.5,
        delay: float = 0.05,
        urgent: int = 128 * 1024 * 1024,
        collect: Callable[[], object] = gc.collect,
        trim: Callable[[], object] | None = None,
    ) -> None:
        self.interval = interval
        self.delay = delay
        self.urgent = urgent
        self._collect = collect
        self._trim = _malloc_trim() if trim is None else trim
        self.pending = 0
        self.last = -1e18
        self.runs = 0
        self._timer: asyncio.Handle | None = None
        #: When ``_timer`` fires (uvloop's handle for a time already past has no ``when``).
        self._at = 0.0

    def due(self, now: float) -> float:
        """When the next collection should run, given ``pending`` bytes (pure)."""
        if self.pending >= self.urgent:
            return now
        return max(now + self.delay, self.last + self.interval)

    def released(self, n: int) -> None:
        """A request that held an ``n``-byte body is over."""
        if n < BIG_BODY:
            return
        self.pending += n
        loop = asyncio.get_running_loop()
        at = self.due(loop.time())
        if self._timer is not None:
            if at >= self._at:
                return
            self._timer.cancel()
        self._timer, self._at = loop.call_at(at, self.run), at

    def run(self) -> None:
        self._timer = None
        self.pending = 0
        self._collect()
        self._trim()
        self.last = asyncio.get_running_loop().time()
        self.runs += 1

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _malloc_trim() -> Callable[[], object]:
    """glibc's ``malloc_trim(0)``, or a no-op where there is none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        trim = getattr(libc, "malloc_trim", None)
    except OSError:
        trim = None
    if trim is None:
        return lambda: None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


__all__ = ["BIG_BODY", "BodyBudget", "Reclaimer", "body_too_slow"]
