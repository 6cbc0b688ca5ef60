"""The split state (per-session parts + global rest) decides exactly as the monolithic core."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from predictor.core import Output, new_state, state_to_dict, step, tick
from predictor.core.config import PredictorConfig
from predictor.core.partition import (
    SessionPart,
    advance_session,
    global_from_dict,
    global_to_dict,
    step_with_session,
)
from predictor.core.records import AccessRecord
from predictor.traces.format import to_access_records
from predictor.traces.synth import SynthParams, synthesize


def _split_run(
    cfg: PredictorConfig, records: list[AccessRecord], *, tick_s: float | None = None
) -> tuple[list[Output], dict[str, SessionPart]]:
    """Drive the split state: parts in a dict (stage 1), the rest round-tripped through
    its JSON form now and then (stage 2's snapshots)."""
    state = new_state(cfg)
    parts: dict[str, SessionPart] = {}
    out: list[Output] = []
    next_tick = records[0].ts + tick_s if tick_s else None
    for i, rec in enumerate(records):
        if next_tick is not None and rec.ts >= next_tick:
            state, o = tick(state, next_tick)
            out.extend(o)
            next_tick += tick_s or 0.0
        before = parts.get(rec.session)
        new = advance_session(cfg, before, rec, offset=i)
        if new is not None:
            parts[rec.session] = SessionPart.from_dict(orjson.loads(orjson.dumps(new.to_dict())))
        state, o = step_with_session(state, rec, before)
        out.extend(o)
        if i % 97 == 0:  # restore from a snapshot: nothing may be lost
            state = global_from_dict(orjson.loads(orjson.dumps(global_to_dict(state))), cfg)
    return out, parts


def _mono_run(
    cfg: PredictorConfig, records: list[AccessRecord], *, tick_s: float | None = None
) -> tuple[list[Output], dict[str, object]]:
    state = new_state(cfg)
    out: list[Output] = []
    next_tick = records[0].ts + tick_s if tick_s else None
    for rec in records:
        if next_tick is not None and rec.ts >= next_tick:
            state, o = tick(state, next_tick)
            out.extend(o)
            next_tick += tick_s or 0.0
        state, o = step(state, rec)
        out.extend(o)
    return out, state_to_dict(state)


def _trace(seed: int = 3, minutes: float = 40.0) -> list[AccessRecord]:
    params = SynthParams(seed=seed, duration_s=minutes * 60, sessions_per_minute=6.0)
    return list(to_access_records(synthesize(params)))


@pytest.mark.parametrize(
    "cfg",
    [
        PredictorConfig(),
        PredictorConfig(window="count"),
        PredictorConfig(cooldown_s=0, session_prior=1.0),
        PredictorConfig.seed_article(),
    ],
    ids=["default", "count", "no-cooldown", "seed-article"],
)
def test_split_state_decides_exactly_as_the_monolithic_core(cfg: PredictorConfig) -> None:
    records = _trace()
    mono, mono_state = _mono_run(cfg, records, tick_s=30.0)
    split, parts = _split_run(cfg, records, tick_s=30.0)
    assert any(type(o).__name__ == "Prefetch" for o in mono)
    assert split == mono
    # and each stored part is the session the monolithic core kept (those it still has)
    sessions = {s[0]: s for s in mono_state["transitions"]["sessions"]}  # type: ignore[index]
    for key, (_, model, ts, _win) in sessions.items():
        assert (parts[key].last_model, parts[key].last_ts) == (model, ts)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0, 30, allow_nan=False),
            st.sampled_from(["s1", "s2", "s3"]),
            st.sampled_from(["A", "B", "C"]),
            st.sampled_from([200, 404, 503]),
        ),
        min_size=1,
        max_size=80,
    )
)
def test_split_matches_on_any_in_order_input(rows: list[tuple[float, str, str, int]]) -> None:
    t = 0.0
    records = []
    for dt, session, model, status in rows:
        t += dt
        records.append(AccessRecord(t, session, model, status=status))
    cfg = PredictorConfig(cooldown_s=0, min_count=1, confidence_threshold=0.2, window_minutes=1)
    assert _split_run(cfg, records)[0] == _mono_run(cfg, records)[0]


def test_a_record_without_demand_leaves_the_part_alone() -> None:
    cfg = PredictorConfig()
    part = advance_session(cfg, None, AccessRecord(0.0, "s", "A"), offset=4)
    assert part is not None
    assert part.offset == 4
    assert advance_session(cfg, part, AccessRecord(1.0, "s", "B", status=404), offset=5) is part
    assert advance_session(cfg, None, AccessRecord(1.0, "s", "B", status=404)) is None


def test_expiry_follows_the_session_ttl() -> None:
    cfg = PredictorConfig(session_ttl_s=100)
    part = SessionPart("A", 50.0, None)
    assert not part.expired(cfg, 150.0)
    assert part.expired(cfg, 150.1)


def test_global_helpers_refuse_a_state_with_sessions() -> None:
    state, _ = step(new_state(), AccessRecord(0.0, "s", "A"))
    with pytest.raises(ValueError, match="without sessions"):
        global_to_dict(state)
    with pytest.raises(ValueError, match="without sessions"):
        step_with_session(state, AccessRecord(1.0, "s", "B"), None)
