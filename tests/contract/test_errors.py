"""Error bodies and status codes, exactly as Ollama writes them.

Facts: OLLAMA_FACTS.md §1. Source: server/routes.go @00188139 (handlers,
``writeModelRefParseError``, ``handleScheduleError``, ``allowedHostsMiddleware``),
internal/modelref/modelref.go @2e429a7f, api/types.go ``Duration.UnmarshalJSON``,
middleware/openai.go @077a50ba ``BaseWriter.writeError``, openai/openai.go ``NewError``.
"""

from __future__ import annotations

import httpx
import pytest

from tests.contract._support import Target

MISSING = "no-such-model-xyz"


def assert_openai_error(r: httpx.Response, status: int, message: str, etype: str) -> None:
    """openai.NewError: ``{"error":{"message","type","param":null,"code":null}}``, status kept.

    ``type``: main's ``BaseWriter.writeError`` passes the real status to NewError
    (400 invalid_request_error, 404 not_found_error, else api_error); v0.17.4's passes a
    hard-coded 500, so every /v1 error there is ``api_error`` (middleware/openai.go:62 in
    the v0.17.4 tree). Both are accepted; nothing else is."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    assert body["error"] == {
        "message": message,
        "type": body["error"]["type"],
        "param": None,
        "code": None,
    }
    assert body["error"]["type"] in {etype, "api_error"}, body


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/generate", {"model": MISSING, "prompt": "hi"}),
        ("/api/chat", {"model": MISSING, "messages": [{"role": "user", "content": "hi"}]}),
        ("/api/show", {"model": MISSING}),
    ],
)
def test_unknown_model_native(target: Target, path: str, body: dict[str, object]) -> None:
    """Generate/Chat: GetModelForRunner → fs.ErrNotExist → 404 ``model '%s' not found``;
    Show: GetModelInfo os.IsNotExist → same message with ``req.Model``."""
    with target.client() as c:
        r = c.post(path, json=body)
    assert r.status_code == 404, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == {"error": f"model '{MISSING}' not found"}


def test_unknown_model_embed(target: Target) -> None:
    """EmbedHandler calls scheduleRunner without a prior GetModelForRunner, so the miss goes
    through handleScheduleError: 404 ``model %q not found, try pulling it first`` (Go %q →
    double quotes)."""
    with target.client() as c:
        r = c.post("/api/embed", json={"model": MISSING, "input": "hi"})
    assert r.status_code == 404, r.text
    assert r.json() == {"error": f'model "{MISSING}" not found, try pulling it first'}


def test_unknown_model_v1_chat(target: Target) -> None:
    """ChatMiddleware → ChatHandler 404 → writeError → OpenAI shape, type not_found_error."""
    with target.client() as c:
        r = c.post(
            "/v1/chat/completions",
            json={"model": MISSING, "messages": [{"role": "user", "content": "hi"}]},
        )
    assert_openai_error(r, 404, f"model '{MISSING}' not found", "not_found_error")


def test_unknown_model_v1_retrieve(target: Target) -> None:
    """RetrieveMiddleware → ShowHandler 404 → writeError."""
    with target.client() as c:
        r = c.get(f"/v1/models/{MISSING}")
    assert_openai_error(r, 404, f"model '{MISSING}' not found", "not_found_error")


@pytest.mark.parametrize("value", ["-1", "300"])
@pytest.mark.parametrize("path", ["/api/generate", "/api/chat"])
def test_keep_alive_string_without_unit(target: Target, path: str, value: str) -> None:
    """api.Duration.UnmarshalJSON: strings go through time.ParseDuration, so a unit is
    required; the bind error is returned as 400 ``{"error": err.Error()}``."""
    body: dict[str, object] = {"model": target.model, "keep_alive": value}
    if path == "/api/chat":
        body["messages"] = []
    with target.client() as c:
        r = c.post(path, json=body)
    assert r.status_code == 400, r.text
    assert r.json() == {"error": f'time: missing unit in duration "{value}"'}


def test_missing_model_generate(target: Target) -> None:
    """modelref.ParseRef("") → ErrModelRequired → writeModelRefParseError fallback:
    404 ``model '' not found`` on /api/generate."""
    with target.client() as c:
        r = c.post("/api/generate", json={"prompt": "hi"})
    assert r.status_code == 404, r.text
    assert r.json() == {"error": "model '' not found"}


def test_missing_model_chat(target: Target) -> None:
    """ChatHandler's fallback for the same parse error is 400 ``model is required``."""
    with target.client() as c:
        r = c.post("/api/chat", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400, r.text
    assert r.json() == {"error": "model is required"}


def test_missing_model_show(target: Target) -> None:
    """ShowHandler: neither model nor name → 400 ``model is required``."""
    with target.client() as c:
        r = c.post("/api/show", json={})
    assert r.status_code == 400, r.text
    assert r.json() == {"error": "model is required"}


def test_missing_body(target: Target) -> None:
    """Every native handler maps io.EOF from ShouldBindJSON to 400 ``missing request body``."""
    with target.client() as c:
        r = c.post("/api/generate", content=b"", headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json() == {"error": "missing request body"}


@pytest.mark.parametrize(("path", "verb"), [("/api/generate", "generate"), ("/api/chat", "chat")])
def test_completion_on_embedding_model(embed_target: Target, path: str, verb: str) -> None:
    """Generate/ChatHandler: errCapabilityCompletion → 400 ``%q does not support <verb>``
    with the name as sent (also for the load form with no prompt / no messages)."""
    model = embed_target.embed_model
    assert model is not None
    body: dict[str, object] = {"model": model}
    body |= {"prompt": "hi"} if verb == "generate" else {"messages": []}
    with embed_target.client() as c:
        r = c.post(path, json=body)
    assert r.status_code == 400, r.text
    assert r.json() == {"error": f'"{model}" does not support {verb}'}


def test_host_check(target: Target) -> None:
    """allowedHostsMiddleware (loopback listener only): non-local Host → 403 with an empty
    body; localhost, *.localhost/.local/.internal and private/loopback IPs pass."""
    if not target.loopback_listener:
        pytest.skip("Host check applies only when Ollama listens on a loopback address")
    with target.client() as c:
        for bad in ("evil.example.com", "example.com:11434", "8.8.8.8"):
            r = c.get("/api/version", headers={"host": bad})
            assert r.status_code == 403, (bad, r.status_code)
            assert r.content == b"", (bad, r.content)
        for good in (
            "localhost",
            "localhost:11434",
            "foo.localhost",
            "box.local",
            "svc.internal",
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.5:8080",
        ):
            r = c.get("/api/version", headers={"host": good})
            assert r.status_code == 200, (good, r.status_code)
