"""The predictor as a state machine: ``step(state, record)`` and ``tick(state, now)``.

Theory of operation
-------------------
``step`` takes one access record and returns the state and the decisions it causes:

1. records that show no demand (most 4xx) change nothing;
2. the record completes a transition (:mod:`predictor.core.transitions`), its system
   prompt hash is counted (:mod:`predictor.core.heavy`) and its idle gap goes into the
   model's histogram (:mod:`predictor.core.idle`);
3. a :class:`KeepAliveHint` goes out when the model's windows changed;
4. likely next models become :class:`Prefetch` + :class:`WarmCache` events, under the
   budget and cooldown of :mod:`predictor.core.planner`.

``tick`` is the timer: it expires windows and idle sessions, fires histogram pre-warms
whose time has come, and (optionally) emits a :class:`ReuseHint` per model. Time only
moves forward: ``state.now`` is the latest time seen in a record or a tick, and a late
record is counted where it belongs but decisions are stamped with ``state.now``.

For speed the state is updated in place and returned: ``step`` and ``tick`` own the
state object they are given (the caller keeps only the returned one). Everything is
deterministic: the same records and ticks give the same outputs, and a state saved with
:func:`state_to_dict` and restored with :func:`state_from_dict` continues exactly as the
original would have.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from predictor.core.config import PredictorConfig
from predictor.core.heavy import SpaceSaving
from predictor.core.idle import IdleHistogram
from predictor.core.outputs import KeepAliveHint, Output, Prefetch, ReuseHint
from predictor.core.planner import Gate, select, warm_caches
from predictor.core.rates import ArrivalRate
from predictor.core.records import AccessRecord
from predictor.core.transitions import Transitions

__all__ = [
    "STATE_VERSION",
    "PredictorState",
    "new_state",
    "reuse_probability",
    "state_from_dict",
    "state_to_dict",
    "step",
    "tick",
]

STATE_VERSION = 1
_CONTEXT_COUNTERS = 4
_REPRESENTATIVE = ("histogram", "out-of-range")


class PredictorState:
    """Everything the predictor remembers (see :func:`state_to_dict` for its stored form)."""

    __slots__ = (
        "config",
        "contexts",
        "gate",
        "hints",
        "idle",
        "now",
        "pending",
        "prompts",
        "rates",
        "transitions",
    )

    def __init__(self, config: PredictorConfig) -> None:
        self.config = config
        self.now: float | None = None
        self.transitions = Transitions(config)
        self.idle: dict[str, IdleHistogram] = {}
        self.rates: dict[str, ArrivalRate] = {}
        """Recent arrival rate per model (kept when ``reuse_estimate == "rate"``)."""
        self.prompts: dict[str, SpaceSaving] = {}
        self.contexts: dict[str, SpaceSaving] = {}
        """num_ctx values per model (as strings), for the context a prefetch should use."""
        self.gate = Gate()
        self.hints: dict[str, tuple[float, float, str]] = {}
        """Last keep-alive hint emitted per model: (keep_alive_s, prewarm_after_s, pattern)."""
        self.pending: dict[str, float] = {}
        """Models waiting for their histogram pre-warm: model -> due time."""


def new_state(config: PredictorConfig | None = None) -> PredictorState:
    """An empty state for ``config`` (the defaults when omitted)."""
    return PredictorState(config or PredictorConfig())


def _advance(state: PredictorState, ts: float) -> float:
    now = state.now
    if now is None or ts > now:
        state.now = ts
        return ts
    return now


def step(state: PredictorState, record: AccessRecord) -> tuple[PredictorState, list[Output]]:
    """Feed one request; returns the (same, updated) state and the decisions it causes."""
    if not record.counts_as_demand:
        return state, []
    cfg = state.config
    ts = record.ts
    now = _advance(state, ts)
    model = record.model
    state.transitions.observe(ts, record.session, model)
    sp_hash = record.system_prompt_hash
    if sp_hash:
        counter = state.prompts.get(model)
        if counter is None:
            counter = state.prompts[model] = SpaceSaving(cfg.heavy_hitters)
        counter.offer(sp_hash)
    if record.num_ctx is not None:
        ctxs = state.contexts.get(model)
        if ctxs is None:
            ctxs = state.contexts[model] = SpaceSaving(_CONTEXT_COUNTERS)
        ctxs.offer(str(record.num_ctx))
    if cfg.reuse_estimate == "rate":
        rate = state.rates.get(model)
        if rate is None:
            rate = state.rates[model] = ArrivalRate(cfg.rate_window_minutes)
        rate.add(ts)
    out: list[Output] = []
    if cfg.histogram:
        hist = state.idle.get(model)
        if hist is None:
            hist = state.idle[model] = IdleHistogram(cfg)
        hist.observe(cfg, ts, ts + record.duration_s)
        win = hist.windows(cfg)
        key = (win.keep_alive_s, win.prewarm_after_s, win.pattern)
        if state.hints.get(model) != key:
            state.hints[model] = key
            out.append(KeepAliveHint(model, win.keep_alive_s, win.prewarm_after_s, win.pattern))
        if cfg.prewarm_prefetch and win.prewarm_after_s > 0 and hist.last_end is not None:
            state.pending[model] = hist.last_end + win.prewarm_after_s
        else:
            state.pending.pop(model, None)
    candidates = state.transitions.candidates(
        record.session, model, now, min_probability=cfg.confidence_threshold
    )
    if candidates:
        for cand in select(cfg, state.gate, current=model, candidates=candidates, now=now):
            arrival = now + cand.gap_s
            reason = "session_transition" if cand.session_weight >= 0.5 else "global_transition"
            expires = arrival + cfg.prefetch_slack_s
            bare = Prefetch(cand.model, cand.probability, arrival, expires, reason, model)
            _emit_prefetch(state, out, bare)
    return state, out


def _usual_num_ctx(state: PredictorState, model: str) -> int | None:
    ctxs = state.contexts.get(model)
    if ctxs is None or ctxs.offered == 0:
        return None
    key, guaranteed, _ = ctxs.top(1)[0]
    return int(key) if 2 * guaranteed > ctxs.offered else None


def _emit_prefetch(state: PredictorState, out: list[Output], bare: Prefetch) -> None:
    """Append ``bare`` with the model's usual num_ctx and keep-alive, then its warm-ups."""
    model = bare.model
    hint = state.hints.get(model)
    keep_alive = hint[0] if hint is not None and hint[2] in _REPRESENTATIVE else None
    prefetch = dataclasses.replace(
        bare,
        confidence=min(1.0, bare.confidence),
        num_ctx=_usual_num_ctx(state, model),
        keep_alive_s=keep_alive,
    )
    out.append(prefetch)
    out.extend(warm_caches(state.config, state.prompts.get(model), prefetch))


