"""Schemathesis against a live bridge in front of ``ollamasim``, from ``docs/openapi.yaml``
(issue #16, "Fuzzing in CI").

Every operation of the OpenAPI document gets schemathesis's examples phase (the
documented examples), its coverage phase (boundary values, missing and wrong-typed
fields, methods the route does not serve) and its fuzzing phase, positive and negative
data alike, over real HTTP on a real socket. Every answer must be below 500, carry no
traceback, put an error body in the route's own shape (OpenAI's under ``/v1/``, else
Ollama's, or gin's ``404 page not found`` text for a route or method that is not there),
and conform to the document (status code, content type, response schema): the document
is the bridge's reference and must not drift from what it answers. Afterwards no slot is
held and a plain request is still answered.

The budget is bounded for CI: ``ALB_SCHEMATHESIS_EXAMPLES`` fuzzed cases per operation
(default 50; the coverage phase adds its own fixed set), ``ALB_SCHEMATHESIS_SEED`` to
replay a run. A summary (seed, operations, cases, statuses per operation) is printed at
the end (``pytest -s`` shows it).

It runs twice: without keys, and with ``ALB_AUTH=keys`` (``live``).

Findings so far (each with its regression test in ``test_input.py``): a model name with
a newline in ``GET /v1/models/{model}`` and ``POST /alb/v1/models/{model}/{action}``
missed the route (Starlette's ``path`` convertor stops at a newline) and got the text
404 instead of the API's JSON.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
import schemathesis
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from bridge.policy.keys import parse_scopes
from bridge.tenancy import keyring
from bridge.tenancy.store import SqliteKeys
from ollamasim.testing import RunningFleet, serve_in_thread
from tests.bridge._support import SIM_CONFIG, RunningBridge, running_bridge, settings_for

pytestmark = pytest.mark.slow

DOC = Path(__file__).resolve().parents[3] / "docs" / "openapi.yaml"
#: Fuzzed cases per operation (~25 s for the file on 2 cores at 50; raise it locally).
EXAMPLES = int(os.environ.get("ALB_SCHEMATHESIS_EXAMPLES", "50"))
SEED = os.environ.get("ALB_SCHEMATHESIS_SEED")
#: The simulated fleet's models (``SIM_CONFIG``) and two spellings or names more, drawn
#: for most model names (body and path) so that generated requests also reach a daemon
#: rather than stopping at the bridge's 404; the document keeps ``model`` an open string.
SIM_MODELS = ["chatty", "other", "vec", "CHATTY:latest", "nope"]
TRACEBACK = b"Traceback (most recent call last)"
NOT_FOUND_TEXT = b"404 page not found"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

CONFIG = schemathesis.Config.from_dict(
    {
        **({"seed": int(SEED)} if SEED else {}),
        "dictionaries": {"models": {"values": SIM_MODELS}},
        "parameters": {
            "body.model": {"dictionary": "models", "probability": 0.6},
            "path.model": {"dictionary": "models", "probability": 0.6},
        },
        "generation": {"mode": "all", "max-examples": EXAMPLES, "database": "none"},
        # One request at a time: the document has no links for the stateful phase.
        "phases": {"stateful": {"enabled": False}},
        "request-timeout": 30,
    }
)
schema = schemathesis.openapi.from_path(DOC, config=CONFIG)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


_CASES = itertools.count()


class _Tally:
    """What the run sent, by operation and status (the closing summary)."""

    by_operation: dict[str, Counter[int]] = {}  # noqa: RUF012
    started = time.monotonic()

    @classmethod
    def summary(cls) -> str:
        total: Counter[int] = Counter()
        lines = []
        for label, statuses in sorted(cls.by_operation.items()):
            total.update(statuses)
            lines.append(f"  {label}: {_histogram(statuses)}")
        elapsed = time.monotonic() - cls.started
        head = (
            f"schemathesis {schemathesis.__version__} (seed {CONFIG.seed},"
            f" {EXAMPLES} examples): {len(cls.by_operation)} operations,"
            f" {total.total()} cases in {elapsed:.1f}s; statuses {_histogram(total)}"
        )
        return "\n".join([head, *lines])


def _histogram(statuses: Counter[int]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())) + "}"


class _ThreadBridge:
    """The bridge on a real socket, served from its own thread's event loop
    (schemathesis, like hypothesis, calls synchronously)."""

    def __init__(self, fleet: RunningFleet, keys_file: Path | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        extra: dict[str, Any] = {}
        if keys_file is not None:
            extra = {"auth": "keys", "keys_file": str(keys_file)}
        self._cm = running_bridge(settings_for(fleet, heartbeat_interval=0.05, **extra))
        self.bridge: RunningBridge = self._run(self._cm.__aenter__())

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def close(self) -> None:
        self._run(self._cm.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


Live = tuple[str, requests.Session, dict[str, str]]


@pytest.fixture(scope="module", params=["open", "keys"])
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    """The bridge without keys, then with ``ALB_AUTH=keys`` and a key holding
    ``inference`` and ``read`` (not ``admin``): a case that brings no credential of its
    own is sent with that key, one that does (schemathesis generates them from the
    security schemes) is sent as it is, so 401s and 403s are fuzzed too."""
    headers: dict[str, str] = {}
    keys_file = None
    if request.param == "keys":
        keys_file = tmp_path_factory.mktemp("keys") / "keys.sqlite"
        token, _ = asyncio.run(
            keyring.create(SqliteKeys(keys_file), "fuzz", parse_scopes("inference,read"))
        )
        headers = {"Authorization": f"Bearer {token}"}
    with serve_in_thread(SIM_CONFIG) as fleet:
        tb = _ThreadBridge(fleet, keys_file)
        try:
            with requests.Session() as session:
                yield tb.bridge.base_url, session, headers
        finally:
            tb.close()
            print(f"\n[{request.param}] " + _Tally.summary())
            _Tally.by_operation.clear()


def _shape_problem(path: str, method: str, status: int, content: bytes) -> str | None:
    """Why an error answer is not in the route's own shape (None: it is)."""
    if status < 400 or method == "HEAD":
        return None  # (an answer to HEAD has no body to shape)
    if status == 404 and content == NOT_FOUND_TEXT:
        return None  # gin's answer to an unknown route, method or admin action
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return "the error body is not JSON"
    if path.startswith("/v1/"):
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict) and set(err) == {"message", "type", "param", "code"}:
            return None
        return "not OpenAI's error shape"
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return None
    return "not Ollama's error shape"


