"""Issue #12, finding 6: connection and memory limits, on the real bridge and socket.

Head timeout (idle and slow-header sockets), idle keep-alive, head size (431), body
size (413 before the body), body rate (408), connection cap (503), the bridge-wide
body budget (503), the reclaimer; and the exhaustion tests: 1,000 idle sockets are
closed within the header timeout while a probe request keeps being answered, and
``alb serve``'s RSS is back within 1.5x of its baseline after bursts of large bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import sys
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import uvloop

from bench.exhaustion import MIB, RSS_TARGET, body_of, burst, post, rss
from bench.procs import HOST, Service, free_port
from bridge.http.limits import BIG_BODY, BodyBudget, Reclaimer, body_too_slow
from ollamasim.testing import RunningFleet
from tests.bridge._edge_support import (
    Answer,
    closed_within,
    exchange,
    port_of,
    read_answer,
)
from tests.bridge._support import RunningBridge, running_bridge, settings_for

HEAD_S = 1.0


@pytest.fixture
async def tight(fleet: RunningFleet) -> AsyncIterator[RunningBridge]:
    settings = settings_for(
        fleet,
        header_timeout=HEAD_S,
        idle_timeout=0.5,
        max_header_bytes=16 * 1024,
        body_min_rate=2000,
        body_grace=0.5,
        body_budget_bytes=100_000,
        max_body_bytes=64 * 1024,
    )
    async with running_bridge(settings) as b:
        yield b


async def _connect(b: RunningBridge) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port_of(b))


def _head(path: str, port: int, **headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_idle_and_slow_header_sockets_are_closed(tight: RunningBridge) -> None:
    idle_r, idle_w = await _connect(tight)
    slow_r, slow_w = await _connect(tight)
    t0 = time.monotonic()
    slow_w.write(b"GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\n")

    async def trickle() -> None:
        for _ in range(20):  # a header byte every 0.2 s: never a whole head in time
            await asyncio.sleep(0.2)
            slow_w.write(b"X")

    trickling = asyncio.create_task(trickle())
    assert await closed_within(idle_r, HEAD_S + 1.5) == b""  # closed without a word
    slow = await closed_within(slow_r, HEAD_S + 1.5)
    trickling.cancel()
    assert slow is not None
    assert slow.startswith(b"HTTP/1.1 408 ")
    assert b'"error"' in slow
    assert time.monotonic() - t0 < HEAD_S + 1.5
    idle_w.close()
    slow_w.close()


async def test_idle_keep_alive_connections_are_closed(tight: RunningBridge) -> None:
    reader, writer = await _connect(tight)
    writer.write(b"GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert (await read_answer(reader)).status == 200
    t0 = time.monotonic()
    assert await closed_within(reader, 3.0) == b""
    assert time.monotonic() - t0 < 1.5  # ALB_IDLE_TIMEOUT 0.5 s
    writer.close()


async def test_a_slow_head_on_a_keep_alive_connection_is_timed_too(tight: RunningBridge) -> None:
    reader, writer = await _connect(tight)
    writer.write(b"GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert (await read_answer(reader)).status == 200
    writer.write(b"GET /api/version HTTP/1.1\r\n")
    t0 = time.monotonic()

    async def trickle() -> None:
        for _ in range(20):  # each byte restarts uvicorn's idle timer, not the head timer
            await asyncio.sleep(0.2)
            writer.write(b"X")

    trickling = asyncio.create_task(trickle())
    got = await closed_within(reader, HEAD_S + 2.0)
    trickling.cancel()
    assert got is not None
    assert got.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - t0 < HEAD_S + 1.0
    writer.close()


async def test_an_oversized_head_gets_431_and_is_closed(tight: RunningBridge) -> None:
    """The probe held 50 unfinished 8 MiB heads (RSS 81 -> 491 MB); now each stops at the cap."""
    reader, writer = await _connect(tight)
    writer.write(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
    sent = 0

    async def flood() -> None:  # up to 8 MiB, 1 KiB at a time, never a line end
        nonlocal sent
        with contextlib.suppress(ConnectionError):
            for _ in range(8 * 1024):
                writer.write(b"a" * 1024)
                sent += 1024
                await writer.drain()
                await asyncio.sleep(0)

    flooding = asyncio.create_task(flood())
    got = await closed_within(reader, 5.0)
    flooding.cancel()
    assert got is not None
    assert got.startswith(b"HTTP/1.1 431 ")
    assert b'"message"' in got  # /v1: OpenAI's error shape
    assert sent < 1024 * 1024
    writer.close()


async def test_a_huge_content_length_is_refused_before_the_body(tight: RunningBridge) -> None:
    port = port_of(tight)
    for path, shape in (("/api/generate", str), ("/v1/chat/completions", dict)):
        reader, writer = await _connect(tight)
        t0 = time.monotonic()
        writer.write(_head(path, port, Content_Length=str(1 << 30)))  # 1 GiB, none sent
        answer = await asyncio.wait_for(read_answer(reader), 2.0)
        assert answer.status == 413
        assert time.monotonic() - t0 < 1.0
        body = answer.json()
        assert isinstance(body, dict)
        assert isinstance(body["error"], shape)
        assert await closed_within(reader, 3.0) == b""  # a lingering close, not a reset
        writer.close()


async def test_a_slow_body_gets_408(tight: RunningBridge) -> None:
    reader, writer = await _connect(tight)
    writer.write(_head("/api/generate", port_of(tight), Content_Length="50000") + b"{")
    t0 = time.monotonic()

    async def trickle() -> None:
        for _ in range(100):  # 20 bytes/s, under ALB_BODY_MIN_RATE 2000
            await asyncio.sleep(0.05)
            writer.write(b" ")

    trickling = asyncio.create_task(trickle())
    got = await closed_within(reader, 5.0)
    trickling.cancel()
    assert got is not None
    assert got.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - t0 < 3.5
    writer.close()


async def test_the_body_budget_is_shared_and_answers_503(tight: RunningBridge) -> None:
    port = port_of(tight)
    budget: BodyBudget = tight.app.state.body_budget
    # One client holds 60,000 of the 100,000 bytes while its body arrives (slowly, but
    # above ALB_BODY_MIN_RATE).
    holder_r, holder_w = await _connect(tight)
    holder_w.write(_head("/api/generate", port, Content_Length="60000"))
    doc = b'{"model":"chatty","prompt":"hi","stream":false}'
    holder_w.write(doc)

    async def trickle() -> None:
        left = 60_000 - len(doc)
        while left:
            n = min(left, 2000)
            holder_w.write(b" " * n)
            left -= n
            await asyncio.sleep(0.1)

    trickling = asyncio.create_task(trickle())
    await asyncio.sleep(0.1)
    assert budget.in_use == 60_000
    for path, shape in (("/api/generate", str), ("/v1/completions", dict)):
        answer = await exchange(port, "POST", path, body=b"{" + b" " * 49_999)
        assert answer.status == 503
        assert answer.header("retry-after") == "1"
        body = answer.json()
        assert isinstance(body, dict)
        assert isinstance(body["error"], shape)
    # A chunked body is charged as it arrives.
    r, w = await _connect(tight)
    w.write(_head("/api/generate", port, Transfer_Encoding="chunked"))
    w.write(b"%x\r\n" % 50_000 + b"{" + b" " * 49_999 + b"\r\n0\r\n\r\n")
    answer = await asyncio.wait_for(read_answer(r), 5.0)
    assert answer.status == 503
    w.close()
    # The holder finishes; its bytes are given back and the next body fits.
    assert (await asyncio.wait_for(read_answer(holder_r), 10.0)).status == 200
    await trickling
    holder_w.close()
    await asyncio.sleep(0.05)
    assert budget.in_use == 0
    ok = await exchange(port, "POST", "/api/generate", body=b'{"model":"chatty","prompt":"x"}')
    assert ok.status == 200


async def test_connections_over_the_cap_get_503(fleet: RunningFleet) -> None:
    async with running_bridge(settings_for(fleet, max_client_connections=5)) as b:
        held = [await _connect(b) for _ in range(5)]
        await asyncio.sleep(0.05)
        answer = await exchange(port_of(b), "GET", "/v1/models")
        assert answer.status == 503
        assert answer.header("retry-after") == "1"
        body = answer.json()
        assert isinstance(body, dict)
        assert "ALB_MAX_CLIENT_CONNECTIONS" in body["error"]["message"]
        # Over the cap, a silent connection gets 1 s, not the header timeout.
        r, w = await _connect(b)
        assert await closed_within(r, 2.0) == b""
        w.close()
        for _, writer in held:
            writer.close()
        await asyncio.sleep(0.1)
        assert (await exchange(port_of(b), "GET", "/api/version")).status == 200


async def test_large_bodies_are_reclaimed(fleet: RunningFleet) -> None:
    async with running_bridge(settings_for(fleet)) as b:
        reclaimer: Reclaimer = b.app.state.reclaimer
        before = reclaimer.runs
        answer = await exchange(port_of(b), "POST", "/api/generate", body=b"A" * (2 * BIG_BODY))
        assert answer.status == 400
        await asyncio.sleep(0.7)
        assert reclaimer.runs == before + 1


async def _settled_rss(pid: int, within: float = 5.0) -> int:
    """``pid``'s RSS once two samples 0.1 s apart differ by under 1 MB (or at the deadline)."""
    deadline = time.monotonic() + within
    last = rss(pid)
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        now = rss(pid)
        if abs(now - last) < 1_000_000:
            return now
        last = now
    return last


