"""Property-based fuzzing of a live bridge in front of ``ollamasim`` (issue #12).

Hypothesis drives real HTTP on a real socket over every route: arbitrary JSON, deep
nesting, huge numbers, case-variant keys, wrong types, NUL bytes, bytes that are not
JSON, odd methods. (Not schemathesis: the Ollama API has no OpenAPI document to drive
it, and hypothesis is the engine schemathesis runs on.) Every answer must be a 2xx, or
an error in the route's own shape, never a 5xx; afterwards no slot is held, a plain
request is still answered, and every inference request left exactly one access-log
event (none failed to build).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ollamasim.testing import RunningFleet, serve_in_thread
from tests.bridge._support import SIM_CONFIG, running_bridge, settings_for

pytestmark = pytest.mark.slow

#: At least 5,000 in CI (the issue's floor); ALB_FUZZ_EXAMPLES for a longer local run.
EXAMPLES = int(os.environ.get("ALB_FUZZ_EXAMPLES", "5000"))

INFERENCE = [
    "/api/generate",
    "/api/chat",
    "/api/embed",
    "/api/embeddings",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
]
OTHER_POST = [
    "/api/show",
    "/api/pull",
    "/api/create",
    "/api/copy",
    "/api/delete",
    "/api/push",
    "/alb/v1/models/chatty/load",
    "/alb/v1/models/chatty/unload",
    "/alb/v1/models/other/pin",
    "/alb/v1/models/other/unpin",
    "/alb/v1/models/chatty/explode",
]
#: ``/api/blobs/{digest}`` answers HEAD (is the blob there?) and POST (upload one): a
#: digest, one that is not, and a path that tries to climb out.
BLOBS = [
    "/api/blobs/sha256-" + "0" * 64,
    "/api/blobs/sha256-xyz",
    "/api/blobs/..%2f..%2fetc%2fpasswd",
]
GETS = [
    "/",
    "/api/version",
    "/api/tags",
    "/api/ps",
    "/v1/models",
    "/v1/models/chatty",
    "/v1/models/..%2f..%2fetc",
    "/alb/v1/models",
    "/alb/v1/decisions?limit=abc&model=%00",
    "/alb/v1/events",
    "/alb/v1/predictor?limit=-5",
    "/alb/ui",
    "/alb/ui/app.js",
    "/healthz",
    "/readyz",
    "/metrics",
    "/nope",
]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "BREW"]
MODELS = ["chatty", "other", "vec", "CHATTY", "chatty:latest", "nope", "x:cloud", "", "a" * 300]
FIELDS = [
    "model",
    "prompt",
    "messages",
    "input",
    "stream",
    "keep_alive",
    "options",
    "system",
    "images",
    "tools",
    "user",
    "max_tokens",
    "name",
    "format",
    "think",
    "suffix",
]
HUGE = [2**63, 2**64 - 1, 2**64, -(2**63) - 1, 1e308, -1e308, 1e20, 10**400]


def _case_variants(key: str) -> st.SearchStrategy[str]:
    return st.sampled_from(
        [key, key.upper(), key.capitalize(), key.replace("k", "\u212a"), key.replace("s", "\u017f")]
    )


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["\x00", "a\x00b", "5m", "-1", "0", "1h", "forever"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def near_valid(draw: st.DrawFn) -> dict[str, Any]:
    """A request body close to a real one, with a few fields mutated."""
    doc: dict[str, Any] = {"model": draw(st.sampled_from(MODELS))}
    if draw(st.booleans()):
        doc["messages"] = [{"role": "user", "content": "hi"}]
    else:
        doc["prompt"] = "hi"
    doc["stream"] = draw(st.booleans())
    for _ in range(draw(st.integers(0, 4))):
        field = draw(st.sampled_from(FIELDS))
        key = draw(_case_variants(field))
        value = draw(
            st.one_of(
                json_values,
                st.sampled_from(HUGE),
                st.builds(
                    lambda n: {"num_ctx": n}, st.one_of(st.integers(), st.sampled_from(HUGE))
                ),
                st.just([{"role": "user", "content": 5, "tool_calls": 3}]),
            )
        )
        doc[key] = value
    return doc


def _encode(doc: Any) -> bytes:
    try:
        return orjson.dumps(doc)
    except TypeError:  # integers orjson cannot write: as JSON text
        return repr(doc).encode()


_PREFIX = b'{"model":"chatty","prompt":"x",'
bodies = st.one_of(
    near_valid().map(_encode),
    json_values.map(_encode),
    st.integers(1, 400).map(lambda n: _PREFIX + b'"a":' + b"[" * n + b"]" * n + b"}"),
    st.sampled_from(HUGE).map(lambda n: _PREFIX + b'"options":{"num_ctx":%s}}' % str(n).encode()),
    st.binary(max_size=64),
    st.builds(lambda d: _encode(d).replace(b'"hi"', b'"h\\u0000i"'), near_valid()),
    st.just(b'{"model":"chatty\x00","prompt":"x"}'),
    st.just(b""),
)  # fmt: skip


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, bytes]:
    kind = draw(st.integers(0, 9))
    if kind < 6:
        return "POST", draw(st.sampled_from(INFERENCE)), draw(bodies)
    if kind < 8:
        return "POST", draw(st.sampled_from(OTHER_POST + BLOBS)), draw(bodies)
    paths = GETS + INFERENCE + BLOBS
    return draw(st.sampled_from(METHODS)), draw(st.sampled_from(paths)), draw(bodies)


def _shape_ok(path: str, response: httpx.Response) -> bool:
    if response.status_code < 400 or response.request.method == "HEAD":
        return True  # (an answer to HEAD has no body to shape)
    if response.status_code in (404, 405) and response.text == "404 page not found":
        return True  # Ollama's (gin's) answer to an unknown route or method
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return False
    if path.startswith("/v1/"):
        err = body.get("error") if isinstance(body, dict) else None
        return isinstance(err, dict) and set(err) == {"message", "type", "param", "code"}
    return isinstance(body, dict) and isinstance(body.get("error"), str)


class _ThreadBridge:
    """The bridge on a real socket, served from its own thread's event loop (hypothesis
    runs synchronously)."""

    def __init__(self, fleet: RunningFleet) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._cm = running_bridge(settings_for(fleet, heartbeat_interval=0.05))
        self.bridge = self._run(self._cm.__aenter__())

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def close(self) -> None:
        self._run(self._cm.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="module")
def live() -> Iterator[tuple[_ThreadBridge, httpx.Client]]:
    with serve_in_thread(SIM_CONFIG) as fleet:
        tb = _ThreadBridge(fleet)
        try:
            with httpx.Client(base_url=tb.bridge.base_url, timeout=30) as client:
                yield tb, client
        finally:
            tb.close()


def _sample(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


class _Tally:
    inference = 0
    bad: list[tuple[str, str, int, str]] = []  # noqa: RUF012


def test_fuzz_every_route(live: tuple[_ThreadBridge, httpx.Client]) -> None:
    _, client = live
    tally = _Tally()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(requests())
    def one(req: tuple[str, str, bytes]) -> None:
        method, path, body = req
        if method == "POST" and path in INFERENCE:
            tally.inference += 1
        try:
            r = client.request(method, path, content=body if method != "GET" else None)
        except httpx.HTTPError as exc:  # a cut connection is a defect too
            tally.bad.append((method, path, 0, repr(exc)))
            return
        if r.status_code >= 500 or not _shape_ok(path, r):
            tally.bad.append((method, path, r.status_code, f"{r.text[:200]} <- {body[:300]!r}"))

    one()
    assert tally.bad == [], "\n".join(map(str, sorted(set(tally.bad))))
    assert tally.inference > EXAMPLES // 2

    # No slot held, and the bridge still answers.
    models = client.get("/alb/v1/models").json()
    held = {(d["name"], m["model"]): m["in_flight"] for d in models["daemons"] for m in d["models"]}
    assert all(v == 0 for v in held.values()), held
    r = client.post("/api/generate", json={"model": "chatty", "prompt": "hi", "stream": False})
    assert r.status_code == 200, r.text
    tally.inference += 1

    # One access-log event per inference request, none failed to build.
    built = 0.0
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        metrics = client.get("/metrics").text
        built = _sample(metrics, 'alb_events_built_total{kind="access_log"}')
        if built >= tally.inference:
            break
        time.sleep(0.1)
    assert _sample(metrics, "alb_events_build_failures_total") == 0
    assert built == tally.inference
