"""Pure unit tests: durations, names, scheduling policy, wire framing."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ollamasim import names
from ollamasim import scheduler as policy
from ollamasim.config import FleetConfig, parse_size
from ollamasim.durations import (
    MAX_DURATION_NS,
    NANOS,
    DurationError,
    format_go_time,
    go_time_from_unix,
    human_bytes2,
    parse_go_duration,
    parse_keep_alive,
)
from ollamasim.serving import bind_socket
from ollamasim.streams import (
    NDJSONFramer,
    SSEFramer,
    TruncatedFrame,
    go_json,
    ndjson_line,
    sse_event,
)


@pytest.mark.parametrize(
    ("raw", "ns"),
    [
        (0, 0),
        (300, 300 * NANOS),
        (1.5, int(1.5 * NANOS)),
        (-1, MAX_DURATION_NS),
        ("10m", 600 * NANOS),
        ("1h30m", 5400 * NANOS),
        ("0", 0),
        ("-1m", MAX_DURATION_NS),
        ("1.5s", 1500 * 1_000_000),
        ("250ms", 250 * 1_000_000),
    ],
)
def test_keep_alive_values(raw: object, ns: int) -> None:
    assert parse_keep_alive(raw) == ns


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("300", 'time: missing unit in duration "300"'),
        ("-1", 'time: missing unit in duration "-1"'),
        ("abc", 'time: invalid duration "abc"'),
        ("", 'time: invalid duration ""'),
        ("5d", 'time: unknown unit "d" in duration "5d"'),
        (True, "Unsupported type: 'bool'"),
        ([1], "Unsupported type: '[]interface {}'"),
    ],
)
def test_keep_alive_errors_match_go(raw: object, message: str) -> None:
    with pytest.raises(DurationError) as exc:
        parse_keep_alive(raw)
    assert str(exc.value) == message


@given(
    st.integers(min_value=0, max_value=10**6), st.sampled_from(["ns", "us", "ms", "s", "m", "h"])
)
def test_go_duration_integers(n: int, unit: str) -> None:
    scale = {"ns": 1, "us": 1000, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
    assert parse_go_duration(f"{n}{unit}") == n * scale[unit]


def test_go_time_format() -> None:
    t = dt.datetime(2024, 5, 1, 12, 0, 0, 120000, tzinfo=dt.UTC)
    assert format_go_time(t) == "2024-05-01T12:00:00.12Z"
    t2 = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.timezone(dt.timedelta(hours=-7)))
    assert format_go_time(t2) == "2024-05-01T12:00:00-07:00"


def test_pinned_expiry_is_292_years_ahead() -> None:
    now = 1_700_000_000.0
    text = go_time_from_unix(now + MAX_DURATION_NS / NANOS, utc=True)
    assert text.startswith("2316-")  # 2023-11-14 + 292.47 years


def test_human_bytes2() -> None:
    assert human_bytes2(int(19.1 * 1024**3)) == "19.1 GiB"
    assert human_bytes2(512 * 1024**2) == "512.0 MiB"


@pytest.mark.parametrize(
    ("given_name", "shortest"),
    [
        ("llama3", "llama3:latest"),
        ("LLaMA3", "LLaMA3:latest"),
        ("llama3:8b", "llama3:8b"),
        ("registry.ollama.ai/library/llama3", "llama3:latest"),
        ("user/model", "user/model:latest"),
        ("example.com/u/m:t", "example.com/u/m:t"),
    ],
)
def test_names(given_name: str, shortest: str) -> None:
    assert names.display_shortest(given_name) == shortest


def test_normalize_is_case_insensitive() -> None:
    assert names.normalize("LLaMA3") == names.normalize("llama3:latest") == "llama3:latest"


def test_parse_size() -> None:
    assert parse_size("24GiB") == 24 * 1024**3
    assert parse_size("24GB") == 24 * 10**9
    assert parse_size(123) == 123
    with pytest.raises(ValueError, match="invalid size"):
        parse_size("lots")


def _opts(**kw: object) -> policy.RunnerOptions:
    return policy.resolve_runner_options(kw, {}, default_ctx=4096, train_ctx=8192)


def test_needs_reload_on_runner_options_only() -> None:
    base = _opts()
    assert not policy.needs_reload(base, _opts(temperature=0.1, seed=3, top_p=0.5))
    assert policy.needs_reload(base, _opts(num_ctx=8192))
    assert policy.needs_reload(base, _opts(num_batch=256))
    assert policy.needs_reload(base, _opts(num_thread=4))
    assert policy.needs_reload(base, _opts(use_mmap=False))
    assert policy.needs_reload(base, _opts(main_gpu=1))
    assert policy.needs_reload(_opts(num_gpu=10), _opts(num_gpu=20))
    assert not policy.needs_reload(_opts(num_gpu=10), _opts(num_gpu=-1))


def test_num_ctx_clamped_to_training_context() -> None:
    big = _opts(num_ctx=100_000)
    assert big.num_ctx == 8192
    assert not policy.needs_reload(_opts(num_ctx=8192), big)


def test_default_num_ctx_vram_tiers() -> None:
    gib = 1024**3
    assert policy.default_num_ctx(16 * gib) == 4096
    assert policy.default_num_ctx(24 * gib) == 32768
    assert policy.default_num_ctx(80 * gib) == 262144
    assert policy.default_num_ctx(80 * gib, context_length_env=8192) == 8192


def test_unload_picks_shortest_keep_alive_idle_first() -> None:
    c = policy.UnloadCandidate
    cands = [
        c("a", 600 * NANOS, 0),
        c("b", 60 * NANOS, 1),
        c("c", 300 * NANOS, 0),
        c("pinned", MAX_DURATION_NS, 0),
    ]
    assert policy.pick_runner_to_unload(cands) == cands[2]  # b is busy
    busy = [c("a", 600 * NANOS, 1), c("b", 60 * NANOS, 2)]
    assert policy.pick_runner_to_unload(busy) == busy[1]
    assert policy.pick_runner_to_unload([c("p", MAX_DURATION_NS, 0), c("z", 0, 0)]).name == "z"
    assert policy.pick_runner_to_unload([]) is None


def test_go_json_escapes_html() -> None:
    assert go_json({"a": "<b>&"}) == b'{"a":"\\u003cb\\u003e\\u0026"}'


def test_ndjson_framer_any_split() -> None:
    stream = ndjson_line({"a": 1}) + ndjson_line({"b": "x y"}) + ndjson_line({"done": True})
    for cut in range(len(stream) + 1):
        f = NDJSONFramer()
        got = f.feed(stream[:cut]) + f.feed(stream[cut:])
        f.close()
        assert got == [{"a": 1}, {"b": "x y"}, {"done": True}]
    f = NDJSONFramer()
    f.feed(b'{"a":')
    with pytest.raises(TruncatedFrame):
        f.close()


def test_sse_framer_any_split() -> None:
    stream = sse_event({"x": 1}) + b": comment\n\n" + b"data: [DONE]\n\n"
    for cut in range(len(stream) + 1):
        f = SSEFramer()
        got = f.feed(stream[:cut]) + f.feed(stream[cut:])
        f.close()
        assert got == ['{"x":1}', "[DONE]"]


def test_fleet_validation() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        FleetConfig.model_validate(
            {"models": [{"name": "a", "size": 1}], "daemons": [{"name": "d", "models": ["b"]}]}
        )
    cfg = FleetConfig.model_validate(
        {"models": [{"name": "a", "size": "1GB"}], "daemons": [{"name": "d"}]}
    )
    assert cfg.daemons[0].max_runners == 3
    assert cfg.daemons[0].num_parallel == 1
    assert cfg.daemons[0].max_queue == 512


async def test_accepted_connections_disable_nagle() -> None:
    """A keep-alive response must not wait ~40 ms for a delayed ACK (Go's net disables Nagle)."""
    sock = bind_socket("127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    nodelay: asyncio.Future[int] = loop.create_future()

    class _Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted = transport.get_extra_info("socket")
            nodelay.set_result(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    server = await loop.create_server(_Probe, sock=sock)
    try:
        _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        assert await asyncio.wait_for(nodelay, 5) != 0
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