@schema.parametrize()
def test_every_operation(case: schemathesis.Case[Any], live: Live) -> None:
    base_url, session, key = live
    own = {h.lower() for h in (case.headers or {})}
    extra = key if key and not own & {"authorization", "x-api-key"} else None
    if extra is not None and next(_CASES) % 5 == 0:  # one case in five: a wrong key
        extra = {"Authorization": "Bearer alb_0123456789ab_" + "x" * 43}
    response = case.call(base_url=base_url, session=session, headers=extra)
    _Tally.by_operation.setdefault(case.operation.label, Counter())[response.status_code] += 1
    content = response.content or b""
    where = f"{case.method} {case.formatted_path} -> {response.status_code}"
    assert TRACEBACK not in content, f"{where}: a traceback in the body\n{content[:2000]!r}"
    problem = _shape_problem(case.path, case.method.upper(), response.status_code, content)
    assert problem is None, f"{where}: {problem}\n{content[:500]!r}\n{case.as_curl_command()}"
    case.validate_response(response, checks=CHECKS)


def test_afterwards_every_operation_ran_and_the_bridge_is_whole(live: Live) -> None:
    base_url, session, key = live
    if not _Tally.by_operation:
        pytest.skip("runs after test_every_operation")
    paths: dict[str, dict[str, Any]] = schema.raw_schema["paths"]
    labels = {f"{m.upper()} {p}" for p, item in paths.items() for m in item if m in METHODS}
    assert set(_Tally.by_operation) == labels
    # No slot is held, and a plain request is still answered.
    models = session.get(f"{base_url}/alb/v1/models", headers=key, timeout=30).json()
    held = {(d["name"], m["model"]): m["in_flight"] for d in models["daemons"] for m in d["models"]}
    assert all(v == 0 for v in held.values()), held
    body = b'{"model": "chatty", "prompt": "hi", "stream": false}'
    r = session.post(f"{base_url}/api/generate", data=body, headers=key, timeout=30)
    assert r.status_code == 200, r.text
