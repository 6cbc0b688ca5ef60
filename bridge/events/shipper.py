"""Kafka logging off the event loop: the shipper process.

Theory of operation. With Kafka configured, the bridge's event loop neither builds the
access-log events nor talks to Kafka: in the loop both cost ~30 µs a request (hashes,
token counts, JSON, the sender and aiokafka's produce path), ~15 % of a proxied
request, so ~15 % fewer requests/s at saturation. Instead ``Shipper`` (in the bridge)
hands each finished request's ``RequestRecord`` to a child process,
``python -m bridge.events.shipper``, as a tuple of its fields: ~1 µs a request, plus one
``marshal`` call and one pipe write per batch (every 5 ms). The child builds the event
with the same ``bridge.events.builders`` code (the same bytes) and owns the ``Sender``,
the disk spool and the Kafka producer. Each record's ``event_id`` follows from the
bridge process's random seed and the record's index (``event_id_at``), so a record
sent again keeps its id.

Nothing is lost when the child dies. The bridge keeps each batch it handed over until
the child reports its records *settled*: acknowledged by Kafka, written to the spool,
or dropped and counted there. A child that exits is started again (after 0.5 s,
doubling to 5 s) and gets every unsettled record again: delivery stays at-least-once
and consumers deduplicate on ``event_id``. Should more than twice ``events_queue_max``
records be unsettled (a child that cannot start), new ones are dropped, counted as
``alb_events_dropped_total{reason="shipper_down"}`` and logged.

The child reports about every 50 ms (and when asked): how many records are settled,
whether its queue and spool are empty, and its collectors (``alb_events_sent_total``,
``alb_events_spooled_total`` ...), which the bridge's ``/metrics`` serves as its own,
counters carried over a restart. It forwards its log records (same logger names) and
the system prompts the registry needs (each at most every 10 minutes). On EOF on its
stdin (the bridge closed it, or died) or SIGTERM it gives its queue
``events_close_timeout`` to reach Kafka, spools the rest and exits. It runs at nice +5:
background work that yields to request work on a shared core.

Wire: frames of a 4-byte big-endian length and a ``marshal`` payload (both ends run the
same interpreter, ``sys.executable``). Bridge to child: ``("batch", start, payload)``
and ``("ping",)``; ``payload`` is the ``marshal`` string of a list of items, the first
of index ``start``: ``("a", fields)`` (a request record) or ``("r", topic, key,
value)`` (an event built in the bridge: decisions, model state). Child to bridge:
``("ack", settled, idle, families)``, ``("prompt", text)``, ``("log", logger, level,
message)``, ``("clamped", field)`` (an access-log field clamped to fit) and
``("failed",)`` (a record it could not build).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import marshal
import operator
import os
import signal
import struct
import sys
import time
from collections import Counter as Tally
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from bridge.events.builders import access_log_record
from bridge.events.sink import RequestRecord
from common.tasks import cancel_and_wait
from ingest.bus import Record
from ingest.bus_kafka import KafkaBus, KafkaConfig
from ingest.messages import Event, Topic
from ingest.sender import Sender, SenderConfig
from ingest.spool import Spool, SpoolConfig

log = logging.getLogger(__name__)
_FRAME = struct.Struct("!I")
_FIELDS = tuple(f.name for f in dataclasses.fields(RequestRecord))
_PACK = operator.attrgetter(*_FIELDS)
_ACCESS_LOG = Topic.ACCESS_LOG.value
#: Where ``bridge`` is imported from: the child imports the same code.
_SRC = str(Path(__file__).resolve().parents[2])
#: A batch is written at most this long after its first record (or at _FLUSH_ITEMS).
_FLUSH_S = 0.005
_FLUSH_ITEMS = 512
#: The child's sender lets a partial batch wait this long: frames arrive every 5 ms,
#: produce requests go out ~20 times a second (the in-loop recorder's cadence).
_LINGER_S = 0.05
_ACK_S = 0.05
_RESTART_S = (0.5, 5.0)
#: A child that lived this long resets the restart backoff.
_HEALTHY_S = 10.0
_PROMPT_REFRESH_S = 600.0
_PROMPTS_REMEMBERED = 4096
_WARN_INTERVAL_S = 10.0
#: Counter samples carried over a restart (``_created`` samples are not served).
_COUNTER_SUFFIX = "_total"

Families = list[tuple[str, str, str, list[tuple[str, dict[str, str], float]]]]
Labels = tuple[tuple[str, str], ...]
_DROPPED = "alb_events_dropped_total"


@dataclasses.dataclass(frozen=True, slots=True)
class ShipperConfig:
    """What the child needs; travels as JSON on its command line."""

    bootstrap_servers: str
    client_id: str
    producer: str
    spool_dir: str
    spool_max_bytes: int
    queue_max: int
    close_timeout_s: float
    log_level: int = logging.INFO
    #: Added to the child's nice value: where it shares a core with the bridge or the
    #: bridge's peers, request work goes first and events follow in the gaps (bounded:
    #: its queue spills to the spool).
    nice: int = 5


# --- the wire ---------------------------------------------------------------------------


_ID_MASK = (1 << 128) - 1
_ID_CLEAR = ~((0xF << 76) | (0x3 << 62)) & _ID_MASK
_ID_SET = (0x4 << 76) | (0x2 << 62)


def event_id_at(seed: int, index: int) -> str:
    """A version-4-shaped UUID for record ``index`` of the bridge process whose random
    128-bit ``seed`` it is: distinct for every index below 2**62, the same on a resend."""
    h = f"{((seed + index) & _ID_CLEAR | _ID_SET) & _ID_MASK:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def restarts_counter(registry: CollectorRegistry) -> Counter:
    return Counter(
        "alb_events_shipper_restarts",
        "Times the event shipper process exited unexpectedly and was started again.",
        registry=registry,
    )


def frame(message: tuple[Any, ...]) -> bytes:
    payload = marshal.dumps(message)
    return _FRAME.pack(len(payload)) + payload


async def read_frame(reader: asyncio.StreamReader) -> tuple[Any, ...] | None:
    """The next message, or None at EOF."""
    try:
        head = await reader.readexactly(_FRAME.size)
        (size,) = _FRAME.unpack(head)
        message = marshal.loads(await reader.readexactly(size))
    except asyncio.IncompleteReadError:
        return None
    if not isinstance(message, tuple) or not message:
        raise ValueError(f"shipper: malformed frame {type(message).__name__}")
    return message


# --- in the bridge ----------------------------------------------------------------------


class _ChildMetrics(Collector):
    """Serves the child's collectors on the bridge's registry (see the module docstring)."""

    def __init__(self, shipper: Shipper) -> None:
        self._shipper = shipper

    def collect(self) -> Iterator[Metric]:
        s = self._shipper
        meta = {"alb_events_dropped": ("Events lost, by topic and reason.", "counter")}
        meta.update(s.meta)
        values: dict[str, dict[tuple[str, Labels], float]] = {}
        for name, doc, typ, samples in s.families:
            meta[name] = (doc, typ)
            family = values.setdefault(name, {})
            for sample, labels, value in samples:
                if not sample.endswith("_created"):
                    family[(sample, tuple(sorted(labels.items())))] = value
        drops = {
            (_DROPPED, (("reason", reason), ("topic", topic))): float(n)
            for (topic, reason), n in s.drops.items()
        }
        for key, n in [*s.carried.items(), *drops.items()]:
            family = values.setdefault(key[0].removesuffix(_COUNTER_SUFFIX), {})
            family[key] = family.get(key, 0.0) + n
        for name, family in values.items():
            doc, typ = meta.get(name, ("", "untyped"))
            metric = Metric(name, doc, typ)
            for (sample, pairs), value in family.items():
                metric.add_sample(sample, dict(pairs), value)
            yield metric


class Shipper:
    """The bridge's end: ``start``, ``offer_request`` / ``offer``, ``wait_idle``, ``close``."""

    def __init__(
        self,
        config: ShipperConfig,
        registry: CollectorRegistry,
        on_prompt: Callable[[str], None],
        on_failed: Callable[[], None],
        restarts: Counter | None = None,
        *,
        on_clamped: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self._on_prompt = on_prompt
        self._on_failed = on_failed
        self._on_clamped = on_clamped
        self._limit = 2 * config.queue_max
        self._pending: list[tuple[Any, ...]] = []
        self._requests = 0  # request records pending, for ``built``
        #: ``alb_events_built_total{kind="access_log"}``, counted per batch (the owner's).
        self.built: Counter | None = None
        #: Batches written (or to write) and not yet settled: (absolute end, count, payload).
        self._unsettled: deque[tuple[int, int, bytes]] = deque()
        #: Event ids are ``event_id_at(seed, index)``: random per bridge process, the same
        #: when a record is sent again to a restarted child.
        self._seed = int.from_bytes(os.urandom(16), "big")
        self._framed = 0  # records framed so far (absolute)
        self._settled = 0  # records the child reported settled (absolute)
        self._base = 0  # the absolute index of the current child's first record
        self._child_idle = False
        self._acked = asyncio.Event()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._proc: asyncio.subprocess.Process | None = None
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._last_warning = 0.0
        self._restart_count = 0
        #: The child's collectors as last reported, and counters of children gone.
        self.families: Families = []
        self.meta: dict[str, tuple[str, str]] = {}
        self.carried: defaultdict[tuple[str, Labels], float] = defaultdict(float)
        self.drops: Tally[tuple[str, str]] = Tally()
        #: ``alb_events_shipper_restarts_total``: the caller's (the bridge registers it
        #: in every mode, so rules naming it hold everywhere) or one registered here.
        self.restarts = restarts or restarts_counter(registry)
        registry.register(_ChildMetrics(self))

    # --- lifecycle ----------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._supervise(), name="alb-shipper")
        self._flusher = loop.create_task(self._flush_loop(), name="alb-shipper-flush")

    async def close(self) -> None:
        """Hand over what is pending and let the child drain it (``close_timeout_s`` to
        reach Kafka, the rest to the spool); a child that is down is started once more
        for that. What no child settled is counted as dropped (``closed``) and logged."""
        if self._closing:
            return
        self._flush()
        self._closing = True
        self._stop.set()
        if self._flusher is not None:
            await cancel_and_wait(self._flusher)
        self._eof()
        if self._task is not None:
            try:
                async with asyncio.timeout(2 * self.config.close_timeout_s + 15.0):
                    await asyncio.shield(self._task)
            except TimeoutError:
                log.error("event shipper did not exit in time; killing it")
                if self._proc is not None and self._proc.returncode is None:
                    self._proc.kill()
                await cancel_and_wait(self._task)
        lost = self._framed - self._settled
        if lost > 0:
            self.drops[(_ACCESS_LOG, "closed")] += lost
            log.error("events dropped: %d closed (the event shipper did not settle them)", lost)

    def _eof(self) -> None:
        """Close the live child's stdin: it drains, spools the rest and exits."""
        proc = self._proc
        if proc is not None and proc.returncode is None and proc.stdin is not None:
            with contextlib.suppress(OSError, RuntimeError):
                proc.stdin.close()

    def status(self) -> dict[str, Any]:
        """For ``GET /alb/v1/events``: the child and what it has not settled yet."""
        proc = self._proc
        alive = proc is not None and proc.returncode is None
        return {
            "pid": proc.pid if alive and proc is not None else None,
            "running": alive,
            "restarts": self._restart_count,
            "pending": len(self._pending),
            "unsettled": self._framed - self._settled,
        }

    @property
    def idle(self) -> bool:
        """Nothing waiting here or in the child (queue and spool empty)."""
        return not self._pending and self._framed == self._settled and self._child_idle

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until everything offered so far reached the bus; False on timeout."""
        self._flush()
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    self._acked.clear()
                    self._send(("ping",))
                    await self._acked.wait()
                    if self.idle:
                        return True
                    await asyncio.sleep(_ACK_S / 5)
        except TimeoutError:
            return False

    # --- the request path --------------------------------------------------------------
    def offer_request(self, record: RequestRecord) -> int | None:
        """Hand over a finished request: its index (its event id is ``event_id(index)``),
        None if it was dropped. Only a tuple of the record's fields is kept (~1 µs); the
        batch is serialised in one ``marshal`` call when it is written."""
        index = self._framed + len(self._pending)
        if self._closing or index - self._settled >= self._limit:
            self._drop(_ACCESS_LOG)
            return None
        self._pending.append(("a", _PACK(record)))
        self._requests += 1
        self._wake_flusher()
        return index

    def offer(self, event: Event | Record) -> bool:
        """Hand over an event built in the bridge (decisions, model state)."""
        if not isinstance(event, Record):
            event = Record.of(event)
        if self._closing or self._framed + len(self._pending) - self._settled >= self._limit:
            self._drop(event.topic)
            return False
        self._pending.append(("r", event.topic, event.key, event.value))
        self._wake_flusher()
        return True

    def event_id(self, index: int) -> str:
        """The ``event_id`` of the record offered at ``index`` (the child derives the same)."""
        return event_id_at(self._seed, index)

    def _wake_flusher(self) -> None:
        n = len(self._pending)
        if n >= _FLUSH_ITEMS:
            self._flush()
        elif n == 1:
            self._wake.set()

    def _drop(self, topic: str) -> None:
        self.drops[(topic, "shipper_down")] += 1
        now = time.monotonic()
        if now - self._last_warning >= _WARN_INTERVAL_S:
            self._last_warning = now
            log.error(
                "events dropped: the event shipper is down with %d records unsettled",
                self._framed - self._settled,
            )

    # --- batches -----------------------------------------------------------------------
    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(_FLUSH_S)
            self._wake.clear()
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        items, self._pending = self._pending, []
        if self.built is not None and self._requests:
            self.built.inc(self._requests)
        self._requests = 0
        start = self._framed
        self._framed += len(items)
        payload = self._payload(items, start)
        self._unsettled.append((self._framed, len(items), payload))
        self._send(("batch", start, payload))

    def _payload(self, items: list[tuple[Any, ...]], start: int) -> bytes:
        """``items`` in one ``marshal`` string. A request record ``marshal`` refuses (a
        body not decoded from JSON) is built here instead, with the same id and key."""
        try:
            return marshal.dumps(items)
        except ValueError:
            return marshal.dumps([self._fit(item, start + i) for i, item in enumerate(items)])

    def _fit(self, item: tuple[Any, ...], index: int) -> tuple[Any, ...]:
        try:
            marshal.dumps(item)
        except ValueError:
            built, _ = access_log_record(
                RequestRecord(*item[1]),
                self.config.producer,
                event_id=self.event_id(index),
                on_clamped=self._on_clamped,
            )
            return ("r", built.topic, built.key, built.value)
        return item

    def _send(self, message: tuple[Any, ...]) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None or proc.stdin is None:
            return  # sent again when the child (re)starts
        with contextlib.suppress(OSError, RuntimeError):  # it just died: the supervisor resends
            proc.stdin.write(frame(message))

    # --- the child ------------------------------------------------------------------
    async def _supervise(self) -> None:
        delay = _RESTART_S[0]
        last_try = False
        while True:
            started = time.monotonic()
            try:
                await self._run_child()
            except Exception:
                log.exception("event shipper: could not run the child")
            if self._closing and (self._framed == self._settled or last_try):
                return
            self.restarts.inc()
            self._restart_count += 1
            self._retire_counters()
            if time.monotonic() - started > _HEALTHY_S:
                delay = _RESTART_S[0]
            wait = 0.0 if self._closing else delay
            log.error(
                "event shipper exited (code %s); starting it again in %.1fs, %d records resent",
                None if self._proc is None else self._proc.returncode,
                wait,
                self._framed - self._settled,
            )
            if self._closing:  # one more child, at once, to drain what is unsettled
                last_try = True
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._stop.wait()
            delay = min(delay * 2, _RESTART_S[1])

    async def _run_child(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_SRC, env.get("PYTHONPATH")]))
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bridge.events.shipper",
            json.dumps({**dataclasses.asdict(self.config), "id_seed": self._seed}),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,  # a terminal's Ctrl-C reaches the bridge, not the child
        )
        self._proc = proc
        self._child_idle = False
        self._base = self._settled
        self._resend()
        if self._closing:
            self._eof()
        assert proc.stdout is not None
        try:
            while (message := await read_frame(proc.stdout)) is not None:
                self._handle(message)
        finally:
            if proc.returncode is None and not self._closing:
                proc.kill()
            await proc.wait()

    def _resend(self) -> None:
        """Everything not settled, from the first unsettled record, in order."""
        for end, count, payload in self._unsettled:
            start = end - count
            skip = max(self._settled - start, 0)
            rest = marshal.dumps(marshal.loads(payload)[skip:]) if skip else payload
            self._send(("batch", start + skip, rest))

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "ack":
            _, settled, idle, families = message
            self._settled = max(self._settled, self._base + settled)
            while self._unsettled and self._unsettled[0][0] <= self._settled:
                self._unsettled.popleft()
            self._child_idle = bool(idle)
            self.families = families
            self._acked.set()
        elif kind == "prompt":
            self._on_prompt(message[1])
        elif kind == "log":
            _, name, level, text = message
            logging.getLogger(name).log(level, "%s", text)
        elif kind == "failed":
            self._on_failed()
        elif kind == "clamped" and self._on_clamped is not None:
            self._on_clamped(message[1])

    def _retire_counters(self) -> None:
        """Carry the dead child's counters into the next one's (they restart at 0)."""
        for name, doc, typ, samples in self.families:
            self.meta[name] = (doc, typ)
            if typ != "counter":
                continue
            for sample, labels, value in samples:
                if sample.endswith(_COUNTER_SUFFIX):
                    self.carried[(sample, tuple(sorted(labels.items())))] += value
        self.families = []


# --- in the child process -------------------------------------------------------------


class _Forward(logging.Handler):
    def __init__(self, out: Callable[[tuple[Any, ...]], None]) -> None:
        super().__init__()
        self._out = out

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._out(("log", record.name, record.levelno, self.format(record)))
        except Exception:
            self.handleError(record)


class _Child:
    def __init__(self, config: ShipperConfig, out_fd: int, seed: int) -> None:
        self.config = config
        self._out_fd = out_fd
        self._seed = seed
        self.registry = CollectorRegistry()
        self.bus = KafkaBus(KafkaConfig(config.bootstrap_servers, client_id=config.client_id))
        self.spool = Spool(SpoolConfig(Path(config.spool_dir), max_bytes=config.spool_max_bytes))
        self.sender = Sender(
            self.bus,
            self.spool,
            self.registry,
            SenderConfig(
                max_queue=config.queue_max,
                close_timeout_s=config.close_timeout_s,
                linger_s=_LINGER_S,
            ),
        )
        self.offered = 0
        self._prompts: dict[str, float] = {}
        self._ping = asyncio.Event()
        self._last: tuple[Any, ...] | None = None

    def send(self, message: tuple[Any, ...]) -> None:
        write_frame(self._out_fd, message)

    def ack(self, *, force: bool = False) -> None:
        families: Families = [
            (m.name, m.documentation, m.type, [(s.name, s.labels, s.value) for s in m.samples])
            for m in self.registry.collect()
        ]
        message = ("ack", self.offered - self.sender.queued, self.sender.idle, families)
        if force or message != self._last:
            self._last = message
            self.send(message)

    def take(self, start: int, payload: bytes) -> None:
        producer, seed = self.config.producer, self._seed
        now = time.monotonic()
        for index, item in enumerate(marshal.loads(payload), start):
            self.offered += 1
            if item[0] == "r":
                _, topic, key, value = item
                self.sender.offer(Record(topic, key, value))
                continue
            try:
                record, system = access_log_record(
                    RequestRecord(*item[1]),
                    producer,
                    event_id=event_id_at(seed, index),
                    on_clamped=self._clamped,
                )
            except Exception:
                log.exception("could not build an access-log event")
                self.send(("failed",))
                continue
            self.sender.offer(record)
            if system is not None:
                self._prompt(system, now)

    def _clamped(self, field: str) -> None:
        self.send(("clamped", field))

    def _prompt(self, text: str, now: float) -> None:
        last = self._prompts.get(text)
        if last is not None and now - last < _PROMPT_REFRESH_S:
            return
        if len(self._prompts) >= _PROMPTS_REMEMBERED:
            self._prompts.clear()
        self._prompts[text] = now
        self.send(("prompt", text))

    async def acks(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_ACK_S):
                    await self._ping.wait()
            forced = self._ping.is_set()
            self._ping.clear()
            self.ack(force=forced)

    async def run(self, reader: asyncio.StreamReader, stop: asyncio.Event) -> None:
        self.sender.start()
        acks = asyncio.get_running_loop().create_task(self.acks())
        reading = asyncio.ensure_future(self._read(reader))
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reading, stopping):
                task.cancel()
            await self.sender.close()
            await cancel_and_wait(acks)
            self.ack(force=True)
            await self.bus.close()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while (message := await read_frame(reader)) is not None:
            if message[0] == "batch":
                self.take(message[1], message[2])
            elif message[0] == "ping":
                self._ping.set()


def write_frame(fd: int, message: tuple[Any, ...]) -> None:
    """Blocking: the child has nothing better to do while the bridge reads."""
    data = memoryview(frame(message))
    while data:
        data = data[os.write(fd, data) :]


async def _child_main(config: ShipperConfig, out_fd: int, seed: int) -> None:
    loop = asyncio.get_running_loop()
    handler = _Forward(lambda message: write_frame(out_fd, message))
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.log_level)
    try:
        child = _Child(config, out_fd, seed)
    except Exception:
        log.exception("event shipper could not start")
        raise SystemExit(1) from None
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    reader = asyncio.StreamReader(limit=2**31 - 1)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", buffering=0)
    )
    await child.run(reader, stop)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    doc = json.loads(args[0])
    seed = int(doc.pop("id_seed"))
    config = ShipperConfig(**doc)
    out_fd = os.dup(1)
    os.dup2(2, 1)  # stray prints go to stderr, never into the frames
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if config.nice:
        os.nice(config.nice)
    asyncio.run(_child_main(config, out_fd, seed))


if __name__ == "__main__":
    main()
