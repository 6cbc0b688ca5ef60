"""How failures look on the wire (sim only: a real daemon cannot be made to fail on cue).

Facts: OLLAMA_FACTS.md §4 (errors in streams) and §1 (/v1 error mapping). Source:
server/routes.go @00188139 ``streamResponse`` (error before the first byte → status +
``{"error"}`` as application/json; after it → a final ``{"error"}`` line, status stays 200),
middleware/openai.go @077a50ba ``ChatWriter.Write`` (non-200 → ``writeError`` → OpenAI error
object; a 200 stream only ends with ``data: [DONE]`` when the native done object arrives).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.contract._support import Target


@pytest.fixture
def faulty(target: Target) -> Iterator[Target]:
    if target.kind != "sim" or not target.supports_faults:
        pytest.skip("sim only: needs fault injection")
    faults = target.fleet.daemons[0].faults
    faults.clear()
    yield target
    faults.clear()


def test_native_error_mid_stream(faulty: Target) -> None:
    """After the first chunk is written the status is already 200, so streamResponse
    encodes ``{"error": e}`` as the last NDJSON line; no ``done:true`` object follows."""
    t = faulty
    t.fleet.daemons[0].faults.error_mid_stream(after_chunks=2, message="boom")
    with (
        t.client() as c,
        c.stream(
            "POST", "/api/generate", json={"model": t.model, "prompt": "Tell me a story."}
        ) as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(x) for x in b"".join(r.iter_raw()).decode().splitlines() if x]
    assert lines[-1] == {"error": "boom"}
    assert len(lines) >= 2
    assert all(o.get("done") is False for o in lines[:-1])
    assert not any(o.get("done") for o in lines)


def test_native_error_before_first_byte(faulty: Target) -> None:
    """An error before anything was written keeps its status and is a plain JSON body
    (streamResponse: ``if !c.Writer.Written()`` → ``c.JSON(status, {"error": e})``)."""
    t = faulty
    t.fleet.daemons[0].faults.fail_requests(count=1, status=500, message="injected")
    with t.client() as c:
        r = c.post(
            "/api/chat", json={"model": t.model, "messages": [{"role": "user", "content": "hi"}]}
        )
    assert r.status_code == 500
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == {"error": "injected"}


def test_v1_error_before_first_byte(faulty: Target) -> None:
    """/v1: a non-200 native reply becomes the OpenAI error object with the same status;
    500 maps to type ``api_error`` (openai.NewError)."""
    t = faulty
    t.fleet.daemons[0].faults.fail_requests(count=1, status=500, message="injected")
    with t.client() as c:
        r = c.post(
            "/v1/chat/completions",
            json={
                "model": t.model,
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
            },
        )
    assert r.status_code == 500
    assert r.json() == {
        "error": {"message": "injected", "type": "api_error", "param": None, "code": None}
    }


def test_v1_error_mid_stream_has_no_done(faulty: Target) -> None:
    """A /v1 stream that fails after it began is still HTTP 200 and never reaches
    ``data: [DONE]`` (ChatWriter writes [DONE] only for the native done object). Every
    event that was written is a well-formed ``data: <json>`` event."""
    t = faulty
    t.fleet.daemons[0].faults.error_mid_stream(after_chunks=2, message="boom")
    with (
        t.client() as c,
        c.stream(
            "POST",
            "/v1/chat/completions",
            json={
                "model": t.model,
                "messages": [{"role": "user", "content": "Tell a story."}],
                "stream": True,
            },
        ) as r,
    ):
        assert r.status_code == 200
        raw = b"".join(r.iter_raw()).decode()
    events = [e for e in raw.split("\n\n") if e]
    assert events
    assert "data: [DONE]" not in events
    for e in events:
        assert e.startswith("data: ")
        json.loads(e[len("data: ") :])
