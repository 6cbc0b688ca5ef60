"""Events per second for the Faust predictor on a real broker, beside the pure core.

One workload, three ways, each repeated ``--repeats`` times in interleaved order:

* **core**: ``predictor.core.step`` over the records in one thread (no I/O);
* **split, in process**: the Faust app's two stages (:mod:`predictor.stream.stages`)
  over the same records' JSON, without Kafka: session parts and observations are
  encoded, snapshots written once per 500 records (the cost of the split itself);
* **faust app**: a real worker subprocess (``python -m predictor.stream``, memory
  store, fresh app id each run) on a real Kafka broker. The access log is produced
  before the worker starts; the clock runs from the first observation the worker
  writes to the moment the group has committed every access-log record and the
  global stage every observation (commit interval 0.1 s), so start-up is excluded
  and the whole pipeline (both stages, the session table's changelog, the
  snapshots, the published events) is included.

Workload: a seeded synthetic trace (``predictor.traces.synth``) of about
``--requests`` requests, shifted so that it ends now (its prefetches are live, not
stale), as access-log events keyed by session on a 6-partition topic.

    .venv/bin/python -m bench.predictor_faust                   # starts its own broker
    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 .venv/bin/python -m bench.predictor_faust
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from ingest.messages import AccessLogEvent
from ingest.topics import TopicSpec, ensure_topics
from predictor.codec import from_access_log
from predictor.core import new_state, step
from predictor.core.config import PredictorConfig
from predictor.core.partition import SessionPart
from predictor.stream.app import observations_topic
from predictor.stream.stages import GlobalStage, Position, SessionStage
from predictor.traces.format import to_access_records
from predictor.traces.synth import SynthParams, synthesize

REPO = Path(__file__).resolve().parents[1]
PARTITIONS = 6


def _events(requests: int, seed: int) -> list[tuple[str, bytes]]:
    spm = 10.0 * requests / 5400.0
    records = list(to_access_records(synthesize(SynthParams(seed=seed, sessions_per_minute=spm))))
    shift = time.time() - records[-1].ts - 5.0
    out = []
    for r in records:
        ev = AccessLogEvent(
            producer="bench",
            ts=datetime.fromtimestamp(r.ts + shift + 0.1, tz=UTC),
            request_id=None,
            session=r.session or None,
            session_source="header",
            api_key_id=None,
            endpoint="/api/chat",
            api="native",
            model=r.model,
            daemon="d0",
            status="ok",
            http_status=200,
            error_kind=None,
            cold=False,
            stream=False,
            num_ctx_requested=None,
            num_ctx_applied=r.num_ctx,
            prompt_tokens=100,
            output_tokens=100,
            system_prompt_hash=r.system_prompt_hash,
            prefix_hash=None,
            queue_ms=0.0,
            load_ms=0.0,
            ttft_ms=50.0,
            total_ms=100.0,
        )
        out.append((r.session, ev.to_json()))
    return out


def _core_rate(cfg: PredictorConfig, events: list[tuple[str, bytes]]) -> float:
    records = [from_access_log(AccessLogEvent.model_validate_json(v)) for _, v in events]
    state = new_state(cfg)
    gc.collect()
    start = time.perf_counter()
    for rec in records:
        state, _ = step(state, rec)
    return len(records) / (time.perf_counter() - start)


def _split_rate(cfg: PredictorConfig, events: list[tuple[str, bytes]]) -> tuple[float, int]:
    sessions = SessionStage(cfg)
    table: dict[str, bytes] = {}
    glob = GlobalStage(cfg, producer="bench", namespace="bench")
    now = datetime.now(UTC)
    offsets = [0] * PARTITIONS
    snapshot = b""
    gc.collect()
    start = time.perf_counter()
    for i, (key, value) in enumerate(events):
        p = hash(key) % PARTITIONS
        raw = table.get(key)
        part = SessionPart.from_dict(orjson.loads(raw)) if raw is not None else None
        new, obs = sessions.access(Position("a", p, offsets[p]), key, value, part)
        offsets[p] += 1
        if new is not None:
            table[key] = orjson.dumps(new.to_dict())
        if obs is not None:
            for ev in glob.apply(i, obs, now):
                ev.to_json()
        if i % 500 == 499:
            snapshot = glob.snapshot()
    return len(events) / (time.perf_counter() - start), len(snapshot)


async def _produce(bootstrap: str, topic: str, events: list[tuple[str, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    await producer.start()
    try:
        for key, value in events:
            await producer.send(topic, value, key=key.encode())
        await producer.flush()
    finally:
        await producer.stop()


async def _progress(bootstrap: str, app_id: str, source: str) -> tuple[int, int, int]:
    """(access-log records the group has committed, end offset of the observations
    topic, the offset of it the group has committed)."""
    topic = observations_topic(app_id)
    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await consumer.start()
    await admin.start()
    try:
        if topic not in await consumer.topics():
            return 0, 0, 0
        end = (await consumer.end_offsets([tp]))[tp]
        committed = await admin.list_consumer_group_offsets(app_id)
        meta = committed.get(tp)
        done = sum(m.offset for t, m in committed.items() if t.topic == source and m.offset > 0)
        return done, end, meta.offset if meta is not None else 0
    finally:
        await consumer.stop()
        await admin.close()


def _faust_rate(bootstrap: str, topic: str, n: int, timeout_s: float) -> tuple[float, float]:
    app_id = f"alb-bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "ALB_PREDICTOR_BOOTSTRAP_SERVERS": bootstrap,
            "ALB_PREDICTOR_APP_ID": app_id,
            "ALB_PREDICTOR_STORE": "memory://",
            "ALB_PREDICTOR_DATADIR": tmp,
            "ALB_PREDICTOR_ACCESS_LOG_TOPIC": topic,
            "ALB_PREDICTOR_MODEL_STATE_TOPIC": topic + "-state",
            "ALB_PREDICTOR_PREFETCH_TOPIC": topic + "-prefetch",
            "ALB_PREDICTOR_WARM_CACHE_TOPIC": topic + "-warm",
            "ALB_PREDICTOR_ACCESS_LOG_PARTITIONS": str(PARTITIONS),
            "ALB_PREDICTOR_COMMIT_INTERVAL_S": "0.1",
            "ALB_PREDICTOR_TICK_INTERVAL_S": "3600",
        }
        log = Path(tmp) / "worker.log"
        with log.open("wb") as out, _worker(env, out, tmp) as proc:
            first: float | None = None
            deadline = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"worker exited:\n{log.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"timed out:\n{log.read_text()[-3000:]}")
                done, end, committed = asyncio.run(_progress(bootstrap, app_id, topic))
                if first is None and end > 0:
                    first = time.monotonic()
                if done >= n and committed >= end:
                    assert first is not None
                    elapsed = time.monotonic() - first
                    return n / elapsed, elapsed
                time.sleep(0.05)


@contextlib.contextmanager
def _worker(env: dict[str, str], out: IO[bytes], cwd: str) -> Iterator[subprocess.Popen[bytes]]:
    argv = [sys.executable, "-m", "predictor.stream"]
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def _broker() -> Iterator[str]:
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        yield given
        return
    from tests.services.kafka_broker import start  # noqa: PLC0415

    broker = start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30_000, help="synthetic trace size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout-s", type=float, default=180.0, help="per Faust run")
    args = parser.parse_args(argv)

    cfg = PredictorConfig()
    events = _events(args.requests, args.seed)
    n = len(events)
    print(
        f"predictor on Faust vs the pure core: {n} access-log events, "
        f"{len({k for k, _ in events})} sessions, {PARTITIONS} partitions, "
        f"{args.repeats} interleaved repeats; Python {platform.python_version()} on "
        f"{platform.machine()}, {os.cpu_count()} CPUs"
    )
    rates: dict[str, list[float]] = {"core": [], "split": [], "faust": []}
    snapshot = 0
    with _broker() as bootstrap:
        topic = f"alb-bench-access-{uuid.uuid4().hex[:8]}"
        specs = [TopicSpec(topic, PARTITIONS, 3_600_000)] + [
            TopicSpec(topic + s, 1, 3_600_000) for s in ("-state", "-prefetch", "-warm")
        ]
        asyncio.run(ensure_topics(bootstrap, specs))
        asyncio.run(_produce(bootstrap, topic, events))
        for _ in range(args.repeats):
            rates["core"].append(_core_rate(cfg, events))
            rate, snapshot = _split_rate(cfg, events)
            rates["split"].append(rate)
            rates["faust"].append(_faust_rate(bootstrap, topic, n, args.timeout_s)[0])

    names = {
        "core": "pure core, one thread (step only)",
        "split": "split stages in process (parse, parts, snapshots)",
        "faust": "Faust app on the broker (end to end)",
    }
    base = statistics.median(rates["core"])
    header = f"{'pipeline':<52} {'events/s (median)':>18} {'min-max':>19} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for key, values in rates.items():
        med = statistics.median(values)
        print(
            f"{names[key]:<52} {med:>18,.0f} {min(values):>9,.0f}-{max(values):<9,.0f} "
            f"{med / base:>6.2f}"
        )
    print(f"global snapshot: {snapshot / 1024:.1f} KiB compressed (one table record per batch)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
