"""The Faust predictor (``alb predictor``): the pure core on Kafka, its state split in two.

Theory of operation
-------------------
The core's state is one snapshot (:mod:`predictor.core.machine`), ~4 MB at 14k
sessions: far too big to write per event. Almost all of it is sessions, and a session
is only ever touched by its own records, which Kafka keeps together (the access log is
keyed by session). So the state is split (:mod:`predictor.core.partition`) and run as
two stages, each an agent with concurrency 1::

    alb.access-log.v1 (6 p, key=session) ──▶ sessions agent ── table "sessions"
    alb.model-state.v1 (key=model) ────────▶ model-state agent    (key session, 6 p)
                                                  │ observations
                                                  ▼
    leader timer ── tick ──▶ <app_id>-observations (internal, 1 partition)
                                                  │
                                                  ▼
                                   global agent ── table "global" (one key, 1 p)
                                                  │
          alb.prefetch.v1 / alb.warm-cache.v1 / alb.model-hints.v1 (key=model)

1. **Sessions agent** (:class:`~predictor.stream.stages.SessionStage`): per record,
   reads the session's part from the ``sessions`` table (its last model and time, its
   own transition window, the offset of the last record folded in), makes an
   observation (the record plus the part *before* it) for the internal topic (a
   batch's observations go out as JSON arrays of ``bundle_size``), and stores the new
   part. The table is co-partitioned with the access log (Faust writes
   a key's changelog to the partition of the record being processed, and every record
   of a session is on one partition), so whichever worker owns access-log partition
   ``p`` owns exactly the sessions of ``p``. Expired sessions (``session_ttl_s``) are
   deleted by a sweep inside the stream, per partition, every ``session_sweep_s``.
2. **Model-state agent**: forwards each model-state event as an observation.
3. **Leader timer**: one worker in the group (Faust's leader) sends a tick observation
   every ``tick_interval_s``; ticks go through the same ordered topic, so they are
   replayed like everything else.
4. **Global agent** (:class:`~predictor.stream.stages.GlobalStage`): the one owner of
   the internal topic's single partition folds observations into the sessionless core
   state with the unchanged ``step`` / ``tick`` (the record's session is put in for
   the call; :func:`~predictor.core.partition.step_with_session`), drops prefetches of
   models the latest model-state events show loaded and outputs that expired already,
   and publishes prefetch / warm-cache events keyed by model; on each tick also a
   model hint per model (:mod:`predictor.core.advice`: P(reuse) and the keep-alive,
   for bridges that run with Kafka; ``bridge.events.hints``). Its state (global
   windows, idle histograms, prompt heavy hitters, gate, hints, loaded models) is one
   zlib-compressed JSON value under one key of the ``global`` table (a few kB to tens
   of kB; written once per batch, not per event). One key means one changelog record:
   a restore never mixes two points in time.

For records in time order this decides exactly what the monolithic core decides
(``tests/predictor/test_partition.py``).

Commit order (STYLE 7) and what a crash costs. Both stages work in batches
(``take_events``: at most ``batch_max`` records or ``batch_s`` seconds): a batch's
outputs are sent and *acknowledged* first, then its state is written to the table,
and only then are its records acked, so Faust's next commit (which flushes the
producer — changelog included — before it commits offsets) can cover them.

* Crash after the outputs, before the state: the batch is delivered again and
  recomputed from the same state; the sessions agent re-sends the same observations
  and the global agent skips them (``applied``: per source partition, the last offset
  folded in); the global agent's own outputs get the same ``event_id`` (a UUIDv5 of the
  internal topic's offset and the output's index), so downstream consumers, idempotent
  on ``event_id``, drop the copies.
* Crash after the state, before the commit: the batch is delivered again; the session
  part's ``offset`` and the global state's ``input_offset`` show it was folded in
  already, and its outputs were acknowledged before the state was written: nothing is
  counted twice, nothing is lost.

Rebalances. A revoked partition stops being processed after Faust commits what was
acked; its new owner recovers the table partition from the changelog (RocksDB: from
its local copy plus the changelog's tail) before it reads the partition from the
committed offset, so it starts from exactly the state those offsets imply. The global
agent's in-memory state is dropped on every revocation and reloaded from the table at
the next batch. Ticks keep coming whichever worker leads. Once a rebalance is over the
input is sought to the committed offsets a second time (:class:`_App`: Faust can drop
records fetched while it finishes recovery); what that fetches twice is skipped as above.

Restart: the same recovery. With ``memory://`` every start replays the compacted
changelogs (sessions: one record per live session; global: one record); with
``rocksdb://`` (rocksdict) only their tail.

Limits: session parts trail the global clock for records more than a window late (see
:mod:`predictor.core.partition`); ``max_sessions`` is not enforced (sessions expire by
``session_ttl_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
import weakref
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import faust
import faust.streams
import orjson

from ingest.messages import Topic
from predictor.core.partition import SessionPart
from predictor.stream.preflight import KafkaUnreachable, check_kafka
from predictor.stream.settings import PredictorSettings
from predictor.stream.stages import (
    GlobalStage,
    Position,
    PublishedEvent,
    SessionStage,
    bundle,
    tick_observation,
)

__all__ = ["GLOBAL_KEY", "Streams", "build_app", "observations_topic", "run_worker"]

log = logging.getLogger(__name__)
GLOBAL_KEY = b"global"


def observations_topic(app_id: str) -> str:
    """Name of the internal topic between the stages."""
    return f"{app_id}-observations"


@contextlib.contextmanager
def _processing(event: Any) -> Iterator[None]:
    """Make ``event`` the current event, so a table write lands in its partition.

    A ``take_events`` batch is handled outside the per-event context that Faust sets
    while iterating; table writes (changelog partition, RocksDB partition) read it.
    """
    var = faust.streams._current_event
    token = var.set(weakref.ref(event))
    try:
        yield
    finally:
        var.reset(token)


class Streams:
    """The Faust-facing half: batches in, sends, table writes, in the commit order."""

    def __init__(self, settings: PredictorSettings, app: Any) -> None:
        cfg = settings.predictor_config()
        self.settings = settings
        self.app = app
        self.sessions_stage = SessionStage(cfg)
        self.global_stage: GlobalStage | None = None
        self.config = cfg
        self._last_sweep: dict[int, float] = {}

        raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes}
        self.access = app.topic(settings.access_log_topic, **raw)
        self.model_state = app.topic(settings.model_state_topic, **raw)
        self.observations = app.topic(
            observations_topic(settings.app_id), partitions=1, internal=True, **raw
        )
        self.prefetch = app.topic(settings.prefetch_topic, **raw)
        self.warm_cache = app.topic(settings.warm_cache_topic, **raw)
        self.model_hints = app.topic(settings.model_hints_topic, **raw)
        self._out_topics = {
            Topic.PREFETCH: self.prefetch,
            Topic.WARM_CACHE: self.warm_cache,
            Topic.MODEL_HINTS: self.model_hints,
        }
        self.sessions = app.Table(
            "sessions", partitions=settings.access_log_partitions, help="session parts", **raw
        )
        self.global_table = app.Table("global", partitions=1, help="global core state", **raw)

    # --- stage 1 --------------------------------------------------------------------

    async def sessions_agent(self, stream: Any) -> AsyncIterator[None]:
        async for events in stream.take_events(self.settings.batch_max, self.settings.batch_s):
            await self.on_access_batch(events)
            yield None

    async def on_access_batch(self, events: Sequence[Any]) -> None:
        stage = self.sessions_stage
        writes: dict[str, tuple[Any, SessionPart]] = {}
        observations: list[bytes] = []
        for event in events:
            msg = event.message
            key = msg.key.decode() if msg.key else None
            if key is not None and key in writes:
                part: SessionPart | None = writes[key][1]
            else:
                part = self._load_part(key)
            pos = Position(msg.topic, msg.partition, msg.offset)
            new, obs = stage.access(pos, key, msg.value or b"", part)
            if obs is not None:
                observations.append(obs)
            if new is not None and key:
                writes[key] = (event, new)
        pending = [
            await self._send(self.observations, GLOBAL_KEY, message)
            for message in bundle(observations, self.settings.bundle_size)
        ]
        await _acked(pending)  # 1. outputs flushed and acknowledged
        for key, (event, new) in writes.items():  # 2. then state
            value = {**new.to_dict(), "p": event.message.partition}
            with _processing(event):
                self.sessions[key.encode()] = orjson.dumps(value)
        self._sweep(events)
        # 3. offsets: take_events acks the batch when this returns; Faust commits later.

    def _load_part(self, key: str | None) -> SessionPart | None:
        if not key:
            return None
        raw = self.sessions.get(key.encode())
        return SessionPart.from_dict(orjson.loads(raw)) if raw is not None else None

    def _sweep(self, events: Sequence[Any]) -> None:
        """Delete expired sessions of the batch's partitions (in their partition's context)."""
        now = time.time()
        by_partition = {e.message.partition: e for e in events}
        due = [
            p
            for p in by_partition
            if now - self._last_sweep.get(p, 0.0) >= self.settings.session_sweep_s
        ]
        if not due:
            return
        horizon = now - self.config.session_ttl_s
        doomed: dict[int, list[bytes]] = {p: [] for p in due}
        for key, raw in list(self.sessions.items()):
            data = orjson.loads(raw)
            partition = data.get("p")
            if partition in doomed and float(data["t"]) < horizon:
                doomed[partition].append(key)
        for partition, keys in doomed.items():
            self._last_sweep[partition] = now
            with _processing(by_partition[partition]):
                for key in keys:
                    del self.sessions[key]

    async def model_state_agent(self, stream: Any) -> AsyncIterator[None]:
        async for events in stream.take_events(self.settings.batch_max, self.settings.batch_s):
            pending = []
            for event in events:
                msg = event.message
                pos = Position(msg.topic, msg.partition, msg.offset)
                obs = self.sessions_stage.model_state(pos, msg.value or b"")
                if obs is not None:
                    pending.append(await self._send(self.observations, GLOBAL_KEY, obs))
            await _acked(pending)
            yield None

    async def send_tick(self) -> None:
        await self.observations.send(key=GLOBAL_KEY, value=tick_observation(time.time()))

    # --- stage 2 --------------------------------------------------------------------

    async def global_agent(self, stream: Any) -> AsyncIterator[None]:
        async for events in stream.take_events(self.settings.batch_max, self.settings.batch_s):
            await self.on_observation_batch(events)
            yield None

    def _global(self) -> GlobalStage:
        if self.global_stage is None:
            self.global_stage = GlobalStage.restore(
                self.global_table.get(GLOBAL_KEY),
                self.config,
                producer=self.settings.producer,
                namespace=self.settings.app_id,
                hint_ttl_s=self.settings.model_hints_ttl_s,
            )
        return self.global_stage

    async def on_observation_batch(self, events: Sequence[Any]) -> None:
        stage = self._global()
        now = datetime.now(UTC)
        out: list[PublishedEvent] = []
        for event in events:
            out.extend(stage.apply(event.message.offset, event.message.value or b"", now))
        pending = []
        for ev in out:
            topic = self._out_topics[ev.TOPIC]
            pending.append(await self._send(topic, ev.model.encode(), ev.to_json()))
        await _acked(pending)  # 1. outputs acknowledged
        with _processing(events[-1]):  # 2. then state (one record, all of it)
            self.global_table[GLOBAL_KEY] = stage.snapshot()

    async def on_revoked(self, *args: Any, **kwargs: Any) -> None:
        """Forget the in-memory global state: the table is the truth after a rebalance."""
        self.global_stage = None

    # --- plumbing -------------------------------------------------------------------

    async def _send(self, topic: Any, key: bytes, value: bytes) -> Any:
        # force=True: publish now (not attached to the source offset's commit), so the
        # batch can wait for the acknowledgement before it writes its state.
        return await topic.send(key=key, value=value, force=True)


async def _acked(pending: list[Any]) -> None:
    for fut in pending:
        await fut


class _App(faust.App):
    """``faust.App`` that re-reads its input from the committed offsets once a
    rebalance (a start included) has finished.

    Why (faust-streaming/faust#596, still open): at the end of table recovery Faust
    resumes the input partitions and seeks them to the committed offsets, *then*
    resumes flow control, which empties every agent queue. Records fetched in between
    (those already in the log when the worker starts: written while it was down) are
    dropped, the consumer's position is past them, and the partition's commits stall
    behind the gap until the next restart. Seeking to the committed offsets again after
    the flow is resumed fetches them again. Anything fetched twice is skipped as a
    replay: session parts keep the offset of their last record and the global stage
    the last offset applied per source partition (module docstring).
    """

    _reseek: asyncio.Future[None] | None = None

    def on_rebalance_end(self) -> None:
        super().on_rebalance_end()
        self._reseek = asyncio.ensure_future(self._seek_committed(self.consumer_generation_id))

    async def _seek_committed(self, generation: int) -> None:
        if self.rebalancing or self.consumer_generation_id != generation:
            return  # a new rebalance seeks (and then comes back here) itself
        try:
            await self.consumer.perform_seek()
        except Exception:  # the next rebalance seeks again; nothing else to do here
            log.warning("seek to committed offsets after the rebalance failed", exc_info=True)


def build_app(settings: PredictorSettings) -> tuple[faust.App, Streams]:
    """The Faust app for ``settings`` (agents, tables, timer), not started, and its
    :class:`Streams` (the stages and their counters)."""
    if settings.store.startswith("rocksdb"):
        try:
            import rocksdict  # noqa: F401, PLC0415
        except ImportError as exc:
            raise RuntimeError(
                "ALB_PREDICTOR_STORE=rocksdb:// needs rocksdict (pip install rocksdict); "
                "or set ALB_PREDICTOR_STORE=memory://"
            ) from exc
    app = _App(
        settings.app_id,
        broker=[f"kafka://{s.strip()}" for s in settings.bootstrap_servers.split(",")],
        store=settings.store,
        datadir=str(settings.datadir),
        topic_replication_factor=settings.replication_factor,
        topic_partitions=1,
        producer_acks=-1,
        broker_commit_interval=settings.commit_interval_s,
        web_enabled=settings.web_enabled,
        web_port=settings.web_port,
        table_standby_replicas=0 if settings.store.startswith("memory") else 1,
    )
    shell = Streams(settings, app)
    app.agent(shell.access, name="sessions", concurrency=1)(shell.sessions_agent)
    app.agent(shell.model_state, name="model-state", concurrency=1)(shell.model_state_agent)
    app.agent(shell.observations, name="global", concurrency=1)(shell.global_agent)
    app.timer(settings.tick_interval_s, on_leader=True, name="tick")(shell.send_tick)
    app.on_partitions_revoked.connect(shell.on_revoked)
    return app, shell


def run_worker(settings: PredictorSettings, *, loglevel: str = "info") -> None:
    """Run a worker until SIGTERM / SIGINT (Faust drains and commits on the way out).

    Kafka is asked first (:func:`~predictor.stream.preflight.check_kafka`): when no
    bootstrap server answers, one line goes to stderr and the process exits 2.
    """
    try:
        asyncio.run(check_kafka(settings.bootstrap_servers, timeout_s=settings.preflight_timeout_s))
    except KafkaUnreachable as exc:
        print(f"alb predictor: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    app, _streams = build_app(settings)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