#: glibc as it is worst for the test: free() never gives heap pages back on its own, and
#: 16 MiB blocks come from the heap, not mmap (fixed thresholds). With glibc's defaults
#: the pages come back on their own in about half the runs, so a bridge that no longer
#: reclaims would pass those too; here only the reclaimer's malloc_trim gives them back.
_NO_TRIM = {"MALLOC_TRIM_THRESHOLD_": str(2**32 - 1), "MALLOC_MMAP_THRESHOLD_": str(32 * MIB)}


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("malloc_env", [{}, _NO_TRIM], ids=["glibc-defaults", "glibc-no-trim"])
async def test_rss_returns_to_its_baseline_after_bursts_of_large_bodies(
    fleet: RunningFleet, monkeypatch: pytest.MonkeyPatch, malloc_env: dict[str, str]
) -> None:
    """The probe's 40 concurrent 16 MiB bodies, all answered 400, left RSS at 1.57 GB ten
    minutes later (baseline 81 MB); the exhaustion test of the issue: after a burst of
    large bodies, RSS returns to within 1.5x of its baseline. ``alb serve`` runs as a real
    process (its own heap, read from ``/proc/PID/status``, as ``bench/exhaustion.py`` reads
    it) and gets two bursts of 24 concurrent 16 MiB bodies that are not JSON: 400, or 503
    once the body budget (256 MiB) is spent. The reclaimer gives back what they leave."""
    for name in list(os.environ):  # the bridge's settings are this test's alone
        if name.startswith(("ALB_", "OLLAMA_", "MALLOC_", "GLIBC_TUNABLES")):
            monkeypatch.delenv(name)
    port = free_port()
    argv = [sys.executable, "-m", "alb.cli", "serve", "--host", HOST, "--port", str(port)]
    env = {"ALB_DAEMONS": f"a={fleet.daemon('a').base_url}", **malloc_env}
    bridge = Service("bridge", argv, port, env=env)
    try:
        await asyncio.to_thread(bridge.wait_ready, "/api/version", 30.0)
        pid = bridge.proc.pid
        for _ in range(10):  # warm-up: the paths a burst takes, with small bodies
            await post(port, "/api/show", b'{"model":"chatty"}')
            await post(port, "/api/generate", b"A" * 1000)
        baseline = await _settled_rss(pid)
        target = RSS_TARGET * baseline
        body = body_of(16 * MIB, valid_json=False)
        for i in range(2):
            b = await burst(pid, port, body, 24, settle=0)
            assert set(b.codes) <= {"400", "503"}, b.codes
            assert b.codes["400"] >= 1, b.codes  # some bodies were read whole
            assert b.peak > target, (baseline, b.peak)  # the burst held memory: measured
            deadline = time.monotonic() + 10
            after = rss(pid)
            while after > target and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                after = rss(pid)
            mb = f"baseline {baseline / 1e6:.0f} MB, peak {b.peak / 1e6:.0f} MB"
            assert after <= target, (
                f"burst {i + 1}: {mb}, {after / 1e6:.0f} MB 10 s after; alb serve said:\n"
                + bridge.output()[-3000:]
            )
    finally:
        bridge.stop()


