"""The hybrid histogram policy (Shahrad et al., ATC 2020) for one model."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from predictor.core.config import PredictorConfig
from predictor.core.idle import IdleHistogram

CFG = PredictorConfig(recompute_every=1)


def _hist(idles: list[float], cfg: PredictorConfig = CFG) -> IdleHistogram:
    h = IdleHistogram(cfg)
    for x in idles:
        h.add(cfg, x)
    return h


def test_concentrated_idle_times_give_prewarm_and_keep_alive() -> None:
    # Every ~10 minutes (600-659 s): all in bin 10.
    h = _hist([600.0 + i for i in range(50)])
    w = h.windows(CFG)
    assert w.pattern == "histogram"
    assert w.prewarm_after_s == pytest.approx(10 * 60 * 0.9)  # head bin's lower edge - 10 %
    until = 11 * 60 * 1.1  # tail bin's upper edge + 10 %
    assert w.prewarm_after_s + w.keep_alive_s == pytest.approx(until)


def test_head_in_first_bin_means_keep_loaded() -> None:
    h = _hist([5.0] * 30 + [200.0] * 5)
    w = h.windows(CFG)
    assert w.pattern == "histogram"
    assert w.prewarm_after_s == 0.0
    assert w.keep_alive_s == pytest.approx(4 * 60 * 1.1)


def test_too_few_samples_fall_back() -> None:
    w = _hist([600.0] * 9).windows(CFG)
    assert (w.pattern, w.prewarm_after_s, w.keep_alive_s) == (
        "few-samples",
        0.0,
        CFG.fallback_keep_alive_s,
    )


def test_spread_out_idle_times_are_not_representative() -> None:
    # One IT in each of 240 bins: flat histogram, CV = 0.
    h = _hist([i * 60.0 + 1 for i in range(240)])
    assert h.cv() == pytest.approx(0.0)
    w = h.windows(CFG)
    assert w.pattern == "uncertain"
    assert w.keep_alive_s == CFG.fallback_keep_alive_s
    assert w.prewarm_after_s == 0.0


def test_out_of_range_idle_times_use_the_forecast() -> None:
    h = _hist([6 * 3600.0] * 8 + [8 * 3600.0] * 4)  # all beyond the 4-hour range
    w = h.windows(CFG)
    assert w.pattern == "out-of-range"
    forecast = (4 * 6 * 3600.0 + 4 * 8 * 3600.0) / 8  # mean of the last oob_memory=8
    assert w.prewarm_after_s == pytest.approx(forecast * 0.85)
    assert w.keep_alive_s == pytest.approx(forecast * 0.30)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0, 5 * 3600, allow_nan=False), max_size=200))
def test_incremental_cv_matches_direct(idles: list[float]) -> None:
    h = _hist(idles)
    counts = np.zeros(CFG.n_bins)
    for x in idles:
        if x < CFG.range_s:
            counts[int(x // 60)] += 1
    assert h.total == int(counts.sum())
    expected = float(counts.std(ddof=1) / counts.mean()) if counts.sum() else 0.0
    assert h.cv() == pytest.approx(expected, rel=1e-9, abs=1e-9)
    w = h.windows(CFG)
    assert w.prewarm_after_s >= 0.0
    assert w.keep_alive_s >= 0.0


def test_aging_halves_every_bin() -> None:
    cfg = PredictorConfig(max_histogram_samples=20)
    h = _hist([60.0] * 19 + [7200.0], cfg)
    assert h.bins[1] == 9
    assert h.bins[120] == 0
    assert h.total == 9
    assert h.sqsum == 81


def test_reuse_probability_is_conditional_on_idle_so_far() -> None:
    h = _hist([30.0] * 9 + [3000.0])
    horizon = 300.0
    # Just used: 9 of 10 gaps end within 5 minutes; one pseudo "never" observation.
    assert h.reuse_probability(0.0, horizon, 60.0) == pytest.approx(9 / 11)
    # Idle 20 minutes already: only the 50-minute gap is still possible, ending later.
    assert h.reuse_probability(1200.0, horizon, 60.0) == pytest.approx(0.0)
    assert h.reuse_probability(2900.0, horizon, 60.0) == pytest.approx(1 / 2)
    # Longer than any gap seen, or nothing seen: no evidence of reuse.
    assert h.reuse_probability(5000.0, horizon, 60.0) == 0.0
    assert IdleHistogram(CFG).reuse_probability(0.0, horizon, 60.0) == 0.0


def test_round_trip_keeps_the_cached_windows() -> None:
    cfg = PredictorConfig(recompute_every=8)
    h = _hist([600.0] * 20, cfg)
    w = h.windows(cfg)
    h.add(cfg, 5.0)
    h2 = IdleHistogram.from_dict(cfg, h.to_dict())
    assert h2.windows(cfg) == h.windows(cfg) == w
    assert h2.to_dict() == h.to_dict()
