"""``predictor.core.advice.model_hints``: what the Faust worker tells Kafka-mode bridges."""

from __future__ import annotations

import math

from predictor.core import new_state, step
from predictor.core.advice import estimate_reuse, keep_alive_after, model_hints
from predictor.core.config import PredictorConfig
from predictor.core.records import AccessRecord


def _request(model: str, ts: float) -> AccessRecord:
    return AccessRecord(ts=ts, session="s", model=model, status=200)


def test_a_hint_per_model_seen_with_the_rules_answers_uncapped() -> None:
    cfg = PredictorConfig.recommended().replace(unload_below=0.2)
    state = new_state(cfg)
    for i in range(30):
        state, _ = step(state, _request("busy", 1000.0 + 10 * i))
    state, _ = step(state, _request("rare", 1000.0))
    now = 1300.0
    hints = {h.model: h for h in model_hints(state, now)}
    assert list(hints) == ["busy", "rare"]
    busy, rare = hints["busy"], hints["rare"]
    assert busy.at == now
    assert busy.horizon_s == cfg.reuse_horizon_s
    assert busy.reuse_probability == estimate_reuse(state, "busy", now)
    assert busy.reuse_probability is not None
    assert busy.reuse_probability > 0.2
    keep, prewarm, pattern = state.hints["busy"]  # 29 gaps of 10 s: a histogram window
    assert (busy.keep_alive_s, busy.prewarm_after_s, busy.pattern) == (keep, prewarm, pattern)
    assert pattern == "histogram"
    assert 0 < keep < cfg.fallback_keep_alive_s
    assert rare.reuse_probability is not None
    assert rare.reuse_probability < 0.2
    assert rare.keep_alive_s == 0.0  # unload_below: unloaded at once...
    assert rare.prefetched_keep_alive_s == cfg.fallback_keep_alive_s  # ...unless prefetched
    assert rare.keep_alive_s == keep_alive_after(state, "rare", now, math.inf)
    assert (rare.prewarm_after_s, rare.pattern) == (0.0, "few-samples")  # one request
    # an hour on, the rate window is empty: no evidence, and the hint says so
    later = {h.model: h for h in model_hints(state, now + 3600)}
    assert later["rare"].reuse_probability is None
    assert later["rare"].keep_alive_s == cfg.fallback_keep_alive_s


def test_histogram_windows_show_in_the_hint() -> None:
    state = new_state(PredictorConfig.recommended())
    state.hints["m"] = (600.0, 120.0, "histogram")
    (hint,) = model_hints(state, 0.0)
    assert (hint.prewarm_after_s, hint.pattern) == (120.0, "histogram")
    assert hint.keep_alive_s == 0.0  # a pre-warm brings it back
    assert hint.prefetched_keep_alive_s == 600.0
    assert hint.reuse_probability is None
