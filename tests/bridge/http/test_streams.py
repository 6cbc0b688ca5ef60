"""The streaming relay over real sockets: byte fidelity, in-band failures,
cancellation, retries before the first byte, heartbeats."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from ollamasim.eventlog import SimEvent
from ollamasim.testing import RunningFleet, serve_in_thread
from tests.bridge._support import SIM_CONFIG, RunningBridge, kinds, running_bridge, settings_for

CHAT = {"model": "chatty", "messages": [{"role": "user", "content": "tell me a story"}]}
V1_CHAT = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}

# Fields the simulator fills from its clock or a random id: normalised before comparing.
_VOLATILE = [
    (re.compile(rb'"created_at":"[^"]*"'), b'"created_at":"T"'),
    (re.compile(rb'"id":"(chatcmpl|cmpl)-[^"]*"'), b'"id":"ID"'),
    (re.compile(rb'"created":\d+'), b'"created":0'),
    (re.compile(rb'"(total|load|prompt_eval|eval)_duration":\d+'), rb'"\1_duration":0'),
]


def _normalise(raw: bytes) -> bytes:
    for pattern, repl in _VOLATILE:
        raw = pattern.sub(repl, raw)
    return raw


async def _raw(client: httpx.AsyncClient, url: str, body: object) -> tuple[int, str, bytes]:
    async with client.stream("POST", url, json=body) as r:
        data = b"".join([c async for c in r.aiter_raw()])
        return r.status_code, r.headers.get("content-type", ""), data


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/chat", CHAT),
        ("/api/generate", {"model": "chatty", "prompt": "once upon a time"}),
        ("/api/chat", {**CHAT, "stream": False}),
        ("/v1/chat/completions", V1_CHAT),
        ("/v1/completions", {"model": "chatty", "prompt": "once", "stream": True}),
        ("/v1/chat/completions", {**CHAT, "stream": False}),
        ("/api/embed", {"model": "vec", "input": ["a", "b"]}),
    ],
)
async def test_bridge_bytes_equal_the_daemons(
    fleet: RunningFleet, client: httpx.AsyncClient, path: str, body: dict[str, object]
) -> None:
    async with httpx.AsyncClient(base_url=fleet.daemon("a").base_url, timeout=20) as direct:
        await _raw(client, path, body)  # warm, through the bridge
        via_status, via_type, via = await _raw(client, path, body)
        d_status, d_type, raw = await _raw(direct, path, body)
    assert (via_status, via_type) == (d_status, d_type) == (200, d_type)
    assert via
    assert _normalise(via) == _normalise(raw)


async def test_error_mid_stream_is_relayed_as_the_final_line(
    fleet: RunningFleet, client: httpx.AsyncClient
) -> None:
    await _raw(client, "/api/chat", CHAT)
    fleet.daemon("a").faults.error_mid_stream(after_chunks=2, message="runner died")
    status, _, data = await _raw(client, "/api/chat", CHAT)
    lines = data.splitlines()
    assert status == 200
    assert len(lines) == 3
    assert lines[-1] == b'{"error":"runner died"}'


async def test_stream_without_done_ends_with_an_error_line(
    fleet: RunningFleet, client: httpx.AsyncClient
) -> None:
    await _raw(client, "/api/chat", CHAT)
    fleet.daemon("a").faults.end_stream_early(after_chunks=2)
    status, _, data = await _raw(client, "/api/chat", CHAT)
    lines = data.splitlines()
    assert status == 200
    assert len(lines) == 3
    assert b'"done":true' not in data
    assert lines[-1].startswith(b'{"error":"the daemon\'s stream ended without done: true"')


@pytest.mark.parametrize("fault", ["error", "early"])
async def test_cut_v1_stream_ends_with_an_sse_error_event(
    fleet: RunningFleet, client: httpx.AsyncClient, fault: str
) -> None:
    await _raw(client, "/api/chat", CHAT)
    faults = fleet.daemon("a").faults
    if fault == "error":
        faults.error_mid_stream(after_chunks=2, message="runner died")
    else:
        faults.end_stream_early(after_chunks=2)
    status, _, data = await _raw(client, "/v1/chat/completions", V1_CHAT)
    events = data.split(b"\n\n")
    assert status == 200
    assert b"data: [DONE]" not in events
    assert events[-1] == b""
    assert events[-2].startswith(b'data: {"error":{"message":"the daemon\'s stream ended')


SLOW_CONFIG = {
    **SIM_CONFIG,
    "models": [
        *SIM_CONFIG["models"],
        {"name": "slowgen", "size": 2**30, "response_tokens": 300, "gen_tokens_per_s": 1},
    ],
}


@pytest.fixture
def slow_fleet() -> Iterator[RunningFleet]:
    with serve_in_thread(SLOW_CONFIG) as f:
        yield f


@pytest.fixture
async def slow_client(slow_fleet: RunningFleet) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        running_bridge(settings_for(slow_fleet)) as b,
        httpx.AsyncClient(base_url=b.base_url, timeout=20) as c,
    ):
        yield c


SLOW = {"model": "slowgen", "messages": [{"role": "user", "content": "go on"}]}


async def test_client_disconnect_cancels_the_upstream_request(
    slow_fleet: RunningFleet, slow_client: httpx.AsyncClient
) -> None:
    d = slow_fleet.daemon("a")
    async with slow_client.stream("POST", "/api/chat", json=SLOW) as r:
        async for _ in r.aiter_raw():
            break  # one chunk, then hang up mid-stream

    def served(events: list[SimEvent]) -> list[SimEvent]:
        return [e for e in events if e.kind == "request-end" and e.reason != "load"]

    events = await asyncio.to_thread(d.wait_for_event, lambda ev: bool(served(ev)), 5)
    assert [e.reason for e in served(events)] == ["cancelled"]


async def test_crash_mid_stream_is_reported_in_band(
    slow_fleet: RunningFleet, slow_client: httpx.AsyncClient
) -> None:
    d = slow_fleet.daemon("a")
    got = b""
    async with slow_client.stream("POST", "/api/chat", json=SLOW) as r:
        async for chunk in r.aiter_raw():
            if not got:
                await asyncio.to_thread(d.crash)
            got += chunk
    assert r.status_code == 200
    last = got.splitlines()[-1]
    assert last.startswith(b'{"error":"')
    assert b'"done":true' not in got
    assert "request-interrupted" in kinds(d.events())


async def test_failures_before_the_first_byte_are_retried(
    fleet: RunningFleet, client: httpx.AsyncClient
) -> None:
    await _raw(client, "/api/chat", CHAT)
    fleet.daemon("a").faults.fail_requests(count=2, status=500, message="flaky")
    status, _, data = await _raw(client, "/api/chat", CHAT)
    assert status == 200
    assert data.splitlines()[-1].find(b'"done":true') > 0
    metrics = (await client.get("/metrics")).text
    assert 'alb_upstream_retries_total{daemon="a"} 2.0' in metrics


async def test_retries_are_bounded_and_the_daemons_error_passes_through(
    fleet: RunningFleet, client: httpx.AsyncClient
) -> None:
    await _raw(client, "/api/chat", CHAT)
    fleet.daemon("a").faults.fail_requests(count=10, status=500, message="broken")
    status, _, data = await _raw(client, "/api/chat", CHAT)
    assert (status, data) == (500, b'{"error":"broken"}')
    status, _, data = await _raw(client, "/v1/chat/completions", V1_CHAT)
    assert status == 500
    assert data == (b'{"error":{"message":"broken","type":"api_error","param":null,"code":null}}')


async def test_v1_stream_gets_heartbeats_while_its_model_loads(
    fleet: RunningFleet, bridge: RunningBridge, client: httpx.AsyncClient
) -> None:
    d = fleet.daemon("a")
    d.faults.hang_load("chatty")
    got = b""
    async with client.stream("POST", "/v1/chat/completions", json=V1_CHAT) as r:
        async for chunk in r.aiter_raw():
            got += chunk
            if got.count(b": keep-alive\n\n") == 2:
                d.faults.clear_hang()
    assert r.status_code == 200
    assert r.headers["x-alb-cold"] == "true"
    assert got.startswith(b": keep-alive\n\n")
    assert got.endswith(b"data: [DONE]\n\n")


async def test_native_stream_sends_nothing_until_the_model_answers(
    fleet: RunningFleet, client: httpx.AsyncClient
) -> None:
    d = fleet.daemon("a")
    d.faults.hang_load("chatty")
    task = asyncio.create_task(_raw(client, "/api/chat", CHAT))
    await asyncio.sleep(0.3)
    d.faults.clear_hang()
    status, _, data = await task
    assert status == 200
    assert data.startswith(b'{"model":"chatty"')