def tick(state: PredictorState, now: float) -> tuple[PredictorState, list[Output]]:
    """Advance time to ``now``: expire, fire due pre-warms, emit reuse hints."""
    cfg = state.config
    now = _advance(state, now)
    state.transitions.expire(now)
    out: list[Output] = []
    gate = state.gate
    for model in sorted(m for m, due in state.pending.items() if due <= now):
        hist = state.idle[model]
        win = hist.windows(cfg)
        due = state.pending[model]
        until = due + win.keep_alive_s
        if now >= until:
            del state.pending[model]  # the window passed while we were not ticking
            continue
        if not gate.allows(cfg, model, now):
            continue  # try again at the next tick, while the window lasts
        gate.spend(model, now)
        del state.pending[model]
        last_end = hist.last_end if hist.last_end is not None else now
        confidence = hist.share_between(
            win.prewarm_after_s, win.prewarm_after_s + win.keep_alive_s, cfg.bin_s
        )
        expected = max(now, last_end + hist.median_s(cfg.bin_s))
        _emit_prefetch(state, out, Prefetch(model, confidence, expected, until, "idle_histogram"))
    gate.forget_before(now - cfg.cooldown_s)
    if cfg.reuse_hints_on_tick:
        horizon = cfg.reuse_horizon_s
        for model in sorted(state.idle.keys() | state.rates.keys()):
            out.append(ReuseHint(model, reuse_probability(state, model, now), horizon, now))
    return state, out


def reuse_probability(state: PredictorState, model: str, now: float) -> float:
    """P(``model`` is requested within ``reuse_horizon_s`` of ``now``): with
    ``reuse_estimate == "histogram"`` from its idle-time histogram given how long it has
    been idle, with ``"rate"`` from its recent arrival rate; 0.0 for a model never seen
    (or with the estimate off). Read-only: the bridge may call it directly in embedded
    mode."""
    cfg = state.config
    if cfg.reuse_estimate == "rate":
        rate = state.rates.get(model)
        return 0.0 if rate is None else rate.reuse_probability(now, cfg.reuse_horizon_s)
    hist = state.idle.get(model)
    if hist is None:
        return 0.0
    idle_for = now - hist.last_end if hist.last_end is not None else 0.0
    return hist.reuse_probability(idle_for, cfg.reuse_horizon_s, cfg.bin_s)


def state_to_dict(state: PredictorState) -> dict[str, Any]:
    """JSON-compatible snapshot (orjson / json can dump it as is), config included."""
    return {
        "version": STATE_VERSION,
        "config": state.config.to_dict(),
        "now": state.now,
        "transitions": state.transitions.to_dict(),
        "idle": {m: h.to_dict() for m, h in state.idle.items()},
        "rates": {m: r.to_dict() for m, r in state.rates.items()},
        "prompts": {m: p.to_dict() for m, p in state.prompts.items()},
        "contexts": {m: p.to_dict() for m, p in state.contexts.items()},
        "gate": state.gate.to_dict(),
        "hints": {m: list(h) for m, h in state.hints.items()},
        "pending": state.pending,
    }


def state_from_dict(data: dict[str, Any], config: PredictorConfig | None = None) -> PredictorState:
    """Restore a snapshot. ``config`` overrides the stored one (it must keep the same
    window kind and histogram bins; tuning thresholds, budget or cooldown is fine)."""
    if data.get("version") != STATE_VERSION:
        raise ValueError(f"predictor state version {data.get('version')!r} is not {STATE_VERSION}")
    cfg = config or PredictorConfig.from_dict(data["config"])
    state = PredictorState(cfg)
    state.now = data["now"]
    state.transitions = Transitions.from_dict(cfg, data["transitions"])
    state.idle = {m: IdleHistogram.from_dict(cfg, h) for m, h in data["idle"].items()}
    # "rates" arrived after version 1 states were first stored: absent means none.
    state.rates = {m: ArrivalRate.from_dict(r) for m, r in data.get("rates", {}).items()}
    state.prompts = {m: SpaceSaving.from_dict(p) for m, p in data["prompts"].items()}
    state.contexts = {m: SpaceSaving.from_dict(p) for m, p in data["contexts"].items()}
    state.gate = Gate.from_dict(data["gate"])
    state.hints = {m: (float(h[0]), float(h[1]), str(h[2])) for m, h in data["hints"].items()}
    state.pending = {str(m): float(t) for m, t in data["pending"].items()}
    return state
