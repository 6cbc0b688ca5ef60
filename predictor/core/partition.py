"""The core's state split in two: per-session parts and the global rest.

Theory of operation
-------------------
:class:`~predictor.core.machine.PredictorState` is one object; most of its bytes are
the sessions (each session's last model and its own small transition window). A
stream processor keeps those apart, keyed by session, next to the access-log
partition that carries the session, and keeps everything else (the global window,
idle histograms, prompt heavy hitters, gate, hints) in one place.

* :class:`SessionPart` is one session: its last model and time and its window (the
  ``to_dict`` form, so it can be stored as is), plus ``offset``: the log position of
  the last record folded into it, which makes applying a record idempotent.
* :func:`advance_session` is what :meth:`Transitions.observe` does to one session
  (run on a scratch ``Transitions`` holding only that session), without touching the
  global window.
* :func:`step_with_session` runs the unchanged core ``step`` on a state that holds
  no sessions, with the record's session put in for the duration of the call and
  taken out again. Given the part as it was *before* the record, the decisions are
  exactly the ones ``step`` makes on a monolithic state.
* :func:`global_to_dict` / :func:`global_from_dict` are ``state_to_dict`` /
  ``state_from_dict`` for a state without sessions.

For records in time order, ``advance_session`` followed by ``step_with_session``
reproduces the monolithic core exactly (``tests/predictor/test_partition.py``). One
difference remains for records more than a window late: the monolithic core advances
a session's window to the *global* now, a part only to its own latest record; the
window is advanced to the global now before every estimate either way, so expiry
stays exact, but a record that is ``window_minutes`` older than the global clock
(and not older than its session's) is still counted into the session's own window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from predictor.core.config import PredictorConfig
from predictor.core.machine import PredictorState, state_from_dict, state_to_dict, step
from predictor.core.outputs import Output
from predictor.core.records import AccessRecord
from predictor.core.transitions import Transitions, _Session
from predictor.core.windows import window_from_dict

__all__ = [
    "SessionPart",
    "advance_session",
    "global_from_dict",
    "global_to_dict",
    "step_with_session",
]


@dataclass(frozen=True, slots=True)
class SessionPart:
    """One session's share of the core state (JSON-ready with :meth:`to_dict`)."""

    last_model: str
    last_ts: float
    window: dict[str, Any] | None
    """The session's own transition window (``Window.to_dict``), None when sessions
    are not blended (``use_session`` off or ``transition_source="arrival"``)."""
    offset: int = -1
    """Log offset of the last record folded in (-1: unknown)."""

    def to_dict(self) -> dict[str, Any]:
        """Compact JSON-compatible form."""
        return {"m": self.last_model, "t": self.last_ts, "w": self.window, "o": self.offset}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SessionPart:
        """Inverse of :meth:`to_dict`."""
        return cls(str(data["m"]), float(data["t"]), data["w"], int(data.get("o", -1)))

    def expired(self, cfg: PredictorConfig, now: float) -> bool:
        """Whether the core would have forgotten this session by ``now`` (``session_ttl_s``)."""
        return self.last_ts < now - cfg.session_ttl_s


def _session(part: SessionPart) -> _Session:
    window = window_from_dict(part.window) if part.window is not None else None
    return _Session(part.last_model, part.last_ts, window)


def _part(session: _Session, offset: int) -> SessionPart:
    window = session.window.to_dict() if session.window is not None else None
    return SessionPart(session.last_model, session.last_ts, window, offset)


def advance_session(
    cfg: PredictorConfig, part: SessionPart | None, record: AccessRecord, *, offset: int = -1
) -> SessionPart | None:
    """The session's part after ``record`` (None when the record shows no demand and
    there was no part). ``offset`` is stored in the result."""
    if not record.counts_as_demand:
        return part
    scratch = Transitions(cfg)
    if part is not None:
        scratch.sessions[record.session] = _session(part)
    scratch.observe(record.ts, record.session, record.model)
    return _part(scratch.sessions[record.session], offset)


def step_with_session(
    state: PredictorState, record: AccessRecord, part: SessionPart | None
) -> tuple[PredictorState, list[Output]]:
    """``step`` on a sessionless ``state`` with the record's session as ``part`` (its
    state *before* the record). The session is removed again afterwards; keep the
    session's own copy up to date with :func:`advance_session`."""
    sessions = state.transitions.sessions
    if sessions:
        raise ValueError("step_with_session needs a state without sessions")
    if part is not None:
        sessions[record.session] = _session(part)
    try:
        return step(state, record)
    finally:
        sessions.clear()


def global_to_dict(state: PredictorState) -> dict[str, Any]:
    """``state_to_dict`` of a state that holds no sessions (they live elsewhere)."""
    if state.transitions.sessions:
        raise ValueError("global_to_dict needs a state without sessions")
    return state_to_dict(state)


def global_from_dict(data: dict[str, Any], config: PredictorConfig | None = None) -> PredictorState:
    """Inverse of :func:`global_to_dict` (``config`` as in ``state_from_dict``)."""
    state = state_from_dict(data, config)
    state.transitions.sessions.clear()
    return state
