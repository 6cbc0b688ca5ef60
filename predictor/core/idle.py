"""Per-model idle-time histograms: the hybrid histogram policy.

Implements the keep-alive / pre-warm policy of M. Shahrad et al., "Serverless in the
Wild: Characterizing and Optimizing the Serverless Workload at a Large Cloud Provider",
USENIX ATC 2020, section 4.2, with a model in place of an application:

* The *idle time* (IT) of a model is the time from the end of one of its requests to
  the start of the next. ITs go into a range-limited histogram of 1-minute bins over
  4 hours (``bin_s``, ``range_s``); longer ITs are counted as *out of range* (OOB).
* **Representative histogram** (at least ``min_samples`` ITs, OOB share below
  ``oob_threshold``, and the coefficient of variation of the *bin counts* at least
  ``cv_threshold``, 2 in the paper; a high CV means the ITs are concentrated in a few
  bins): the *head* is the 5th percentile and the *tail* the 99th. With the paper's
  10 % margin, the pre-warm window is the head's lower bin edge minus 10 % and the
  model should stay resident until the tail's upper bin edge plus 10 %. We report the
  keep-alive window from the pre-warm load (from the request when the pre-warm window
  is 0): ``keep_alive = tail * 1.1 - prewarm``. A pre-warm window of 0 means "do not
  unload after the request".
* **Not representative** (too few ITs or CV below the threshold): fall back to a fixed
  keep-alive (``fallback_keep_alive_s``; the paper uses the histogram range) with no
  pre-warm.
* **Mostly out of range**: the paper forecasts the next IT with ARIMA. We use a simpler
  documented stand-in: the mean of the last ``oob_memory`` OOB ITs as the forecast
  ``f``; pre-warm at ``f * (1 - oob_margin)`` and keep alive for ``2 * oob_margin * f``
  (the paper's 15 % margin on both sides of the forecast).

The CV is kept incrementally (sum and sum of squares of bin counts, integers, so it is
exact). When the histogram holds ``max_histogram_samples`` ITs every bin is halved,
which ages old behaviour out deterministically.

:meth:`IdleHistogram.reuse_probability` gives P(next request within ``h`` | idle for
``t`` so far) from the same counts, which feeds the
bridge's eviction value (predicted reuse x reload cost).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from predictor.core.config import PredictorConfig

__all__ = ["IdleHistogram", "IdleWindows", "Pattern"]

Pattern = Literal["few-samples", "uncertain", "histogram", "out-of-range"]


@dataclass(frozen=True, slots=True)
class IdleWindows:
    """What the policy says for one model: pre-warm after, then keep alive for (seconds)."""

    pattern: Pattern
    prewarm_after_s: float
    keep_alive_s: float


class IdleHistogram:
    """Idle-time histogram of one model; see the module docstring."""

    __slots__ = ("_cached", "_fresh", "bins", "last_end", "oob", "oob_recent", "sqsum", "total")

    def __init__(self, cfg: PredictorConfig) -> None:
        self.bins: list[int] = [0] * cfg.n_bins
        self.total = 0
        self.sqsum = 0
        self.oob = 0
        self.oob_recent: deque[float] = deque(maxlen=cfg.oob_memory)
        self.last_end: float | None = None
        self._fresh = 0
        self._cached: IdleWindows | None = None

    def observe(self, cfg: PredictorConfig, start: float, end: float) -> bool:
        """Record a request running over ``[start, end]``; True when an IT was added."""
        last = self.last_end
        if last is None or end > last:
            self.last_end = end
        if last is None:
            return False
        self.add(cfg, max(0.0, start - last))
        return True

    def add(self, cfg: PredictorConfig, idle_s: float) -> None:
        """Add one idle time (seconds)."""
        i = int(idle_s // cfg.bin_s)
        bins = self.bins
        if i < len(bins):
            b = bins[i]
            bins[i] = b + 1
            self.sqsum += 2 * b + 1
            self.total += 1
        else:
            self.oob += 1
            self.oob_recent.append(idle_s)
        self._fresh += 1
        if self.total + self.oob >= cfg.max_histogram_samples:
            self._halve()

    def _halve(self) -> None:
        self.bins = [b // 2 for b in self.bins]
        self.total = sum(self.bins)
        self.sqsum = sum(b * b for b in self.bins)
        self.oob //= 2
        self._fresh = max(self._fresh, 1)

    def cv(self) -> float:
        """Coefficient of variation of the bin counts (sample standard deviation / mean)."""
        n = len(self.bins)
        if self.total == 0 or n < 2:
            return 0.0
        mean = self.total / n
        var = (self.sqsum - self.total * mean) / (n - 1)
        return math.sqrt(max(0.0, var)) / mean

    def percentile_bin(self, p: float) -> int:
        """Index of the first bin whose cumulative share reaches ``p``."""
        need = p * self.total
        acc = 0
        for i, b in enumerate(self.bins):
            acc += b
            if acc >= need and acc > 0:
                return i
        return len(self.bins) - 1

    def windows(self, cfg: PredictorConfig) -> IdleWindows:
        """The policy's pre-warm and keep-alive windows, recomputed every
        ``recompute_every`` new ITs (and while the histogram is young)."""
        cached = self._cached
        young = self.total + self.oob <= cfg.min_samples
        if cached is not None and self._fresh < cfg.recompute_every and not young:
            return cached
        self._fresh = 0
        self._cached = self._compute(cfg)
        return self._cached

    def _compute(self, cfg: PredictorConfig) -> IdleWindows:
        seen = self.total + self.oob
        if seen < cfg.min_samples:
            return IdleWindows("few-samples", 0.0, cfg.fallback_keep_alive_s)
        if self.oob / seen >= cfg.oob_threshold and self.oob_recent:
            forecast = sum(self.oob_recent) / len(self.oob_recent)
            return IdleWindows(
                "out-of-range",
                forecast * (1.0 - cfg.oob_margin),
                forecast * 2.0 * cfg.oob_margin,
            )
        if self.total == 0 or self.cv() < cfg.cv_threshold:
            return IdleWindows("uncertain", 0.0, cfg.fallback_keep_alive_s)
        head = self.percentile_bin(cfg.head_percentile)
        tail = self.percentile_bin(cfg.tail_percentile)
        prewarm = head * cfg.bin_s * (1.0 - cfg.histogram_margin)
        until = (tail + 1) * cfg.bin_s * (1.0 + cfg.histogram_margin)
        return IdleWindows("histogram", prewarm, until - prewarm)

    def share_between(self, lo_s: float, hi_s: float, bin_s: float) -> float:
        """Share of all ITs (OOB included) that fall in bins ``[lo_s, hi_s]``."""
        seen = self.total + self.oob
        if seen == 0:
            return 0.0
        lo, hi = int(lo_s // bin_s), int(hi_s // bin_s)
        return sum(self.bins[max(0, lo) : min(len(self.bins), hi + 1)]) / seen

    def median_s(self, bin_s: float) -> float:
        """Middle of the bin holding the median IT (seconds)."""
        return (self.percentile_bin(0.5) + 0.5) * bin_s

    def reuse_probability(self, idle_for_s: float, horizon_s: float, bin_s: float) -> float:
        """P(the next request comes within ``horizon_s`` | idle for ``idle_for_s`` already).

        Counts the ITs at least as long as the idle time so far (``alive``) and those of
        them that end within the horizon (``hits``), and returns ``hits / (alive + 1)``:
        one pseudo-observation of a gap that never ends keeps the estimate below 1 and
        makes it 0 without evidence, or once the model has been idle longer than any
        gap seen (its sessions have most likely ended).
        """
        bins = self.bins
        lo = int(max(0.0, idle_for_s) // bin_s)
        hi = int((max(0.0, idle_for_s) + horizon_s) // bin_s)
        n = len(bins)
        alive = sum(bins[lo:]) + self.oob if lo < n else self.oob
        hits = sum(bins[lo : min(n, max(hi, lo + 1))]) if lo < n else 0
        return hits / (alive + 1.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form; sparse bins as ``[[index, count], ...]``."""
        return {
            "bins": [[i, b] for i, b in enumerate(self.bins) if b],
            "oob": self.oob,
            "oob_recent": list(self.oob_recent),
            "last_end": self.last_end,
            "fresh": self._fresh,
            "cached": (
                [self._cached.pattern, self._cached.prewarm_after_s, self._cached.keep_alive_s]
                if self._cached is not None
                else None
            ),
        }

    @classmethod
    def from_dict(cls, cfg: PredictorConfig, data: dict[str, Any]) -> IdleHistogram:
        """Inverse of :meth:`to_dict`."""
        h = cls(cfg)
        for i, b in data["bins"]:
            h.bins[int(i)] = int(b)
        h.total = sum(h.bins)
        h.sqsum = sum(b * b for b in h.bins)
        h.oob = int(data["oob"])
        h.oob_recent.extend(float(x) for x in data["oob_recent"])
        h.last_end = data["last_end"]
        h._fresh = int(data["fresh"])
        cached = data.get("cached")
        if cached is not None:
            h._cached = IdleWindows(cached[0], float(cached[1]), float(cached[2]))
        return h
