"""The predictor's say in eviction and idle unloads: one rule, wherever the core runs.

Three places need the same answers and compute them here:

* the embedded bridge, reading its in-process state (``bridge.events.predictor``);
* the replay (``replay``), reading the simulated one;
* the Faust worker (``predictor.stream``), which publishes them per model on every tick
  as :class:`ModelHint` (``alb.model-hints.v1``) for bridges that run with Kafka and
  have no predictor state of their own (``bridge.events.hints``).

:func:`estimate_reuse` is P(requested within ``reuse_horizon_s``) once the core has
evidence for the model, else None: "no evidence" must not read as "never again" (the
caller falls back on recency). :func:`keep_alive_after` is how long an idle runner of
the model stays loaded: the hybrid histogram's windows (Shahrad et al., ATC 2020), with
the early unload of ``unload_below``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from predictor.core.machine import PredictorState, reuse_probability

__all__ = ["ModelHint", "estimate_reuse", "keep_alive_after", "model_hints"]


def estimate_reuse(state: PredictorState, model: str, now: float) -> float | None:
    """P(``model`` is requested within the horizon) once the core has evidence for it,
    else None. Evidence: with ``reuse_estimate == "rate"`` a request of the model in the
    rate window; with ``"histogram"`` ``min_samples`` idle gaps (the core's bar for a
    representative histogram)."""
    if state.config.reuse_estimate == "rate":
        rate = state.rates.get(model)
        if rate is None or rate.count(now) == 0:
            return None
        return reuse_probability(state, model, now)
    hist = state.idle.get(model)
    if hist is None or hist.total + hist.oob < state.config.min_samples:
        return None
    return reuse_probability(state, model, now)


def keep_alive_after(
    state: PredictorState,
    model: str,
    now: float,
    cap: float = math.inf,
    *,
    prefetched: bool = False,
) -> float:
    """Seconds an idle runner of ``model`` stays loaded after its last request (or its
    load), at most ``cap`` (the bridge's ``ALB_IDLE_UNLOAD_AFTER``).

    The hybrid histogram's windows: keep ``keep_alive_s`` after the last request; with a
    pre-warm window, unload at once (the pre-warm prefetch brings the model back when it
    is due); a model without a window yet keeps ``fallback_keep_alive_s``. Then, with
    ``unload_below`` > 0, a model whose :func:`estimate_reuse` is below it is unloaded
    at once. A runner a prefetch loaded and no request has used yet (``prefetched``) is
    kept its ``keep_alive_s`` window (the paper's "kept for keep_alive from the
    pre-warm"): neither early rule applies, or the prefetch would be undone at once."""
    cfg = state.config
    hint = state.hints.get(model)
    if hint is None:
        keep = cfg.fallback_keep_alive_s
    else:
        keep_alive_s, prewarm_after_s, _pattern = hint
        keep = 0.0 if prewarm_after_s > 0 and not prefetched else keep_alive_s
    if keep > 0 and cfg.unload_below > 0 and not prefetched:
        p = estimate_reuse(state, model, now)
        if p is not None and p < cfg.unload_below:
            keep = 0.0
    return min(keep, cap)


@dataclass(frozen=True, slots=True)
class ModelHint:
    """What a bridge without predictor state needs to know about ``model`` at ``at``:
    :func:`estimate_reuse` (None: no evidence yet) over ``horizon_s``, and
    :func:`keep_alive_after` for a runner that served requests (``keep_alive_s``) and for
    one a prefetch loaded and nothing used yet (``prefetched_keep_alive_s``), uncapped.
    ``prewarm_after_s`` and ``pattern`` are the histogram's windows as they stand (0 and
    None before the model has any)."""

    model: str
    at: float
    reuse_probability: float | None
    horizon_s: float
    keep_alive_s: float
    prefetched_keep_alive_s: float
    prewarm_after_s: float
    pattern: str | None


def model_hints(state: PredictorState, now: float) -> list[ModelHint]:
    """One :class:`ModelHint` per model the core has seen, sorted by model (pure: the
    Faust worker publishes these on each tick)."""
    models = state.idle.keys() | state.rates.keys() | state.hints.keys()
    out = []
    for model in sorted(models):
        windows = state.hints.get(model)
        out.append(
            ModelHint(
                model=model,
                at=now,
                reuse_probability=estimate_reuse(state, model, now),
                horizon_s=state.config.reuse_horizon_s,
                keep_alive_s=keep_alive_after(state, model, now),
                prefetched_keep_alive_s=keep_alive_after(state, model, now, prefetched=True),
                prewarm_after_s=0.0 if windows is None else windows[1],
                pattern=None if windows is None else windows[2],
            )
        )
    return out
