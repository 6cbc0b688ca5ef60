"""Which model comes next: windowed transition counts and a smoothed estimate.

Theory of operation
-------------------
Every demand-carrying request for model ``j`` is a transition ``i -> j`` from the model
``i`` its session used last (``transition_source="session"``; a session idle for more
than ``max_gap_s`` starts afresh) or from the previous request in arrival order
(``"arrival"``, for traces without sessions). Transitions are counted in one global
window and, when ``use_session`` is on, in a small window per session (see
:mod:`predictor.core.windows`).

The estimate of P(next = j | current = i) over the set ``V`` of models seen so far is
additive (Lidstone) smoothing with one extra "unseen model" slot::

    P_w(j | i) = (c_w(i, j) + a) / (n_w(i) + a * (|V| + 1))        (0 when the denominator is 0)

for each window ``w``; summed over ``V`` it is ``(n + a|V|) / (n + a|V| + a) <= 1``: the
missing mass is what smoothing reserves for a model not seen yet. ``a = 0`` is the
maximum-likelihood estimate. The session and global estimates are blended with the
session's weight growing with its evidence, ``s = n_s(i) / (n_s(i) + session_prior)``::

    P(j | i) = s * P_session(j | i) + (1 - s) * P_global(j | i)

a convex combination of two sub-distributions, so it also sums to at most 1. The
expected gap to ``j`` is the same blend of each window's mean ``i -> j`` gap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from predictor.core.config import PredictorConfig
from predictor.core.windows import CountWindow, MinuteWindow, Window, window_from_dict

__all__ = ["Candidate", "Transitions"]


@dataclass(frozen=True, slots=True)
class Candidate:
    """A possible next model with its blended probability and expected gap (seconds)."""

    model: str
    probability: float
    gap_s: float
    count: int
    """Observed transitions to it (session + global windows)."""
    session_weight: float = 0.0
    """Share of the session's own estimate in ``probability``."""


class _Session:
    __slots__ = ("last_model", "last_ts", "window")

    def __init__(self, last_model: str, last_ts: float, window: Window | None) -> None:
        self.last_model = last_model
        self.last_ts = last_ts
        self.window = window