def _fd_room(needed: int) -> bool:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed and hard >= needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
        soft = needed
    return soft >= needed


async def test_a_thousand_idle_sockets_are_closed_while_a_probe_is_answered(
    fleet: RunningFleet,
) -> None:
    """The probe held 2,000 idle sockets for 120 s, none closed; the exhaustion test of
    the issue: 1,000 idle sockets closed within the header timeout, a probe answered."""
    n = 1000
    if not _fd_room(2 * n + 512):
        pytest.skip("ulimit -n too low for 1,000 sockets on both ends")
    timeout = 1.5
    async with running_bridge(settings_for(fleet, header_timeout=timeout)) as b:
        port = port_of(b)
        conns = [await _connect(b) for _ in range(n)]
        t0 = time.monotonic()
        closed: list[float] = []

        async def wait(reader: asyncio.StreamReader) -> None:
            await closed_within(reader, timeout + 5)
            closed.append(time.monotonic() - t0)

        waiters = asyncio.gather(*(wait(r) for r, _ in conns))
        probes: list[int] = []
        while not waiters.done():
            answer = await exchange(port, "GET", "/api/version", within=2)
            probes.append(answer.status)
            await asyncio.sleep(0.1)
        await waiters
        for _, w in conns:
            w.close()
    assert len(closed) == n
    assert max(closed) < timeout + 1.0
    assert probes
    assert set(probes) == {200}


