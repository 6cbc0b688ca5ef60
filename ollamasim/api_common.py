"""Request decoding and responses shared by both API surfaces."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ollamasim.durations import DurationError, go_time_from_unix, parse_keep_alive
from ollamasim.engine import Engine
from ollamasim.streams import go_json

JSON_TYPE = "application/json; charset=utf-8"


def engine_of(request: Request) -> Engine:
    """The simulated daemon's engine, which ``build_app`` puts in the app's state."""
    engine: Engine = request.app.state.daemon.engine
    return engine


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def json_response(value: Any, status: int = 200) -> Response:
    return Response(go_json(value), status_code=status, media_type=JSON_TYPE)


def error_response(message: str, status: int) -> Response:
    return json_response({"error": message}, status)


#: The top-level fields of the Go structs the native handlers decode into (Ollama
#: v0.17.4's api/types.go), which Go matches case-insensitively (OLLAMA_FACTS §8).
GO_FIELDS: dict[str, frozenset[str]] = {
    "api.GenerateRequest": frozenset(
        [
            "model",
            "prompt",
            "suffix",
            "system",
            "template",
            "context",
            "stream",
            "raw",
            "format",
            "keep_alive",
            "images",
            "options",
            "think",
            "truncate",
            "shift",
            "_debug_render_only",
            "logprobs",
            "top_logprobs",
            "width",
            "height",
            "steps",
        ]
    ),
    "api.ChatRequest": frozenset(
        [
            "model",
            "messages",
            "stream",
            "format",
            "keep_alive",
            "tools",
            "options",
            "think",
            "truncate",
            "shift",
            "_debug_render_only",
            "logprobs",
            "top_logprobs",
        ]
    ),
    "api.EmbedRequest": frozenset(
        ["model", "input", "keep_alive", "truncate", "dimensions", "options"]
    ),
    "api.EmbeddingRequest": frozenset(["model", "prompt", "keep_alive", "options"]),
    "api.ShowRequest": frozenset(["model", "system", "template", "verbose", "options", "name"]),
}
_TO_ASCII = str.maketrans({"\u212a": "k", "\u017f": "s"})


def go_fold_keys(value: dict[str, Any], fields: frozenset[str]) -> dict[str, Any]:
    """Keys as Go's ``encoding/json`` assigns them to struct fields: a case-insensitive
    match (Unicode simple folding: the Kelvin sign is ``k``, the long s is ``s``) lands
    on the field, and the last key that lands on a field wins."""
    out: dict[str, Any] = {}
    for given, item in value.items():
        key = given
        if key not in fields:
            folded = key.translate(_TO_ASCII)
            if folded.isascii() and folded.lower() in fields:
                key = folded.lower()
        out.pop(key, None)
        out[key] = item
    return out


async def read_json(request: Request, go_type: str) -> dict[str, Any]:
    """gin's ``ShouldBindJSON``: EOF -> "missing request body", else Go's message; keys
    folded onto ``go_type``'s fields as Go does (``go_fold_keys``)."""
    body = await request.body()
    if not body.strip():
        raise BadRequest("missing request body")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest("invalid character looking for beginning of value") from None
    if not isinstance(value, dict):
        kind = "array" if isinstance(value, list) else type(value).__name__
        raise BadRequest(f"json: cannot unmarshal {kind} into Go value of type {go_type}")
    fields = GO_FIELDS.get(go_type)
    return value if fields is None else go_fold_keys(value, fields)


def keep_alive_of(body: dict[str, Any]) -> int | None:
    """``keep_alive`` as nanoseconds; None when absent or null (runner keeps its own)."""
    raw = body.get("keep_alive")
    if raw is None:
        return None
    try:
        return parse_keep_alive(raw)
    except DurationError as exc:
        raise BadRequest(str(exc)) from None


def options_of(body: dict[str, Any]) -> dict[str, Any]:
    opts = body.get("options")
    return dict(opts) if isinstance(opts, dict) else {}


def created_at(engine: Engine) -> str:
    return go_time_from_unix(engine.clock.now(), utc=True)


def local_time(seconds: float) -> str:
    return go_time_from_unix(seconds, utc=False)
