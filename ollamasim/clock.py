"""Simulated time: the one place ``time_scale`` is applied.

Simulated seconds run ``1 / time_scale`` times faster than wall seconds, so a
20 s model load at ``time_scale: 0.01`` takes 0.2 s of wall time. Timestamps
handed to clients (``expires_at``, ``created_at``) are on the simulated clock,
which starts at the real wall-clock time when the daemon starts.
"""

from __future__ import annotations

import asyncio
import time


class Clock:
    def __init__(self, time_scale: float) -> None:
        self.time_scale = time_scale
        self._wall0 = time.time()
        self._mono0 = time.monotonic()

    def now(self) -> float:
        """Simulated seconds since the Unix epoch."""
        return self._wall0 + (time.monotonic() - self._mono0) / self.time_scale

    def wall(self) -> float:
        return time.time()

    def to_wall(self, sim_seconds: float) -> float:
        return sim_seconds * self.time_scale

    async def sleep(self, sim_seconds: float) -> None:
        if sim_seconds > 0:
            await asyncio.sleep(sim_seconds * self.time_scale)

    async def sleep_until(self, sim_deadline: float) -> None:
        await self.sleep(sim_deadline - self.now())
