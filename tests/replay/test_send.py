"""``alb replay send`` against a bridge started in-process over the simulator (loopback)."""

from __future__ import annotations

from datetime import timedelta

from ollamasim.testing import serve_in_thread
from predictor.traces.format import DEFAULT_EPOCH, TraceRecord
from replay.send import body_for, send_trace
from tests.bridge._support import SIM_CONFIG, running_bridge, settings_for


def _rec(s: float, model: str, endpoint: str, api: str, **kw: object) -> TraceRecord:
    data: dict[str, object] = {
        "ts": DEFAULT_EPOCH + timedelta(seconds=s),
        "session": "s1",
        "model": model,
        "endpoint": endpoint,
        "api": api,
        "prompt_tokens": 5,
        "output_tokens": 3,
        "system_prompt_hash": None,
        "prefix_hash": None,
        "num_ctx": None,
        "stream": True,
    }
    data.update(kw)
    return TraceRecord.model_validate(data)


def test_body_follows_the_api() -> None:
    native = body_for(_rec(0, "m", "/api/chat", "native", num_ctx=4096, stream=False))
    assert native["options"] == {"num_predict": 3, "num_ctx": 4096}
    assert native["messages"][0]["content"].count("hello") == 5
    v1 = body_for(_rec(0, "m", "/v1/completions", "openai"))
    assert v1["max_tokens"] == 3
    assert "options" not in v1
    assert "prompt" in v1


async def test_send_replays_a_tiny_trace_through_the_bridge() -> None:
    trace = [
        _rec(0.0, "chatty", "/api/chat", "native"),
        _rec(0.5, "chatty", "/api/generate", "native", stream=False),
        _rec(1.0, "other", "/v1/chat/completions", "openai"),
        _rec(1.5, "chatty", "/v1/completions", "openai", stream=False),
        _rec(2.0, "other", "/api/chat", "native", num_ctx=4096),
    ]
    with serve_in_thread(SIM_CONFIG) as fleet:
        async with running_bridge(settings_for(fleet)) as bridge:
            assert bridge.base_url.startswith("http://127.0.0.1:")
            done: list[int] = []
            report = await send_trace(
                trace, bridge.base_url, speed=10.0, concurrency=4, progress=done.append
            )
    assert report.sent == len(trace) == len(done)
    assert dict(report.statuses) == {200: len(trace)}
    assert report.failures == 0
    assert report.cold >= 2  # the first request of each model found it cold
    assert report.wall_s >= 2.0 / 10.0
    assert report.summary()["p99_latency_s"] >= report.summary()["p50_latency_s"]