class Transitions:
    """Transition counts per session and globally, and P(next | current) from them."""

    __slots__ = ("_cfg", "_last", "glob", "known", "sessions")

    def __init__(self, cfg: PredictorConfig) -> None:
        self._cfg = cfg
        self.glob: Window = self._new_window(session=False)
        self.sessions: dict[str, _Session] = {}
        """Ordered from least to most recently seen."""
        self.known: dict[str, None] = {}
        """Every model seen (an ordered set)."""
        self._last: tuple[str, float] | None = None

    def _new_window(self, *, session: bool) -> Window:
        cfg = self._cfg
        if cfg.window == "time":
            return MinuteWindow(cfg.window_minutes)
        return CountWindow(cfg.session_count_window if session else cfg.count_window)

    @property
    def _per_session(self) -> bool:
        return self._cfg.use_session and self._cfg.transition_source == "session"

    def observe(self, ts: float, session: str, model: str) -> None:
        """Count the transition that a request for ``model`` at ``ts`` completes."""
        cfg = self._cfg
        minute = int(ts // 60)
        self.known[model] = None
        sessions = self.sessions
        state = sessions.pop(session, None)
        if cfg.transition_source == "arrival":
            prev = self._last
            self._last = (model, ts) if prev is None or ts >= prev[1] else prev
        else:
            prev = (state.last_model, state.last_ts) if state is not None else None
        if prev is not None:
            gap = ts - prev[1]
            if 0.0 <= gap <= cfg.max_gap_s:
                gap_ms = int(gap * 1000.0)
                self.glob.add(minute, prev[0], model, gap_ms)
                if state is not None and state.window is not None:
                    state.window.add(minute, prev[0], model, gap_ms)
        else:
            self.glob.advance(minute)
        if state is None:
            window = self._new_window(session=True) if self._per_session else None
            state = _Session(model, ts, window)
        elif ts >= state.last_ts:
            state.last_model = model
            state.last_ts = ts
        sessions[session] = state  # most recently seen goes last
        if len(sessions) > cfg.max_sessions:
            del sessions[next(iter(sessions))]

    def expire(self, now: float) -> None:
        """Move the global window to ``now`` and forget sessions idle for ``session_ttl_s``."""
        self.glob.advance(int(now // 60))
        horizon = now - self._cfg.session_ttl_s
        sessions = self.sessions
        while sessions:
            key = next(iter(sessions))
            if sessions[key].last_ts >= horizon:
                break
            del sessions[key]

    def current(self, session: str) -> str | None:
        """The model the session used last, if it is still tracked."""
        state = self.sessions.get(session)
        return state.last_model if state is not None else None

    def _weights(self, session: str, current: str, now_minute: int) -> tuple[Window | None, float]:
        state = self.sessions.get(session) if self._per_session else None
        if state is None or state.window is None:
            return None, 0.0
        win = state.window
        win.advance(now_minute)
        n_s = win.row_total(current)
        if n_s == 0:
            return None, 0.0
        return win, n_s / (n_s + self._cfg.session_prior)

    def candidates(
        self, session: str, current: str, now: float, *, min_probability: float = 0.0
    ) -> list[Candidate]:
        """Models observed after ``current`` in the windows with a probability of at least
        ``min_probability``, most likely first (ties by name)."""
        now_minute = int(now // 60)
        glob = self.glob
        glob.advance(now_minute)
        a = self._cfg.smoothing
        slots = a * (len(self.known) + 1)
        g_row = glob.row(current)
        g_den = glob.row_total(current) + slots
        swin, s_w = self._weights(session, current, now_minute)
        s_row = swin.row(current) if swin is not None else {}
        s_den = (swin.row_total(current) + slots) if swin is not None else 0.0
        out: list[Candidate] = []
        for model in g_row.keys() | s_row.keys():
            gc, gg = g_row.get(model) or (0, 0)
            sc, sg = s_row.get(model) or (0, 0)
            p_g = (gc + a) / g_den if g_den > 0 else 0.0
            p_s = (sc + a) / s_den if s_den > 0 else 0.0
            gap_g = gg / gc / 1000.0 if gc else 0.0
            gap_s = sg / sc / 1000.0 if sc else gap_g
            if not gc:
                gap_g = gap_s
            prob = s_w * p_s + (1.0 - s_w) * p_g
            if prob < min_probability:
                continue
            gap = s_w * gap_s + (1.0 - s_w) * gap_g
            out.append(Candidate(model, prob, gap, gc + sc, s_w))
        out.sort(key=lambda c: (-c.probability, c.model))
        return out

    def top(self, now: float, limit: int) -> list[tuple[str, Candidate]]:
        """The ``limit`` most likely observed transitions ``i -> j`` of the global window
        at ``now``, as ``(i, candidate j)``: ``P_global(j | i)`` smoothed as above (no
        session's estimate), most likely first, then the most observed, then by names.
        Moves the global window to ``now`` first, as :meth:`expire` does."""
        glob = self.glob
        glob.advance(int(now // 60))
        a = self._cfg.smoothing
        slots = a * (len(self.known) + 1)
        out: list[tuple[str, Candidate]] = []
        for prev in self.known:
            den = glob.row_total(prev) + slots
            if den <= 0:
                continue
            for model, (count, gap_ms) in glob.row(prev).items():
                if count > 0:
                    out.append(
                        (prev, Candidate(model, (count + a) / den, gap_ms / count / 1000.0, count))
                    )
        out.sort(key=lambda t: (-t[1].probability, -t[1].count, t[0], t[1].model))
        return out[: max(limit, 0)]

    def distribution(self, session: str, current: str, now: float) -> dict[str, float]:
        """P(next = j | current) for every known model ``j`` (sums to at most 1)."""
        probs = dict.fromkeys(self.known, 0.0)
        by_model = {c.model: c.probability for c in self.candidates(session, current, now)}
        a = self._cfg.smoothing
        if a > 0:
            now_minute = int(now // 60)
            slots = a * (len(self.known) + 1)
            g_den = self.glob.row_total(current) + slots
            swin, s_w = self._weights(session, current, now_minute)
            s_den = (swin.row_total(current) + slots) if swin is not None else 0.0
            base = s_w * (a / s_den if s_den else 0.0) + (1.0 - s_w) * a / g_den
            probs = dict.fromkeys(self.known, base)
        probs.update(by_model)
        return probs

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form."""
        return {
            "global": self.glob.to_dict(),
            "known": list(self.known),
            "last": list(self._last) if self._last is not None else None,
            "sessions": [
                [key, s.last_model, s.last_ts, s.window.to_dict() if s.window else None]
                for key, s in self.sessions.items()
            ],
        }

    @classmethod
    def from_dict(cls, cfg: PredictorConfig, data: dict[str, Any]) -> Transitions:
        """Inverse of :meth:`to_dict`."""
        tr = cls(cfg)
        tr.glob = window_from_dict(data["global"])
        tr.known = dict.fromkeys(data["known"])
        last = data["last"]
        tr._last = (str(last[0]), float(last[1])) if last is not None else None
        for key, model, ts, win in data["sessions"]:
            tr.sessions[key] = _Session(
                model, float(ts), window_from_dict(win) if win is not None else None
            )
        return tr
