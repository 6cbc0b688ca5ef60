"""The events pipeline in embedded mode (in-process bus, memory registry): the access
log, model-state and decision events, the privacy rule, and the consumer's actions on
prefetch and warm-cache events against the simulator."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest

from bridge.events.builders import (
    access_log_event,
    conversation,
    decision_event,
    identify,
    model_state_event,
    status_of,
    token_counts,
)
from bridge.events.sink import RequestRecord
from bridge.policy.cold import COLD_CAUSES
from bridge.scheduling.decisions import Decision
from bridge.scheduling.loader import StateChange
from bridge.settings import load_settings
from ingest.contracts import validation_errors
from ingest.hashing import system_prompt_hash
from ingest.messages import Topic
from ollamasim.testing import RunningFleet, serve_in_thread
from tests.bridge._events import (
    bridge_of,
    events_of,
    invalid,
    prefetch,
    read_topic,
    runtime,
    sample,
    texts,
    wait_for,
    warm,
)
from tests.bridge._support import GIB, RunningBridge, running_bridge, settings_for

SYSTEM = "You are Captain Secret-Sauce, the confidential pirate assistant of ACME."
USER = "Tell me the hidden treasure coordinates 48.8566 2.3522 please"


# --- pure conversions -----------------------------------------------------------------


def _record(**kw: Any) -> RequestRecord:
    base: dict[str, Any] = {
        "endpoint": "/api/chat",
        "model": "chatty:latest",
        "status": 200,
        "session": "peer:1",
        "daemon": "a",
        "cold": False,
        "queue_ms": 0.1,
        "load_ms": 0.0,
        "ttft_ms": 2.0,
        "total_ms": 5.0,
        "stream_failed": False,
        "finished_at": time.time(),
    }
    return RequestRecord(**{**base, **kw})


@pytest.mark.parametrize(
    ("kw", "want"),
    [
        ({}, ("ok", None)),
        ({"status": 499, "error": "ClientGone"}, ("cancelled", "client_gone")),
        ({"status": 503, "error": "Overloaded"}, ("rejected", "overloaded")),
        ({"status": 404, "error": "ModelNotFound"}, ("rejected", "model_not_found")),
        ({"status": 502, "error": "UpstreamUnreachable"}, ("error", "upstream_unreachable")),
        ({"status": 200, "stream_failed": True}, ("error", "stream_failed")),
        ({"status": 500, "error": "UpstreamStatus"}, ("error", "upstream_status")),
    ],
)
def test_status_and_error_kind(kw: dict[str, Any], want: tuple[str, str | None]) -> None:
    record = _record(**kw)
    assert status_of(record) == want
    event, _ = access_log_event(record, "test")
    assert validation_errors(Topic.ACCESS_LOG.value, orjson.loads(event.to_json())) == []


def test_session_precedence_header_user_key() -> None:
    auth = [(b"authorization", b"Bearer sk-1")]
    both = [(b"x-alb-session", b"s-1"), *auth]
    assert identify(both, {"user": "u"})[:2] == ("s-1", "header")
    # A credential the bridge did not issue names the session, not a key (issue #16).
    assert identify(auth, {"user": "u"}) == ("u", "openai_user", None)
    session, source, key_id = identify(auth, {})
    assert (source, key_id) == ("api_key", None)
    assert session is not None
    assert session.startswith("key:")
    assert "sk-1" not in session
    # A key of the bridge's own (ALB_AUTH=keys) is the event's api_key_id.
    assert identify(auth, {"user": "u"}, "0123456789ab") == ("u", "openai_user", "0123456789ab")
    assert identify(auth, {}, "0123456789ab") == ("key:0123456789ab", "api_key", "0123456789ab")
    assert identify([], {}) == (None, None, None)


def test_conversation_and_counts() -> None:
    chat = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]}
    assert conversation("/api/chat", chat) == ("S", [("system", "S"), ("user", "U")])
    gen = {"system": "S", "prompt": "P"}
    assert conversation("/api/generate", gen) == ("S", [("system", "S"), ("user", "P")])
    assert conversation("/api/embed", {"input": "x"}) == (None, [])
    assert token_counts(b'{"done":true,"prompt_eval_count":12,"eval_count":5}') == (12, 5)
    assert token_counts(b'{"usage":{"prompt_tokens":3,"completion_tokens":4}}') == (3, 4)
    assert token_counts(b"data: [DONE]\n\n") == (None, None)


@pytest.mark.parametrize(
    "kind", ["load", "evict", "unload", "reject", "num_ctx", "pin", "prefetch", "warm"]
)
def test_every_decision_kind_with_a_model_is_a_valid_event(kind: Any) -> None:
    d = Decision(
        kind,
        "chatty:latest",
        "a",
        "chatty with num_ctx 4096 needs about 9.0 GiB; a can plan for 1.0 GiB",
        {"num_ctx": 4096, "needs": [1, 2], "budget": None, "value": float("inf")},
    )
    event = decision_event(d, "test")
    assert event is not None
    assert str(event.event_id) == d.event_id
    assert validation_errors(Topic.DECISIONS.value, orjson.loads(event.to_json())) == []
    assert decision_event(Decision("health", "", "a", "not-answering"), "test") is None


@pytest.mark.parametrize("state", ["loaded", "unloaded", "evicted", "load_failed"])
def test_model_state_events_are_valid(state: Any) -> None:
    row = {"size": GIB, "size_vram": GIB, "context_length": 4096}
    change = StateChange("a", "chatty:latest", state, "room for x", 12.0, 30.0, row, float("inf"))
    event = model_state_event(change, "test")
    assert event.keep_alive_s == -1.0
    assert validation_errors(Topic.MODEL_STATE.value, orjson.loads(event.to_json())) == []


# --- through the running bridge -----------------------------------------------------


async def test_every_request_leaves_one_valid_event_and_no_prompt_text(
    bridge: RunningBridge, client: httpx.AsyncClient
) -> None:
    chat = {
        "model": "chatty",
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}],
        "stream": False,
    }
    session = {"x-alb-session": "s-42"}
    calls: list[tuple[str, Any, dict[str, str]]] = [
        ("/api/chat", chat, session),
        ("/api/chat", {**chat, "stream": True, "options": {"num_ctx": 4096}}, session),
        ("/api/generate", {"model": "chatty", "system": SYSTEM, "prompt": USER}, {}),
        ("/v1/chat/completions", {**chat, "user": "alice", "stream": True}, {}),
        ("/v1/chat/completions", chat, {"authorization": "Bearer sk-secret"}),
        ("/api/embed", {"model": "vec", "input": USER}, {}),
        ("/api/chat", {**chat, "model": "nope"}, session),
        ("/api/chat", b"{not json", session),
    ]
    statuses = []
    for path, body, headers in calls:
        content = body if isinstance(body, bytes) else orjson.dumps(body)
        r = await client.post(path, content=content, headers=headers)
        statuses.append(r.status_code)
    assert statuses == [200, 200, 200, 200, 200, 200, 404, 400]

    events = events_of(bridge.app)
    got = await read_topic(events.bus, Topic.ACCESS_LOG.value, len(calls))
    docs = [d.json() for d in got]
    assert len({d["event_id"] for d in docs}) == len(calls) == len(docs)
    assert invalid(Topic.ACCESS_LOG.value, got) == []
    by_endpoint = [(d["endpoint"], d["http_status"], d["status"]) for d in docs]
    assert sorted(by_endpoint) == sorted(
        (p, s, "ok" if s == 200 else "rejected")
        for (p, _, _), s in zip(calls, statuses, strict=True)
    )
    first = next(d for d in docs if d["session"] == "s-42" and not d["stream"])
    assert first["session_source"] == "header"
    assert first["api"] == "native"
    assert first["daemon"] == "a"
    assert first["cold"] is True
    assert first["system_prompt_hash"] == system_prompt_hash(SYSTEM)
    assert first["prompt_tokens"]
    assert first["output_tokens"]
    assert first["prefix_hash"]
    assert first["num_ctx_applied"]
    assert first["ttft_ms"] is not None
    streamed = next(d for d in docs if d["session"] == "s-42" and d["stream"])
    assert streamed["num_ctx_requested"] == 4096
    assert streamed["output_tokens"]
    assert any(d["session_source"] == "openai_user" and d["session"] == "alice" for d in docs)
    keyed = next(d for d in docs if d["session_source"] == "api_key")
    # A credential the bridge did not issue names the session, not a key (issue #16).
    assert keyed["api_key_id"] is None
    assert keyed["session"].startswith("key:")
    assert "sk-secret" not in keyed["session"]
    missing = next(d for d in docs if d["http_status"] == 404)
    assert missing["error_kind"] == "model_not_found"
    assert missing["daemon"] is None
    # The registry resolves the hash (warm-cache events need the text back) ...
    assert await events.prompts.get(system_prompt_hash(SYSTEM)) == SYSTEM
    # ... while no topic carries any prompt text (nor the API key).
    states = await read_topic(events.bus, Topic.MODEL_STATE.value, 2)
    decisions = await read_topic(events.bus, Topic.DECISIONS.value, 1)
    everything = texts(got + states + decisions)
    for secret in (SYSTEM, USER, "Secret-Sauce", "48.8566", "sk-secret"):
        assert secret.encode() not in everything
    assert {d.json()["model"] for d in states} >= {"chatty:latest", "vec:latest"}
    assert all(d.json()["state"] == "loaded" for d in states)
    assert invalid(Topic.MODEL_STATE.value, states) == []
    assert invalid(Topic.DECISIONS.value, decisions) == []


async def test_events_status_route(bridge: RunningBridge, client: httpx.AsyncClient) -> None:
    r = await client.get("/alb/v1/events")
    assert r.status_code == 200
    doc = r.json()
    assert doc["mode"] == "embedded"
    assert doc["consumer_group"] == "alb-bridge"
    assert doc["producer"].startswith("alb-bridge/")


async def test_events_off_means_no_pipeline(fleet: RunningFleet) -> None:
    async with running_bridge(settings_for(fleet, events=False)) as b:
        async with httpx.AsyncClient(base_url=b.base_url, timeout=20) as c:
            r = await c.post("/api/chat", json={"model": "chatty", "messages": [], "stream": False})
            assert r.status_code == 200
        assert runtime(b.app).events is None
        assert runtime(b.app).consumer is None


# --- prefetch and warm-cache ----------------------------------------------------------

#: time_scale 0.1: a load takes (2 s + 1 GiB / 2 GiB/s) x 0.1 = 0.25 s of wall time; the
#: "slow" model answers in 40 tokens at 2 tokens/s = 2 s of wall time.
PREFETCH_SIM: dict[str, Any] = {
    "time_scale": 0.1,
    "gen_tokens_per_s": 2000,
    "prefill_tokens_per_s": 1000,
    "models": [
        {"name": "chatty", "size": GIB, "response_tokens": 4, "capabilities": ["completion"]},
        {"name": "other", "size": GIB, "response_tokens": 4, "capabilities": ["completion"]},
        {
            "name": "slow",
            "size": GIB,
            "response_tokens": 40,
            "gen_tokens_per_s": 2,
            "capabilities": ["completion"],
        },
    ],
    "daemons": [{"name": "a", "memory": 16 * GIB, "load_fixed_s": 2.0, "num_parallel": 2}],
}
LOAD_WALL_S = 0.25


@pytest.fixture
def sim() -> Iterator[RunningFleet]:
    with serve_in_thread(PREFETCH_SIM) as f:
        yield f


def _settings(fleet: RunningFleet, max_loaded: int = 3, **kw: Any) -> Any:
    url = fleet.daemon("a").base_url
    env = {"ALB_DAEMONS": f"a={url}?parallel=2&max_loaded={max_loaded}"}
    return load_settings(env, prefetch_rate=100.0, warm_rate=100.0, **kw)


@pytest.fixture
async def one_slot(sim: RunningFleet) -> AsyncIterator[RunningBridge]:
    """The bridge in front of a daemon that may hold one model at a time."""
    async with running_bridge(_settings(sim, max_loaded=1)) as b:
        consumer = runtime(b.app).consumer
        assert consumer is not None
        await asyncio.wait_for(consumer.ready.wait(), 10)
        yield b


def loads(fleet: RunningFleet, model: str) -> int:
    return sum(1 for e in fleet.daemon("a").events() if e.kind == "load-start" and e.model == model)


async def _publish(b: RunningBridge, event: Any) -> None:
    await events_of(b.app).bus.publish(event.TOPIC.value, event.key(), event)


async def _outcome(b: RunningBridge, metric: str, outcome: str, n: int = 1) -> float:
    registry = bridge_of(b.app).metrics.registry
    return await wait_for(
        lambda: sample(registry, metric, outcome=outcome) >= n, 10, f"{metric}{{{outcome}}}"
    )


async def test_prefetch_loads_a_cold_model_once_and_skips_duplicates_and_expired(
    sim: RunningFleet, one_slot: RunningBridge
) -> None:
    event = prefetch("chatty")
    started = time.monotonic()
    await _publish(one_slot, event)
    await _outcome(one_slot, "alb_prefetch_total", "loaded")
    took = time.monotonic() - started
    assert took <= LOAD_WALL_S + 1.0, took
    assert "chatty:latest" in runtime(one_slot.app).fleet.get("a").loaded
    await _publish(one_slot, event)  # the same event again (a redelivery)
    await _outcome(one_slot, "alb_prefetch_total", "duplicate")
    await _publish(one_slot, prefetch("other", expires_in_s=-1))
    await _outcome(one_slot, "alb_prefetch_total", "expired")
    assert loads(sim, "chatty:latest") == 1
    assert loads(sim, "other:latest") == 0
    # A real request now uses the prefetched runner: a hit.
    async with httpx.AsyncClient(base_url=one_slot.base_url, timeout=20) as c:
        r = await c.post("/api/generate", json={"model": "chatty", "prompt": "hi", "stream": False})
        assert r.status_code == 200
        assert r.headers["x-alb-cold"] == "false"
    registry = bridge_of(one_slot.app).metrics.registry
    await wait_for(lambda: sample(registry, "alb_prefetch_hits_total") == 1)
    decisions = [d.reason for d in bridge_of(one_slot.app).decisions.query(kind="prefetch")]
    assert decisions == ["prefetch_expired", "prefetch_duplicate", "prefetch_loaded"]
    # The prefetch's own wait for its load is no client's cold start.
    assert [sample(registry, "alb_cold_starts_total", cause=c) for c in COLD_CAUSES] == [0.0] * 4


async def test_prefetch_refuses_to_evict_a_busy_model_and_records_it(
    sim: RunningFleet, one_slot: RunningBridge
) -> None:
    async with httpx.AsyncClient(base_url=one_slot.base_url, timeout=20) as c:
        busy = asyncio.create_task(
            c.post("/api/generate", json={"model": "slow", "prompt": "go", "stream": False})
        )
        await asyncio.to_thread(
            sim.daemon("a").wait_for_event,
            lambda es: any(e.kind == "request-start" and e.model == "slow:latest" for e in es),
        )
        await _publish(one_slot, prefetch("chatty"))
        await _outcome(one_slot, "alb_prefetch_total", "refused_busy")
        assert not busy.done()
        assert (await busy).status_code == 200
    assert loads(sim, "chatty:latest") == 0
    [decision] = bridge_of(one_slot.app).decisions.query(kind="prefetch")
    assert decision.reason == "prefetch_refused_busy"
    assert decision.inputs["busy"] == "slow:latest"
    published = await read_topic(
        events_of(one_slot.app).bus,
        Topic.DECISIONS.value,
        1,
        where=lambda d: d["inputs"].get("kind") == "prefetch",
    )
    assert published[0].json()["decision"] == "reject"
    assert published[0].json()["reason"] == "prefetch_refused_busy"


async def test_prefetched_model_evicted_unused_is_wasted_and_a_more_valuable_one_stays(
    sim: RunningFleet, one_slot: RunningBridge
) -> None:
    await _publish(one_slot, prefetch("chatty", confidence=0.5))
    await _outcome(one_slot, "alb_prefetch_total", "loaded")
    async with httpx.AsyncClient(base_url=one_slot.base_url, timeout=20) as c:
        r = await c.post("/api/generate", json={"model": "other", "prompt": "hi", "stream": False})
        assert r.status_code == 200
    registry = bridge_of(one_slot.app).metrics.registry
    await wait_for(lambda: sample(registry, "alb_prefetch_wasted_total") == 1)
    assert sample(registry, "alb_prefetch_hits_total") == 0
    # "other" was just used: evicting it for a 50 % guess would lose more than it gains.
    await _publish(one_slot, prefetch("chatty", confidence=0.5))
    await _outcome(one_slot, "alb_prefetch_total", "refused_value")
    assert loads(sim, "chatty:latest") == 1
    assert "other:latest" in runtime(one_slot.app).fleet.get("a").loaded


async def test_warm_cache_gives_the_next_request_a_prefix_hit_without_reload(
    sim: RunningFleet,
) -> None:
    system = " ".join(f"rule{i} keep answers short and kind." for i in range(60))
    control = " ".join(f"other{i} keep answers long and formal." for i in range(60))
    async with running_bridge(_settings(sim)) as b:
        consumer = runtime(b.app).consumer
        assert consumer is not None
        await asyncio.wait_for(consumer.ready.wait(), 10)
        events = events_of(b.app)

        async def ask(c: httpx.AsyncClient, sys_prompt: str) -> dict[str, Any]:
            msgs = [{"role": "system", "content": sys_prompt}, {"role": "user", "content": "hi"}]
            r = await c.post(
                "/api/chat", json={"model": "chatty", "messages": msgs, "stream": False}
            )
            assert r.status_code == 200
            doc: dict[str, Any] = r.json()
            return doc

        async with httpx.AsyncClient(base_url=b.base_url, timeout=20) as c:
            r = await c.post(
                "/api/generate", json={"model": "chatty", "prompt": "x", "stream": False}
            )
            assert r.status_code == 200
            # Another replica saw this system prompt: the shared registry knows it.
            digest = await events.prompts.put(system)
            await _publish(b, warm("chatty", digest))
            await _outcome(b, "alb_warm_total", "warmed")
            warmed = await ask(c, system)
            cold = await ask(c, control)
            await _publish(b, warm("chatty", "0" * 64))
            await _outcome(b, "alb_warm_total", "unknown_prompt")
        assert warmed["prompt_eval_duration"] * 5 < cold["prompt_eval_duration"]
        assert warmed["load_duration"] <= 1_000_000  # the simulator's "already loaded" 0.1 ms
        assert loads(sim, "chatty:latest") == 1
        chats = [
            e
            for e in sim.daemon("a").events()
            if e.kind == "request-start" and e.detail.get("endpoint") == "/api/chat"
        ]
        assert len(chats) == 3  # the warm-up and the two measured requests
