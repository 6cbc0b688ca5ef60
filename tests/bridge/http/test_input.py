"""Bad input gets 400/413 in the API's own shape, never a 5xx or a stack trace."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.errors import Api, BadRequest, Forbidden
from bridge.http.app import create_app
from bridge.http.routes_native import CHAT, EMBED, GENERATE
from bridge.http.routes_openai import CHAT as V1_CHAT
from bridge.http.routes_openai import EMBEDDINGS as V1_EMBEDDINGS
from bridge.wire.parsing import Endpoint, Kind, parse, rewrite
from ollamasim.testing import RunningFleet, serve_in_thread
from tests.bridge._support import SIM_CONFIG, settings_for

ENDPOINTS = [GENERATE, CHAT, EMBED, V1_CHAT, V1_EMBEDDINGS]
NATIVE_PATHS = ["/api/generate", "/api/chat", "/api/embed", "/api/embeddings", "/api/show"]
OPENAI_PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]

BAD_BODIES: list[tuple[bytes, str]] = [
    (b"", "missing request body"),
    (b"{not json", "invalid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b"{}", "model is required"),
    (b'{"model": 42}', "invalid type for 'model'"),
    (b'{"model": "chatty", "stream": "yes"}', "invalid type for 'stream'"),
    (b'{"model": "chatty", "options": []}', "invalid type for 'options'"),
    (b'{"model": "chatty", "keep_alive": "-1"}', 'time: missing unit in duration \\"-1\\"'),
]


def _shape_ok(api: Api, body: Any) -> bool:
    if api is Api.NATIVE:
        return isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], str)
    err = body.get("error") if isinstance(body, dict) else None
    return isinstance(err, dict) and set(err) == {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def sim() -> Iterator[RunningFleet]:
    with serve_in_thread(SIM_CONFIG) as f:
        yield f


class _AppClient:
    """The ASGI app with its lifespan running on a private loop (hypothesis is sync)."""

    def __init__(self, fleet: RunningFleet, **overrides: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.app = create_app(settings_for(fleet, **overrides))
        self._cm = self.app.router.lifespan_context(self.app)
        self.loop.run_until_complete(self._cm.__aenter__())
        transport = httpx.ASGITransport(app=self.app)
        self.client = httpx.AsyncClient(transport=transport, base_url="http://localhost")

    def post(self, path: str, content: bytes) -> httpx.Response:
        return self.loop.run_until_complete(self.client.post(path, content=content))

    def close(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.run_until_complete(self._cm.__aexit__(None, None, None))
        self.loop.close()


@pytest.fixture(scope="module")
def app_client(sim: RunningFleet) -> Iterator[_AppClient]:
    c = _AppClient(sim, max_body_bytes=64 * 1024)
    yield c
    c.close()


@pytest.mark.parametrize(("body", "message"), BAD_BODIES)
@pytest.mark.parametrize("path", ["/api/generate", "/api/chat", "/v1/chat/completions"])
def test_bad_bodies_are_400_in_the_apis_shape(
    app_client: _AppClient, path: str, body: bytes, message: str
) -> None:
    api = Api.OPENAI if path.startswith("/v1") else Api.NATIVE
    r = app_client.post(path, body)
    assert r.status_code == 400, r.text
    assert _shape_ok(api, r.json())
    assert message in r.text
    assert "Traceback" not in r.text


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions", "/api/show"])
def test_body_over_the_cap_is_413(app_client: _AppClient, path: str) -> None:
    big = orjson.dumps({"model": "chatty", "prompt": "x" * (65 * 1024)})
    r = app_client.post(path, big)
    assert r.status_code == 413
    assert _shape_ok(Api.OPENAI if path.startswith("/v1") else Api.NATIVE, r.json())


def test_unknown_and_cloud_models(app_client: _AppClient) -> None:
    r = app_client.post("/api/embed", b'{"model": "nope", "input": "x"}')
    assert (r.status_code, r.json()) == (
        404,
        {"error": 'model "nope" not found, try pulling it first'},
    )
    r = app_client.post("/v1/chat/completions", b'{"model": "nope", "messages": []}')
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "not_found_error"
    r = app_client.post("/api/chat", b'{"model": "gpt-oss:120b-cloud", "messages": []}')
    assert r.status_code == 403
    assert "cloud" in r.json()["error"]


@pytest.mark.parametrize("name", ["a%0Ab", "%0A", "hf.co/x%0A/y"])
def test_a_model_name_with_a_newline_is_openais_404(app_client: _AppClient, name: str) -> None:
    # Found by test_schemathesis.py: Starlette's ``path`` convertor (``.*``) stopped at a
    # newline, so GET /v1/models/a%0Ab missed the route and got gin's text 404.
    r = app_client.loop.run_until_complete(app_client.client.get(f"/v1/models/{name}"))
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/json")
    assert _shape_ok(Api.OPENAI, r.json()), r.text
    assert r.json()["error"]["type"] == "not_found_error"


def test_an_admin_action_on_a_name_with_a_newline_is_answered_in_json(
    app_client: _AppClient,
) -> None:
    # Found by test_schemathesis.py: POST /alb/v1/models/a%0Ab/load missed the route
    # (Starlette's ``path`` stops at a newline) and got the text 404.
    r = app_client.loop.run_until_complete(app_client.client.post("/alb/v1/models/a%0Ab/load"))
    assert r.status_code == 404  # no such model, in Ollama's shape, not gin's text
    assert r.headers["content-type"].startswith("application/json")
    assert isinstance(r.json()["error"], str)


@pytest.mark.parametrize("path", ["/api/pull", "/api/delete", "/api/create", "/api/copy"])
def test_store_changes_are_refused_with_the_setting_named(
    app_client: _AppClient, path: str
) -> None:
    r = app_client.post(path, b'{"model": "chatty"}')
    assert r.status_code == 403
    assert "ALB_ALLOW_STORE_CHANGES" in r.json()["error"]


def test_model_names_are_normalised(app_client: _AppClient) -> None:
    r = app_client.post(
        "/api/generate", b'{"model": "CHATTY:latest", "prompt": "hi", "stream": false}'
    )
    assert r.status_code == 200
    assert r.json()["model"] == "CHATTY:latest"  # echoed as sent, as Ollama does


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_fields = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["chatty", "nope", "", "a/b/c/d", "x:cloud"]) | _json,
        "stream": _json,
        "keep_alive": st.sampled_from(["5m", "-1", "1h30m", "300", -1, 0]) | _json,
        "options": _json,
        "prompt": _json,
        "messages": _json,
        "input": _json,
        "user": _json,
    },
)
_bodies = st.binary(max_size=64) | _fields.map(orjson.dumps) | _json.map(orjson.dumps)


@given(body=_bodies, ep=st.sampled_from(ENDPOINTS))
@settings(max_examples=300, deadline=None)
def test_parser_only_raises_bad_request(body: bytes, ep: Endpoint) -> None:
    try:
        parsed = parse(body, ep)
    except (BadRequest, Forbidden):
        return
    assert parsed.key
    out = rewrite(body, parsed, "bridge", 0, 3600)
    assert "keep_alive" not in orjson.loads(out)
    if parsed.kind is not Kind.INFER:
        assert ep.api is Api.NATIVE


@given(
    body=_fields.map(orjson.dumps) | st.binary(max_size=32),
    path=st.sampled_from(NATIVE_PATHS + OPENAI_PATHS),
)
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_no_input_gets_a_5xx_through_the_app(
    app_client: _AppClient, body: bytes, path: str
) -> None:
    r = app_client.post(path, body)
    assert r.status_code < 500, (path, body, r.status_code, r.text)
    if r.status_code >= 400:
        api = Api.OPENAI if path.startswith("/v1") else Api.NATIVE
        assert _shape_ok(api, r.json()), r.text