# --- pure -------------------------------------------------------------------------------


def test_body_budget_and_rate() -> None:
    budget = BodyBudget(100)
    assert budget.take(60)
    assert not budget.take(41)
    assert budget.take(40)
    budget.give(100)
    assert budget.in_use == 0
    assert budget.refused == 1
    assert not body_too_slow(0, 5.0, 1000, 5.0)  # still in its grace
    assert body_too_slow(999, 6.0, 1000, 5.0)
    assert not body_too_slow(1000, 6.0, 1000, 5.0)


def test_reclaimer_coalesces_and_hurries_when_much_is_waiting() -> None:
    runs: list[int] = []

    async def main() -> None:
        r = Reclaimer(
            interval=0.3, delay=0.01, urgent=10 * BIG_BODY, collect=lambda: runs.append(1),
            trim=lambda: None,
        )  # fmt: skip
        r.released(BIG_BODY - 1)  # small bodies never ask
        await asyncio.sleep(0.05)
        assert runs == []
        for _ in range(3):
            r.released(BIG_BODY)
        await asyncio.sleep(0.05)
        assert runs == [1]  # three bodies, one collection
        r.released(BIG_BODY)
        await asyncio.sleep(0.05)
        assert runs == [1]  # within the interval: waits
        r.released(10 * BIG_BODY)  # urgent: now
        await asyncio.sleep(0.01)
        assert runs == [1, 1]
        r.close()

    asyncio.run(main())


