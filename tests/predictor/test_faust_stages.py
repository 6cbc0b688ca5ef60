"""The Faust app's two stages without Faust: same decisions as the core, idempotent replays."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from predictor.codec import from_access_log
from predictor.core import Prefetch, WarmCache, new_state, step
from predictor.core.config import PredictorConfig
from predictor.core.partition import SessionPart
from predictor.stream.settings import SettingsError, load_settings
from predictor.stream.stages import (
    GlobalStage,
    Position,
    PublishedEvent,
    SessionStage,
    bundle,
    tick_observation,
)
from tests.predictor._access import a_then_b, access_event, model_state_event

ACCESS = "alb.access-log.v1"
CFG = PredictorConfig(cooldown_s=0)
LATER = datetime(2026, 1, 1, tzinfo=UTC)  # "now" for the stale check: before every expiry
T0 = LATER.timestamp() + 60.0


class Pipeline:
    """Both stages, a dict for the session table, a list for the internal topic."""

    def __init__(self, cfg: PredictorConfig = CFG, partitions: int = 3) -> None:
        self.cfg = cfg
        self.partitions = partitions
        self.sessions = SessionStage(cfg)
        self.table: dict[str, SessionPart] = {}
        self.offsets = [0] * partitions
        self.observations: list[bytes] = []
        self.glob = GlobalStage(cfg, producer="test", namespace="t")
        self.applied = 0

    def feed(self, value: bytes, key: str | None) -> None:
        partition = hash(key) % self.partitions if key else 0
        pos = Position(ACCESS, partition, self.offsets[partition])
        self.offsets[partition] += 1
        self.redeliver(pos, value, key)

    def redeliver(self, pos: Position, value: bytes, key: str | None) -> None:
        new, obs = self.sessions.access(pos, key, value, self.table.get(key or ""))
        if obs is not None:
            self.observations.append(obs)
        if new is not None and key:
            self.table[key] = new

    def drain(self, now: datetime = LATER) -> list[PublishedEvent]:
        out = []
        while self.applied < len(self.observations):
            out.extend(self.glob.apply(self.applied, self.observations[self.applied], now))
            self.applied += 1
        return out


def test_the_stages_decide_what_the_core_decides() -> None:
    events = [*a_then_b(T0, 30), access_event("probe", "A", T0 + 100, system_prompt_hash="c" * 64)]
    pipe = Pipeline()
    published = []
    for ev in events:
        pipe.feed(ev.to_json(), ev.key())
        published.extend(pipe.drain())
    state = new_state(CFG)
    expected: list[Prefetch | WarmCache] = []
    for ev in events:
        state, out = step(state, from_access_log(ev))
        expected.extend(o for o in out if isinstance(o, Prefetch | WarmCache))
    assert [(e.model, e.confidence, e.reason) for e in published] == [
        (o.model, min(1.0, o.confidence), o.reason) for o in expected
    ]
    assert published
    assert all(e.model == "B" for e in published)
    assert all(e.producer == "test" for e in published)


def test_replays_change_nothing_and_recomputed_outputs_keep_their_ids() -> None:
    pipe = Pipeline()
    for ev in a_then_b(T0, 20):
        pipe.feed(ev.to_json(), ev.key())
    pipe.drain()
    snapshot = pipe.glob.snapshot()
    probe = access_event("probe", "A", T0 + 100)
    pipe.feed(probe.to_json(), probe.key())
    first = pipe.drain()
    assert [e.model for e in first] == ["B"]

    # stage 1 crashed after sending, before storing the part: it sends the same
    # observation again (a new offset of the internal topic): stage 2 skips it
    part = pipe.table.pop("probe")
    pipe.redeliver(Position(ACCESS, hash("probe") % 3, part.offset), probe.to_json(), "probe")
    assert pipe.drain() == []
    assert pipe.glob.duplicates == 1

    # stage 1 crashed after storing the part: the record is recognised and dropped
    before = len(pipe.observations)
    pipe.redeliver(Position(ACCESS, hash("probe") % 3, part.offset), probe.to_json(), "probe")
    assert len(pipe.observations) == before
    assert pipe.sessions.replayed == 1

    # stage 2 crashed after publishing, before its snapshot: same input, same ids
    again = GlobalStage.restore(snapshot, CFG, producer="test", namespace="t")
    replayed = again.apply(pipe.applied - 2, pipe.observations[-2], LATER)
    assert [e.event_id for e in replayed] == [e.event_id for e in first]
    # and a delivery of what the snapshot holds already is a no-op
    assert again.apply(again.input_offset, pipe.observations[0], LATER) == []


def test_loaded_models_are_not_prefetched_until_unloaded() -> None:
    pipe = Pipeline()
    for ev in a_then_b(T0, 20):
        pipe.feed(ev.to_json(), ev.key())
    state_pos = Position("alb.model-state.v1", 0, 0)
    pipe.observations.append(
        pipe.sessions.model_state(state_pos, model_state_event("B", "loaded").to_json()) or b""
    )
    pipe.drain()
    probe = access_event("p1", "A", T0 + 100)
    pipe.feed(probe.to_json(), probe.key())
    assert pipe.drain() == []
    assert pipe.glob.skipped_loaded == 1
    gone = model_state_event("B", "evicted").to_json()
    gone_pos = Position("alb.model-state.v1", 0, 1)
    pipe.observations.append(pipe.sessions.model_state(gone_pos, gone) or b"")
    probe = access_event("p2", "A", T0 + 101)
    pipe.feed(probe.to_json(), probe.key())
    assert [e.model for e in pipe.drain()] == ["B"]
    restored = GlobalStage.restore(pipe.glob.snapshot(), CFG, producer="x", namespace="t")
    assert restored.loaded == {}  # nothing loaded: nothing stored


def test_expired_outputs_are_not_published() -> None:
    pipe = Pipeline()
    for ev in [*a_then_b(T0, 20), access_event("probe", "A", T0 + 100)]:
        pipe.feed(ev.to_json(), ev.key())
    late = datetime.fromtimestamp(T0 + 100 + 2 + CFG.prefetch_slack_s + 1, tz=UTC)
    assert pipe.drain(late) == []
    assert pipe.glob.skipped_stale > 0


def test_ticks_and_bad_records() -> None:
    pipe = Pipeline()
    pipe.feed(b"not json", "s")
    pipe.feed(b'{"model": "A"}', "s")
    assert pipe.sessions.rejected == 2
    assert pipe.sessions.model_state(Position("x", 0, 0), b"[]") is None
    pipe.observations.append(tick_observation(T0))
    pipe.drain()
    assert pipe.glob.state.now == T0
    assert pipe.glob.input_offset == 0


def test_records_without_their_session_key_keep_no_part() -> None:
    pipe = Pipeline()
    ev = access_event("s1", "A", T0)
    pipe.feed(ev.to_json(), None)
    pipe.feed(ev.to_json(), "someone-else")
    pipe.feed(access_event(None, "A", T0).to_json(), None)
    assert pipe.table == {}
    assert len(pipe.observations) == 3


def test_an_expired_session_starts_afresh() -> None:
    cfg = PredictorConfig(session_ttl_s=10)
    stage = SessionStage(cfg)
    old = SessionPart("A", T0 - 11, None, 0)
    new, _ = stage.access(Position(ACCESS, 0, 1), "s", access_event("s", "B", T0).to_json(), old)
    assert new is not None
    assert new.window is not None
    assert new.window["buckets"] == []  # no A -> B transition from a forgotten session


def test_settings_name_the_variable() -> None:
    s = load_settings({"ALB_PREDICTOR_CONFIG__WINDOW_MINUTES": "5", "ALB_PREDICTOR_STORE": "x"})
    assert s.predictor_config() == PredictorConfig.recommended().replace(window_minutes=5)
    assert load_settings({}).predictor_config() == PredictorConfig.recommended()
    assert s.store == "x"
    with pytest.raises(SettingsError, match="ALB_PREDICTOR_CONFIG: unknown predictor settings"):
        load_settings({"ALB_PREDICTOR_CONFIG": '{"windw": 1}'})
    with pytest.raises(SettingsError, match="ALB_PREDICTOR_BATCH_MAX"):
        load_settings({"ALB_PREDICTOR_BATCH_MAX": "0"})
    with pytest.raises(SettingsError, match="ALB_PREDICTOR_CONFIG: window"):
        load_settings({"ALB_PREDICTOR_CONFIG__WINDOW": "hourly"})


def test_bundled_observations_decide_the_same() -> None:
    pipe = Pipeline()
    for ev in [*a_then_b(T0, 30), access_event("probe", "A", T0 + 100)]:
        pipe.feed(ev.to_json(), ev.key())
    one_by_one = [(e.model, e.confidence) for e in pipe.drain()]
    stage = GlobalStage(CFG, producer="test", namespace="t")
    bundled = []
    for offset, message in enumerate(bundle(pipe.observations, 7)):
        bundled.extend(stage.apply(offset, message, LATER))
    assert [(e.model, e.confidence) for e in bundled] == one_by_one
    assert len({e.event_id for e in bundled}) == len(bundled)
    # a bundle sent again (stage 1 replayed its batch) is recognised entry by entry
    assert stage.apply(10_000, bundle(pipe.observations, 1000)[0], LATER) == []


def test_every_tick_publishes_a_model_hint_per_model_with_the_bridges_rule() -> None:
    from ingest.contracts import validation_errors  # noqa: PLC0415
    from ingest.messages import ModelHintEvent  # noqa: PLC0415
    from predictor.core.advice import estimate_reuse, keep_alive_after  # noqa: PLC0415

    cfg = PredictorConfig.recommended().replace(cooldown_s=0, unload_below=0.2)
    pipe = Pipeline(cfg)
    pipe.glob.hint_ttl_s = 30.0
    for ev in a_then_b(T0, 20):
        pipe.feed(ev.to_json(), ev.key())
    assert not any(isinstance(e, ModelHintEvent) for e in pipe.drain())  # only ticks send them
    tick_at = T0 + 400.0
    pipe.observations.append(tick_observation(tick_at))
    hints = [e for e in pipe.drain() if isinstance(e, ModelHintEvent)]
    assert [h.model for h in hints] == ["A", "B", "C"]  # a_then_b: A, then B or C
    state = pipe.glob.state
    for h in hints:
        assert validation_errors(h.TOPIC.value, h.model_dump(mode="json")) == []
        assert h.reuse_probability == estimate_reuse(state, h.model, tick_at)
        assert h.keep_alive_s == keep_alive_after(state, h.model, tick_at)
        assert h.prefetched_keep_alive_s == keep_alive_after(
            state, h.model, tick_at, prefetched=True
        )
        assert h.expires_at.timestamp() == pytest.approx(tick_at + 30.0)
        assert h.key() == h.model
    assert hints[0].reuse_probability is not None
    # a tick replayed after a crash publishes the same ids; a stale one publishes nothing
    again = GlobalStage.restore(None, cfg, producer="test", namespace="t", hint_ttl_s=30.0)
    for offset, obs in enumerate(pipe.observations[:-1]):
        again.apply(offset, obs, LATER)
    replayed = again.apply(len(pipe.observations) - 1, pipe.observations[-1], LATER)
    assert [e.event_id for e in replayed if isinstance(e, ModelHintEvent)] == [
        h.event_id for h in hints
    ]
    late = datetime.fromtimestamp(tick_at + 31.0, tz=UTC)
    stale = GlobalStage.restore(None, cfg, producer="test", namespace="t", hint_ttl_s=30.0)
    for offset, obs in enumerate(pipe.observations):
        out = stale.apply(offset, obs, late)
    assert not any(isinstance(e, ModelHintEvent) for e in out)
    assert stale.skipped_stale >= 2
