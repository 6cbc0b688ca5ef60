"""The two stages of the Faust predictor, without Faust: bytes in, bytes and events out.

:class:`SessionStage` turns one access-log record and its session's stored part into
the session's new part and an *observation* for the global stage; model-state records
become observations as they are. :class:`GlobalStage` folds observations (and ticks) into
the sessionless core state and returns the prefetch / warm-cache events to publish;
:meth:`GlobalStage.snapshot` is its stored form. :mod:`predictor.stream.app` wires both
to Kafka; the design (why this split is correct under rebalances and restarts) is in
its docstring.

Observations are compact JSON on the app's single-partition internal topic::

    {"k": "a", "src": "alb.access-log.v1:3", "o": 812, "r": {record}, "s": {part} | null}
    {"k": "m", "src": "alb.model-state.v1:0", "o": 17, "model": "m", "daemon": "d",
     "state": "loaded"}
    {"k": "t", "ts": 1767225600.0}

``s`` is the session's part *before* the record (what :func:`step_with_session` needs).
The sessions agent sends a batch's observations as JSON arrays (:func:`bundle`): one
internal message per ``bundle_size`` records, which is most of the Faust app's speed.
"""

from __future__ import annotations

import dataclasses
import uuid
import zlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from pydantic import ValidationError

from ingest.messages import (
    AccessLogEvent,
    ModelHintEvent,
    ModelStateEvent,
    PrefetchEvent,
    WarmCacheEvent,
)
from predictor.codec import from_access_log, model_hint_event, prefetch_event, warm_cache_event
from predictor.core import Output, Prefetch, WarmCache, new_state, tick
from predictor.core.advice import ModelHint, model_hints
from predictor.core.config import PredictorConfig
from predictor.core.partition import (
    SessionPart,
    advance_session,
    global_from_dict,
    global_to_dict,
    step_with_session,
)
from predictor.core.records import AccessRecord, RecordError

__all__ = [
    "GlobalStage",
    "Position",
    "PublishedEvent",
    "SessionStage",
    "bundle",
    "tick_observation",
]

SNAPSHOT_VERSION = 1
_EVENT_NS = uuid.UUID("6f1c1f0e-5a7e-4d38-9b49-1d1f3a0c7b21")
PublishedEvent = PrefetchEvent | WarmCacheEvent | ModelHintEvent


@dataclass(frozen=True, slots=True)
class Position:
    """Where a record sits in the log."""

    topic: str
    partition: int
    offset: int

    @property
    def source(self) -> str:
        """``topic:partition``: the unit a watermark is kept for."""
        return f"{self.topic}:{self.partition}"


def _parse(cls: type[AccessLogEvent] | type[ModelStateEvent], value: bytes) -> Any:
    data = orjson.loads(value)
    if not isinstance(data, dict):
        raise ValueError("an event must be a JSON object")
    return cls.model_validate({k: v for k, v in data.items() if k in cls.model_fields})


@dataclass(slots=True)
class SessionStage:
    """Stage 1 (runs per access-log partition): session parts and observations."""

    config: PredictorConfig
    rejected: int = 0
    """Records that were not valid events (logged and skipped by the shell)."""
    replayed: int = 0
    """Records already folded into their session's part (a replay after a crash)."""

    def access(
        self, pos: Position, key: str | None, value: bytes, part: SessionPart | None
    ) -> tuple[SessionPart | None, bytes | None]:
        """``(new part to store or None, observation to send or None)`` for one record.

        ``key`` is the record's Kafka key, ``part`` what the session table holds for
        it. A record whose key is not its session (or has none) is observed without a
        session part: the table is only correct for keys that pick the partition.
        """
        try:
            record = from_access_log(_parse(AccessLogEvent, value))
        except (ValueError, ValidationError, RecordError):
            self.rejected += 1
            return None, None
        if not record.counts_as_demand:
            return None, None
        keyed = bool(key) and key == record.session
        if keyed and part is not None and pos.offset <= part.offset:
            self.replayed += 1
            return None, None
        before = part if keyed and part is not None else None
        if before is not None and before.expired(self.config, record.ts):
            before = None
        obs = {
            "k": "a",
            "src": pos.source,
            "o": pos.offset,
            "r": dataclasses.asdict(record),
            "s": before.to_dict() if before is not None else None,
        }
        new = advance_session(self.config, before, record, offset=pos.offset) if keyed else None
        return new, orjson.dumps(obs)

    def model_state(self, pos: Position, value: bytes) -> bytes | None:
        """The observation for one model-state record (None: not a valid event)."""
        try:
            event = _parse(ModelStateEvent, value)
        except (ValueError, ValidationError):
            self.rejected += 1
            return None
        obs = {
            "k": "m",
            "src": pos.source,
            "o": pos.offset,
            "model": event.model,
            "daemon": event.daemon,
            "state": event.state,
        }
        return orjson.dumps(obs)


def bundle(observations: list[bytes], size: int) -> list[bytes]:
    """Observations as JSON arrays of at most ``size`` (one internal message each)."""
    return [
        b"[" + b",".join(observations[i : i + size]) + b"]"
        for i in range(0, len(observations), size)
    ]


def tick_observation(now: float) -> bytes:
    """The observation the leader's timer sends."""
    return orjson.dumps({"k": "t", "ts": now})


