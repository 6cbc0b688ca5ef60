"""Offline scoring of prefetch decisions, without a bridge or a fleet.

The records are fed through ``step`` in order, with a ``tick`` every ``tick_s``
seconds of trace time (as the Faust timer would). Then:

* **precision** = prefetches followed by a request for their model in
  ``(emitted, expires_at]`` / prefetches;
* **recall** = *switches* (requests whose session's previous request, at most
  ``max_gap_s`` earlier, was for another model: the requests a transition predictor
  is meant to foresee) that fell inside the window of an earlier prefetch of their
  model / switches.

This measures the predictor alone; the replay evaluator (cold starts, latency, wasted
loads through the bridge's real placement code) comes with the bridge.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass

from predictor.core import Prefetch, new_state, step, tick
from predictor.core.config import PredictorConfig
from predictor.core.records import AccessRecord

__all__ = ["PrefetchReport", "evaluate_prefetch"]


@dataclass(frozen=True, slots=True)
class PrefetchReport:
    """Counts and ratios of :func:`evaluate_prefetch` (ratios are 0 when undefined)."""

    requests: int
    prefetches: int
    hits: int
    switches: int
    covered: int

    @property
    def precision(self) -> float:
        """Share of prefetches whose model was requested before they expired."""
        return self.hits / self.prefetches if self.prefetches else 0.0

    @property
    def recall(self) -> float:
        """Share of model switches that an earlier, live prefetch foresaw."""
        return self.covered / self.switches if self.switches else 0.0


def evaluate_prefetch(
    records: Iterable[AccessRecord], config: PredictorConfig, *, tick_s: float = 10.0
) -> PrefetchReport:
    """Run the core over ``records`` (in arrival order) and score its prefetches."""
    state = new_state(config)
    recs = sorted(records, key=lambda r: r.ts)
    issued: list[tuple[float, Prefetch]] = []
    next_tick: float | None = None
    for rec in recs:
        if next_tick is None:
            next_tick = rec.ts + tick_s
        while next_tick <= rec.ts:
            state, out = tick(state, next_tick)
            issued.extend((next_tick, o) for o in out if isinstance(o, Prefetch))
            next_tick += tick_s
        state, out = step(state, rec)
        now = state.now if state.now is not None else rec.ts
        issued.extend((now, o) for o in out if isinstance(o, Prefetch))

    arrivals: dict[str, list[float]] = {}
    for rec in recs:
        if rec.counts_as_demand:
            arrivals.setdefault(rec.model, []).append(rec.ts)
    hits = 0
    windows: dict[str, list[tuple[float, float]]] = {}
    for emitted, p in issued:
        times = arrivals.get(p.model, [])
        i = bisect.bisect_right(times, emitted)
        if i < len(times) and times[i] <= p.expires_at:
            hits += 1
        windows.setdefault(p.model, []).append((emitted, p.expires_at))

    # For each model: emission times and the running max of expiries, to ask
    # "was some prefetch emitted before t still live at t?" with one bisect.
    index: dict[str, tuple[list[float], list[float]]] = {}
    for model, spans in windows.items():
        spans.sort()
        starts = [s for s, _ in spans]
        reach: list[float] = []
        best = float("-inf")
        for _, end in spans:
            best = max(best, end)
            reach.append(best)
        index[model] = (starts, reach)

    switches = covered = 0
    last: dict[str, tuple[str, float]] = {}
    for rec in recs:
        if not rec.counts_as_demand:
            continue
        prev = last.get(rec.session)
        last[rec.session] = (rec.model, rec.ts)
        if prev is None or prev[0] == rec.model or rec.ts - prev[1] > config.max_gap_s:
            continue
        switches += 1
        spans_for = index.get(rec.model)
        if spans_for is not None:
            starts, reach = spans_for
            j = bisect.bisect_left(starts, rec.ts) - 1
            if j >= 0 and reach[j] >= rec.ts:
                covered += 1
    return PrefetchReport(len(recs), len(issued), hits, switches, covered)
