"""A low-noise HTTP/1.1 load generator: asyncio protocols and httptools, no client library.

Theory of operation: every target keeps a pool of keep-alive connections, each
an ``asyncio.Protocol`` that feeds the bytes it receives straight into an
``httptools`` response parser. The request is a pre-rendered byte string, so
sending costs one ``transport.write``. Every timestamp is taken once per read
(``data_received``), before parsing, so what is measured is when the bytes
reached this process, not when Python got round to looking at them:

* latency: request written -> read that completed the response;
* TTFT: request written -> first read that carried body bytes;
* frame times: the read that completed each NDJSON line / SSE event, whose
  consecutive differences are the inter-chunk gaps.

A batch is closed-loop: ``concurrency`` connections each send their next
request as soon as the previous response is complete, until ``total`` requests
have been sent. Nothing here knows about proxies or the simulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from dataclasses import dataclass, field
from typing import cast

import httptools

#: Reconnect rather than reuse a connection idle this long (uvicorn's keep-alive is 5 s).
IDLE_REUSE_S = 3.0


@dataclass(frozen=True)
class Workload:
    """One kind of request, e.g. non-streaming ``/api/chat``."""

    name: str
    path: str
    body: bytes
    #: Frame separator in a streamed body (b"\n" NDJSON, b"\n\n" SSE); None = not streamed.
    frame_sep: bytes | None = None
    #: Extra header lines, each ending in CRLF (``Authorization: Bearer ...\r\n``).
    headers: str = ""

    def request_bytes(self, host: str, port: int) -> bytes:
        head = (
            f"POST {self.path} HTTP/1.1\r\n"
            f"Host: {host}:{port}\r\n"
            "User-Agent: alb-bench\r\n"
            "Accept: */*\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(self.body)}\r\n"
            f"{self.headers}\r\n"
        )
        return head.encode("ascii") + self.body


@dataclass
class BatchResult:
    """Samples of one closed-loop batch against one target (seconds)."""

    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed: float = 0.0

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed > 0 else 0.0


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[int] | None = None
        self._now = 0.0
        self._sep = b""
        self._tail = b""
        self.first_body = 0.0
        self.frames: list[float] = []
        self.done_at = 0.0
        self.closed = False
        self.last_used = time.monotonic()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they quack alike.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._now = time.perf_counter()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionResetError("connection closed by peer"))

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        if not self.first_body:
            self.first_body = self._now
        if self._sep:
            data = self._tail + body
            self.frames.extend([self._now] * data.count(self._sep))
            self._tail = data[-(len(self._sep) - 1) :] if len(self._sep) > 1 else b""

    def on_message_complete(self) -> None:
        self.done_at = self._now
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(self._parser.get_status_code())

    def _fail(self, exc: BaseException) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    async def request(self, payload: bytes, frame_sep: bytes | None) -> tuple[int, float]:
        """Send ``payload``; return (status, send time) once the response is complete."""
        assert self._transport is not None
        if self.closed or self._transport.is_closing():
            raise ConnectionResetError("connection closed before the request")
        self.last_used = time.monotonic()
        self._waiter = asyncio.get_running_loop().create_future()
        self._sep = frame_sep or b""
        self._tail = b""
        self.first_body = 0.0
        self.frames = []
        sent = time.perf_counter()
        self._transport.write(payload)
        status = await self._waiter
        return status, sent

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class Target:
    """A host:port under test with its own pool of keep-alive connections."""

    def __init__(self, name: str, host: str, port: int) -> None:
        self.name = name
        self.host = host
        self.port = port
        self._pool: list[_Connection] = []

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(_Connection, self.host, self.port)
        return proto

    async def ensure(self, n: int) -> None:
        """Open connections until the pool has ``n`` live ones.

        Connections idle for longer than ``IDLE_REUSE_S`` are replaced first:
        uvicorn closes idle keep-alive connections after 5 s, and a request
        written as that close arrives would count as an error that is not
        the server's.
        """
        stale = time.monotonic() - IDLE_REUSE_S
        for c in self._pool:
            if c.last_used < stale:
                c.close()
        self._pool = [c for c in self._pool if not c.closed and c.last_used >= stale]
        while len(self._pool) < n:
            self._pool.append(await self._connect())

    async def run(
        self, workload: Workload, concurrency: int, total: int, stagger: float = 0.0
    ) -> BatchResult:
        """Closed loop: ``total`` requests over ``concurrency`` connections.

        ``stagger`` spreads the connections' first requests evenly over that many
        seconds, so equally long streams do not all start (and tick) in lockstep.
        """
        await self.ensure(concurrency)
        payload = workload.request_bytes(self.host, self.port)
        result = BatchResult()
        remaining = total

        async def worker(index: int) -> None:
            nonlocal remaining
            conn = self._pool[index]
            if stagger:
                await asyncio.sleep(stagger * index / concurrency)
            while remaining > 0:
                remaining -= 1
                try:
                    status, sent = await conn.request(payload, workload.frame_sep)
                except (OSError, RuntimeError, httptools.HttpParserError):
                    result.errors += 1
                    conn.close()
                    conn = self._pool[index] = await self._connect()
                    continue
                if status != 200:
                    result.errors += 1
                    continue
                result.latencies.append(conn.done_at - sent)
                if workload.frame_sep is not None:
                    result.ttfts.append(conn.first_body - sent)
                    frames = conn.frames
                    result.gaps.extend(b - a for a, b in itertools.pairwise(frames))

        start = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        result.elapsed = time.perf_counter() - start
        return result

    def close(self) -> None:
        for c in self._pool:
            with contextlib.suppress(Exception):
                c.close()
        self._pool = []


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when available: the generator should be the cheapest process in the run."""
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