class GlobalStage:
    """Stage 2 (one owner at a time): the sessionless core state and what it decides.

    Idempotent: ``input_offset`` (the internal topic's last applied offset) and
    ``applied`` (per source partition, the last applied record's offset) make a second
    delivery of anything already folded in a no-op, and event ids are derived from the
    input offset, so outputs recomputed after a crash carry the ids they had.
    """

    def __init__(
        self, config: PredictorConfig, *, producer: str, namespace: str, hint_ttl_s: float = 0.0
    ) -> None:
        self.config = config
        self.producer = producer
        self.namespace = namespace
        self.hint_ttl_s = hint_ttl_s
        """> 0: every tick also yields a model hint per model, valid this long."""
        self.state = new_state(config)
        self.input_offset = -1
        self.applied: dict[str, int] = {}
        self.loaded: dict[str, set[str]] = {}
        """model -> daemons where the latest model-state event says it is loaded."""
        self.skipped_loaded = 0
        self.skipped_stale = 0
        self.duplicates = 0

    # --- stored form ----------------------------------------------------------------

    def snapshot(self) -> bytes:
        """Everything, compressed: one table value, written atomically."""
        data = {
            "v": SNAPSHOT_VERSION,
            "core": global_to_dict(self.state),
            "input_offset": self.input_offset,
            "applied": self.applied,
            "loaded": {m: sorted(d) for m, d in self.loaded.items() if d},
        }
        return zlib.compress(orjson.dumps(data), 1)

    @classmethod
    def restore(
        cls,
        blob: bytes | None,
        config: PredictorConfig,
        *,
        producer: str,
        namespace: str,
        hint_ttl_s: float = 0.0,
    ) -> GlobalStage:
        """A stage from :meth:`snapshot` (a fresh one for None)."""
        stage = cls(config, producer=producer, namespace=namespace, hint_ttl_s=hint_ttl_s)
        if blob is None:
            return stage
        data = orjson.loads(zlib.decompress(blob))
        if data.get("v") != SNAPSHOT_VERSION:
            raise ValueError(f"snapshot version {data.get('v')!r} is not {SNAPSHOT_VERSION}")
        stage.state = global_from_dict(data["core"], config)
        stage.input_offset = int(data["input_offset"])
        stage.applied = {str(k): int(v) for k, v in data["applied"].items()}
        stage.loaded = {str(m): set(d) for m, d in data["loaded"].items()}
        return stage

    # --- processing -----------------------------------------------------------------

    def apply(self, offset: int, value: bytes, now: datetime) -> list[PublishedEvent]:
        """Fold in the message at ``offset`` of the internal topic (one observation or a
        JSON array of them); the events to publish (``now`` is the shell's clock:
        envelope ``ts`` and the staleness check)."""
        if offset <= self.input_offset:
            self.duplicates += 1
            return []
        self.input_offset = offset
        data = orjson.loads(value)
        outputs: list[Output | ModelHint] = []
        for obs in data if isinstance(data, list) else [data]:
            outputs.extend(self._fold(obs))
        return self._events(offset, outputs, now)

    def _fold(self, obs: dict[str, Any]) -> list[Output | ModelHint]:
        kind = obs.get("k")
        outputs: list[Output]
        if kind == "t":
            ts = float(obs["ts"])
            self.state, outputs = tick(self.state, ts)
            if self.hint_ttl_s > 0:
                return [*outputs, *model_hints(self.state, ts)]
            return list(outputs)
        if kind not in ("a", "m"):
            return []
        src, src_offset = str(obs["src"]), int(obs["o"])
        if src_offset <= self.applied.get(src, -1):
            self.duplicates += 1
            return []
        self.applied[src] = src_offset
        if kind == "m":
            self._model_state(obs)
            return []
        record = AccessRecord(**obs["r"])
        part = SessionPart.from_dict(obs["s"]) if obs["s"] is not None else None
        self.state, outputs = step_with_session(self.state, record, part)
        return list(outputs)

    def _model_state(self, obs: dict[str, Any]) -> None:
        daemons = self.loaded.setdefault(str(obs["model"]), set())
        if obs["state"] == "loaded":
            daemons.add(str(obs["daemon"]))
        else:
            daemons.discard(str(obs["daemon"]))

    def _events(
        self, offset: int, outputs: list[Output | ModelHint], now: datetime
    ) -> list[PublishedEvent]:
        events: list[PublishedEvent] = []
        horizon = now.timestamp()
        for index, out in enumerate(outputs):
            event: PublishedEvent
            if isinstance(out, ModelHint):
                if out.at + self.hint_ttl_s <= horizon:
                    self.skipped_stale += 1
                    continue
                event_id = uuid.uuid5(_EVENT_NS, f"{self.namespace}:{offset}:{index}")
                event = model_hint_event(out, self.hint_ttl_s, producer=self.producer, ts=now)
                events.append(event.model_copy(update={"event_id": event_id}))
                continue
            if not isinstance(out, Prefetch | WarmCache):
                continue  # the core's own KeepAliveHint / ReuseHint: ModelHint carries them
            if self.loaded.get(out.model):
                self.skipped_loaded += 1
                continue
            if out.expires_at <= horizon:
                self.skipped_stale += 1
                continue
            event_id = uuid.uuid5(_EVENT_NS, f"{self.namespace}:{offset}:{index}")
            event = (
                prefetch_event(out, producer=self.producer, ts=now)
                if isinstance(out, Prefetch)
                else warm_cache_event(out, producer=self.producer, ts=now)
            )
            events.append(event.model_copy(update={"event_id": event_id}))
        return events
