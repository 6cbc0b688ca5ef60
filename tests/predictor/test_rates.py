"""Recent arrival rate per model and the reuse probability it implies."""

from __future__ import annotations

import math

import orjson
import pytest

from predictor.core import new_state, reuse_probability, state_from_dict, state_to_dict, step
from predictor.core.config import ConfigError, PredictorConfig
from predictor.core.rates import ArrivalRate
from predictor.core.records import AccessRecord


def test_counts_the_window_and_forgets_what_slid_out() -> None:
    r = ArrivalRate(5)
    for t in (0.0, 10.0, 70.0, 250.0):
        r.add(t)
    assert r.count(250.0) == 4
    assert r.rate(250.0) == pytest.approx(4 / 300.0)
    assert r.count(300.0) == 2  # minute 0 (two requests) left the window of minutes 1..5
    assert r.count(600.0) == 0
    r.add(600.0)
    assert [m for m, _ in r.buckets] == [10]  # old buckets are dropped when new ones arrive


def test_late_records_join_their_minute_or_are_dropped() -> None:
    r = ArrivalRate(3)
    r.add(0.0)
    r.add(180.0)
    r.add(130.0)  # minute 2, still in the window of minutes 1..3
    r.add(10.0)  # minute 0: out of the window
    assert [list(b) for b in r.buckets] == [[2, 1], [3, 1]]
    assert r.count(180.0) == 2


def test_reuse_probability_is_poisson_at_the_recent_rate() -> None:
    r = ArrivalRate(10)
    for i in range(60):
        r.add(i * 10.0)  # one request every 10 s
    assert r.reuse_probability(599.0, 30.0) == pytest.approx(1 - math.exp(-0.1 * 30.0))
    assert ArrivalRate(10).reuse_probability(0.0, 30.0) == 0.0


def test_state_reuse_follows_the_recent_traffic_with_the_rate_estimate() -> None:
    cfg = PredictorConfig(reuse_estimate="rate", reuse_horizon_s=30.0, rate_window_minutes=5)
    state = new_state(cfg)
    for i in range(30):  # busy A, then quiet; B asked for now and then
        state, _ = step(state, AccessRecord(i * 2.0, "s", "A"))
    for t in (100.0, 250.0):
        state, _ = step(state, AccessRecord(t, "s", "B"))
    assert reuse_probability(state, "A", 60.0) > reuse_probability(state, "B", 260.0) > 0.0
    assert reuse_probability(state, "A", 400.0) == 0.0  # its minutes left the window
    assert reuse_probability(state, "never-seen", 60.0) == 0.0
    blob = orjson.loads(orjson.dumps(state_to_dict(state)))
    again = state_from_dict(blob)
    assert reuse_probability(again, "B", 260.0) == reuse_probability(state, "B", 260.0)
    del blob["rates"]  # a state stored before rates existed still loads
    assert state_from_dict(blob).rates == {}


def test_the_histogram_estimate_stays_the_default_and_keeps_no_rates() -> None:
    state = new_state()
    state, _ = step(state, AccessRecord(0.0, "s", "A"))
    assert state.config.reuse_estimate == "histogram"
    assert state.rates == {}


def test_bad_reuse_settings_are_named() -> None:
    with pytest.raises(ConfigError, match="reuse_estimate"):
        PredictorConfig(reuse_estimate="magic")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="rate_window_minutes"):
        PredictorConfig(rate_window_minutes=0)
