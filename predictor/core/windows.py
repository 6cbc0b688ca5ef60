"""Sliding windows of model-transition counts.

Theory of operation
-------------------
A *transition* is ``(prev, next, gap_ms)``: a request for ``next`` arrived ``gap_ms``
after one for ``prev``. A window keeps, for every ``prev``, how many transitions went to
each ``next`` and the sum of their gaps (integer milliseconds, so adding and removing is
exact and the mean gap never drifts), plus the row total.

* :class:`MinuteWindow` is exact to the minute. Transitions go into per-minute buckets;
  a transition of minute ``m`` counts while ``now_minute - m < minutes``. ``now_minute``
  only moves forward (``advance``); buckets that fall out are subtracted from the totals
  in one step. A late transition whose minute is still inside the window joins its own
  bucket; one that is already outside is dropped, exactly as if it had arrived in order.
* :class:`CountWindow` keeps the last ``size`` transitions (a ring), as in the seed
  article's "last 50 requests".

Both serialise to plain lists; totals are rebuilt on load, so a stored state can never
hold totals that disagree with its buckets.
"""

from __future__ import annotations

from collections import deque
from typing import Any

__all__ = ["CountWindow", "MinuteWindow", "Window", "window_from_dict"]

Row = dict[str, list[int]]
"""next model -> [count, gap_ms_sum]"""


class _Totals:
    __slots__ = ("_row_total", "_table")

    def __init__(self) -> None:
        self._table: dict[str, Row] = {}
        self._row_total: dict[str, int] = {}

    def _inc(self, prev: str, nxt: str, count: int, gap_ms: int) -> None:
        row = self._table.get(prev)
        if row is None:
            row = self._table[prev] = {}
        cell = row.get(nxt)
        if cell is None:
            row[nxt] = [count, gap_ms]
        else:
            cell[0] += count
            cell[1] += gap_ms
        self._row_total[prev] = self._row_total.get(prev, 0) + count

    def _dec(self, prev: str, nxt: str, count: int, gap_ms: int) -> None:
        row = self._table[prev]
        cell = row[nxt]
        cell[0] -= count
        cell[1] -= gap_ms
        if cell[0] == 0:
            del row[nxt]
            if not row:
                del self._table[prev]
        left = self._row_total[prev] - count
        if left:
            self._row_total[prev] = left
        else:
            del self._row_total[prev]

    def row(self, prev: str) -> Row:
        """Counts out of ``prev`` (do not mutate)."""
        return self._table.get(prev) or {}

    def row_total(self, prev: str) -> int:
        """Number of transitions out of ``prev`` in the window."""
        return self._row_total.get(prev, 0)

    def count(self, prev: str, nxt: str) -> int:
        """Number of ``prev -> nxt`` transitions in the window."""
        cell = self.row(prev).get(nxt)
        return cell[0] if cell else 0

    def total(self) -> int:
        """Number of transitions in the window."""
        return sum(self._row_total.values())


class MinuteWindow(_Totals):
    """Transitions of the last ``minutes`` minutes, exact to the minute."""

    __slots__ = ("_buckets", "minutes", "now_minute")

    def __init__(self, minutes: int) -> None:
        super().__init__()
        self.minutes = minutes
        self.now_minute: int | None = None
        self._buckets: dict[int, dict[tuple[str, str], list[int]]] = {}

    def advance(self, now_minute: int) -> None:
        """Move the window's end forward to ``now_minute`` (never backward)."""
        if self.now_minute is not None and now_minute <= self.now_minute:
            return
        self.now_minute = now_minute
        cutoff = now_minute - self.minutes
        buckets = self._buckets
        if buckets:
            for minute in [m for m in buckets if m <= cutoff]:
                for (prev, nxt), (count, gap) in buckets.pop(minute).items():
                    self._dec(prev, nxt, count, gap)

    def add(self, minute: int, prev: str, nxt: str, gap_ms: int) -> bool:
        """Count a transition of ``minute``; False when it is already outside the window."""
        if self.now_minute is None or minute > self.now_minute:
            self.advance(minute)
        elif self.now_minute - minute >= self.minutes:
            return False
        bucket = self._buckets.get(minute)
        if bucket is None:
            bucket = self._buckets[minute] = {}
        key = (prev, nxt)
        cell = bucket.get(key)
        if cell is None:
            bucket[key] = [1, gap_ms]
        else:
            cell[0] += 1
            cell[1] += gap_ms
        self._inc(prev, nxt, 1, gap_ms)
        return True

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form."""
        return {
            "kind": "time",
            "minutes": self.minutes,
            "now_minute": self.now_minute,
            "buckets": [
                [m, [[p, n, c, g] for (p, n), (c, g) in b.items()]]
                for m, b in sorted(self._buckets.items())
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MinuteWindow:
        """Inverse of :meth:`to_dict`."""
        win = cls(int(data["minutes"]))
        win.now_minute = data["now_minute"]
        for minute, cells in data["buckets"]:
            bucket = win._buckets[int(minute)] = {}
            for prev, nxt, count, gap in cells:
                bucket[(prev, nxt)] = [int(count), int(gap)]
                win._inc(prev, nxt, int(count), int(gap))
        return win


class CountWindow(_Totals):
    """The last ``size`` transitions, whatever their age."""

    __slots__ = ("_ring", "size")

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self._ring: deque[tuple[str, str, int]] = deque()

    def advance(self, now_minute: int) -> None:
        """Nothing expires with time in a count window."""

    def add(self, minute: int, prev: str, nxt: str, gap_ms: int) -> bool:
        """Count a transition; the oldest one leaves when the window is full."""
        ring = self._ring
        ring.append((prev, nxt, gap_ms))
        self._inc(prev, nxt, 1, gap_ms)
        if len(ring) > self.size:
            old_prev, old_next, old_gap = ring.popleft()
            self._dec(old_prev, old_next, 1, old_gap)
        return True

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form."""
        return {"kind": "count", "size": self.size, "ring": [list(t) for t in self._ring]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CountWindow:
        """Inverse of :meth:`to_dict`."""
        win = cls(int(data["size"]))
        for prev, nxt, gap in data["ring"]:
            win.add(0, prev, nxt, int(gap))
        return win


Window = MinuteWindow | CountWindow


def window_from_dict(data: dict[str, Any]) -> Window:
    """Rebuild either kind of window from its ``to_dict`` form."""
    if data["kind"] == "time":
        return MinuteWindow.from_dict(data)
    return CountWindow.from_dict(data)