async def _answered_before_its_body(
    port: int,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Answer]:
    """A connection whose first request (a refused store change, 403) was answered
    before its 10-byte body was sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST /api/copy HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 10\r\n\r\n"
    writer.write(head.encode())
    first = await read_answer(reader)
    assert first.status == 403
    return reader, writer, first


async def test_an_early_answer_to_a_small_body_keeps_the_connection(
    tight: RunningBridge,
) -> None:
    """Found by the fuzzer: a route that answers without reading a small body (here a
    refused store change), the body arriving after the head. The connection stays usable:
    the client was told nothing else, and its next request on it is answered."""
    port = port_of(tight)
    reader, writer, first = await _answered_before_its_body(port)
    try:
        assert first.header("connection") != "close"
        writer.write(b'{"a": 12}\n')
        writer.write(f"GET /api/version HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        second = await read_answer(reader)
        assert second.status == 200, second.body
    finally:
        writer.close()


@pytest.mark.parametrize(("path", "openai"), [("/v1/models", True), ("/api/tags", False)])
async def test_a_head_the_parser_refuses_is_a_400_in_the_routes_shape(
    tight: RunningBridge, path: str, openai: bool
) -> None:
    port = port_of(tight)
    answer = await exchange(port, "BREW", path)
    assert answer.status == 400
    body = answer.json()
    assert isinstance(body, dict)
    if openai:
        assert set(body["error"]) == {"message", "type", "param", "code"}
    else:
        assert isinstance(body["error"], str)
    assert "invalid HTTP request" in str(body)


async def test_a_refused_head_after_an_undrained_body_is_in_the_routes_shape(
    tight: RunningBridge,
) -> None:
    """Found by the fuzzer: a route answers without reading a small body; the rest of that
    body and the next head (a method the parser refuses) arrive in one read, the request
    line after body bytes on one line. The 400 still takes the shape of its own path."""
    port = port_of(tight)
    reader, writer, _ = await _answered_before_its_body(port)
    try:
        brew = f"BREW /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
        writer.write(b'{"a": 1 }}' + brew.encode())
        second = await read_answer(reader)
        assert second.status == 400
        body = second.json()
        assert isinstance(body, dict)
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
    finally:
        writer.close()
        await writer.wait_closed()


def _samples(text: str, name: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            labels, value = line.rsplit(" ", 1)
            out[labels[len(name) :]] = float(value)
    return out


async def test_refusals_and_connections_are_counted(tight: RunningBridge) -> None:
    port = port_of(tight)
    assert (await exchange(port, "GET", "/api/tags", headers={"Host": "evil.com"})).status == 403
    big = {"Content-Length": str(10**9)}
    assert (await exchange(port, "POST", "/api/chat", headers=big)).status == 413
    assert (await exchange(port, "BREW", "/api/tags")).status == 400
    reader, writer = await _connect(tight)
    writer.write(b"GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
    assert (await closed_within(reader, HEAD_S + 2)) is not None
    writer.close()
    async with httpx.AsyncClient(base_url=tight.base_url) as c:
        text = (await c.get("/metrics")).text
    edge = _samples(text, "alb_edge_refusals_total")
    assert edge['{reason="host"}'] == 1
    assert edge['{reason="body_too_large"}'] == 1
    conns = _samples(text, "alb_connection_refusals_total")
    assert conns['{reason="bad_request"}'] == 1
    assert conns['{reason="head_timeout"}'] == 1
    assert _samples(text, "alb_client_connections")[""] >= 1  # the /metrics request itself
    budget = _samples(text, "alb_body_budget_bytes")
    assert budget == {'{kind="in_use"}': 0.0, '{kind="capacity"}': 100_000.0}


def test_reclaimer_under_uvloop_when_much_is_waiting() -> None:
    """The bridge runs on uvloop, whose ``call_at`` for a time already past returns a
    plain ``Handle`` (no ``when``): a second large body while an urgent collection is
    pending raised AttributeError in the ASGI app (found by the RSS test's runs)."""
    runs: list[int] = []

    async def main() -> None:
        r = Reclaimer(urgent=2 * BIG_BODY, collect=lambda: runs.append(1), trim=lambda: None)
        r.released(2 * BIG_BODY)  # urgent: scheduled for now
        r.released(BIG_BODY)  # must compare with the pending run, not ask its handle
        await asyncio.sleep(0.01)
        assert runs == [1]
        r.close()

    uvloop.run(main())
