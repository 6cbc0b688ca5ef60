"""Load, unload, keep_alive and ``/api/ps``.

Facts: OLLAMA_FACTS.md §2-3. Source: server/routes.go @00188139 (GenerateHandler load /
unload branches, ChatHandler, EmbedHandler, PsHandler), server/sched.go
(``useLoadedRunner``, ``processCompleted``, ``expireRunner``), api/types.go
``Duration.UnmarshalJSON``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta

import httpx
import ollama

from tests.contract._support import (
    Target,
    norm,
    parse_go_time,
    ps_entry,
    wait_until,
)

METRIC_KEYS = {
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
}
PINNED_MIN = timedelta(days=365 * 200)  # now + MaxInt64 ns ≈ 292 years


def test_load_via_generate(fresh: Target) -> None:
    """GenerateHandler, empty prompt: after scheduling reply 200
    ``{"model","created_at","response":"","done":true,"done_reason":"load"}`` — model as
    sent, created_at UTC, Metrics all zero → omitted."""
    t = fresh
    with t.client() as c:
        r = c.post("/api/generate", json={"model": t.model})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["model"] == t.model
    assert body["response"] == ""
    assert body["done"] is True
    assert body["done_reason"] == "load"
    assert not METRIC_KEYS & set(body), f"load reply carries no timings: {body}"
    assert "context" not in body
    created = parse_go_time(body["created_at"])
    assert created.utcoffset() == timedelta(0), "created_at is time.Now().UTC()"
    assert ps_entry(t, t.model) is not None


def test_load_via_chat_empty_messages(fresh: Target) -> None:
    """ChatHandler, ``messages: []``: ``message:{"role":"assistant","content":""}``,
    done_reason "load"."""
    t = fresh
    with t.client() as c:
        r = c.post("/api/chat", json={"model": t.model, "messages": []})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == t.model
    assert body["message"] == {"role": "assistant", "content": ""}
    assert body["done"] is True
    assert body["done_reason"] == "load"
    assert not METRIC_KEYS & set(body)
    assert ps_entry(t, t.model) is not None


def test_unload(fresh: Target) -> None:
    """keep_alive 0 + empty prompt → immediate ``done_reason:"unload"``; the runner leaves
    /api/ps once idle (sched.go expireRunner). Chat form returns an assistant message."""
    t = fresh
    with t.client() as c:
        assert c.post("/api/generate", json={"model": t.model}).status_code == 200
        r = c.post("/api/generate", json={"model": t.model, "keep_alive": 0})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["done"] is True
        assert body["done_reason"] == "unload"
        assert body["response"] == ""
        assert body["model"] == t.model
        wait_until(lambda: ps_entry(t, t.model) is None, what="unload")
        # Chat form; unloading a model that is not loaded is still a 200 no-op.
        r = c.post("/api/chat", json={"model": t.model, "messages": [], "keep_alive": 0})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["done_reason"] == "unload"
        assert body["message"] == {"role": "assistant", "content": ""}


def test_ps_fields(fresh: Target) -> None:
    """PsHandler/ProcessModelResponse: name == model == ShortName (tag always shown), size,
    size_vram (ints), digest (64 hex), details, expires_at (RFC3339Nano with offset),
    context_length (int > 0 once loaded)."""
    t = fresh
    with t.client() as c:
        ref = _served_at(c.post("/api/generate", json={"model": t.model}))
    entry = ps_entry(t, t.model)
    assert entry is not None
    assert {
        "name",
        "model",
        "size",
        "size_vram",
        "digest",
        "details",
        "expires_at",
        "context_length",
    } <= set(entry)
    assert entry["name"] == entry["model"]
    assert norm(entry["name"]) == norm(t.model)
    assert entry["name"].lower().endswith(norm(t.model).split(":", 1)[1]), "tag is shown"
    assert ":" in entry["name"]
    assert isinstance(entry["size"], int)
    assert entry["size"] > 0
    assert isinstance(entry["size_vram"], int)
    assert 0 <= entry["size_vram"] <= entry["size"]
    assert len(entry["digest"]) == 64
    assert int(entry["digest"], 16) >= 0
    assert {"format", "family", "parameter_size", "quantization_level"} <= set(entry["details"])
    assert isinstance(entry["context_length"], int)
    assert entry["context_length"] > 0
    expires = parse_go_time(entry["expires_at"])
    # Default keep_alive is 5m (envconfig.KeepAlive); allow the fixture to have changed it,
    # but it must be in the future and not pinned.
    # (loading: now + sessionDuration; idle: end + keep_alive; pinned would be ~292 years)
    assert ref < expires < ref + PINNED_MIN


def _expiry_becomes(t: Target, ok: Callable[[datetime], bool], what: str) -> None:
    """expires_at is refreshed by processCompleted when the request's context ends, a
    moment after the reply; poll briefly instead of racing it."""

    def check() -> bool:
        entry = ps_entry(t, t.model)
        return entry is not None and ok(parse_go_time(entry["expires_at"]))

    wait_until(check, what=what, timeout=10.0)


def _served_at(r: httpx.Response) -> datetime:
    """The daemon's own clock: ``created_at`` of the reply (time.Now().UTC()). Comparing
    expires_at with it, not with this machine's clock, keeps the check valid for a
    simulator whose clock runs faster than wall time."""
    assert r.status_code == 200, r.text
    return parse_go_time(r.json()["created_at"])


def test_keep_alive_pinned_and_sticky(fresh: Target) -> None:
    """Negative keep_alive → MaxInt64 → expires_at ≈ now + 292 years. It sticks: a request
    without keep_alive keeps it (useLoadedRunner only overwrites when the request sets it);
    a later keep_alive "10m" replaces it; a number is seconds; a negative duration string
    pins again. expires_at = (request end) + keep_alive (processCompleted)."""
    t = fresh
    slack = timedelta(minutes=1)

    def near(ref: datetime, ahead: timedelta) -> Callable[[datetime], bool]:
        return lambda e: ref + ahead - slack <= e <= ref + ahead + slack

    with t.client() as c:
        ref = _served_at(c.post("/api/generate", json={"model": t.model, "keep_alive": -1}))
        _expiry_becomes(t, lambda e: e > ref + PINNED_MIN, "pinned expires_at")

        # A request that does not mention keep_alive leaves the pin in place.
        ref = _served_at(c.post("/api/generate", json={"model": t.model}))
        time.sleep(0.2)
        entry = ps_entry(t, t.model)
        assert entry is not None
        assert parse_go_time(entry["expires_at"]) > ref + PINNED_MIN, entry["expires_at"]

        # A string with a unit replaces it.
        ref = _served_at(c.post("/api/generate", json={"model": t.model, "keep_alive": "10m"}))
        _expiry_becomes(t, near(ref, timedelta(minutes=10)), "expires_at = end + 10m")

        # A number is seconds.
        ref = _served_at(
            c.post("/api/chat", json={"model": t.model, "messages": [], "keep_alive": 1200})
        )
        _expiry_becomes(t, near(ref, timedelta(minutes=20)), "expires_at = end + 20m")

        # A negative duration string pins again.
        ref = _served_at(c.post("/api/generate", json={"model": t.model, "keep_alive": "-5m"}))
        _expiry_becomes(t, lambda e: e > ref + PINNED_MIN, "pinned again")


def test_v1_does_not_touch_keep_alive(fresh: Target) -> None:
    """openai.FromChatRequest sets no KeepAlive, so /v1 traffic neither pins nor resets."""
    t = fresh
    with t.client() as c:
        ref = _served_at(c.post("/api/generate", json={"model": t.model, "keep_alive": -1}))
        r = c.post(
            "/v1/chat/completions",
            json={
                "model": t.model,
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 2,
            },
        )
        assert r.status_code == 200, r.text
    time.sleep(0.2)
    entry = ps_entry(t, t.model)
    assert entry is not None
    assert parse_go_time(entry["expires_at"]) > ref + PINNED_MIN


def test_embed_model_load_and_embed(fresh: Target) -> None:
    """EmbedHandler: ``input: []`` loads and returns ``{"model":M,"embeddings":[]}``; real
    input returns L2-normalised vectors plus total_duration/load_duration/prompt_eval_count.
    Uses the official ollama client too."""
    t = fresh
    if t.embed_model is None:
        import pytest  # noqa: PLC0415

        pytest.skip(f"{t.kind}: no embedding-only model available")
    with t.client() as c:
        r = c.post("/api/embed", json={"model": t.embed_model, "input": []})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == t.embed_model
        assert body["embeddings"] == [], "EmbedResponse.Embeddings has no omitempty"
        assert ps_entry(t, t.embed_model) is not None

    with ollama.Client(host=t.base_url) as c:
        res = c.embed(model=t.embed_model, input=["hello", "world"])
    assert len(res.embeddings) == 2
    for vec in res.embeddings:
        assert len(vec) > 0
        norm2 = sum(x * x for x in vec)
        assert abs(norm2 - 1.0) < 1e-3, "EmbedHandler L2-normalises every vector"
    assert isinstance(res.prompt_eval_count, int)
    assert res.prompt_eval_count > 0
    assert isinstance(res.total_duration, int)
