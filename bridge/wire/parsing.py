"""Request parsing and the body rewrite: pure functions, no I/O.

``parse`` decodes a request body once (``bridge.wire.jsonbody``: the limits, and Go's
case-insensitive reading of the fields of Ollama's request structs) and checks what
the bridge relies on (the model name and the types of the fields it reads), raising
``BadRequest`` — never anything else — for bad input, naming the field. Only the
fields of the route's own struct are read, as Ollama reads them: ``messages`` on
``/api/generate`` is an unknown field to both. ``rewrite`` applies the keep-alive
policy and returns the original bytes whenever nothing changes, so most requests are
forwarded byte for byte (a body whose keys were folded is forwarded re-encoded).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson

from bridge.errors import Api, BadRequest, Forbidden
from bridge.wire import durations, jsonbody, names

#: Options that select a runner; a change forces Ollama to reload (api.Runner).
RUNNER_OPTIONS = frozenset(
    {"num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread"}
)


class Kind(Enum):
    INFER = "infer"
    LOAD = "load"  # no prompt: Ollama loads and answers done_reason "load"
    UNLOAD = "unload"  # no prompt and keep_alive 0


@dataclass(frozen=True, slots=True)
class Endpoint:
    """What one proxied route needs to know about its bodies."""

    path: str
    api: Api
    #: Field whose emptiness makes the request a load: prompt, messages, input.
    payload: str | None
    stream_default: bool
    #: Ollama's unknown-model message differs by handler (see OLLAMA_FACTS §1).
    embed_style_404: bool = False
    #: generate and chat treat "no prompt + keep_alive 0" as an unload request.
    can_unload: bool = False

    @property
    def fields(self) -> frozenset[str]:
        """The top-level fields of the Go struct Ollama decodes this route's body into."""
        return STRUCT_FIELDS.get(self.path, frozenset())

    def not_found(self, model: str) -> str:
        if self.embed_style_404:
            return f'model "{model}" not found, try pulling it first'
        return f"model '{model}' not found"


def _fields(*names_: str) -> frozenset[str]:
    return frozenset(names_)


_NATIVE_COMMON = _fields("model", "keep_alive", "options", "truncate")
_NATIVE_INFER = _NATIVE_COMMON | _fields(
    "stream", "format", "think", "shift", "_debug_render_only", "logprobs", "top_logprobs"
)
_OPENAI_COMMON = _fields(
    "model", "stream", "stream_options", "max_tokens", "seed", "stop", "temperature",
    "frequency_penalty", "presence_penalty", "top_p", "logprobs", "_debug_render_only",
)  # fmt: skip
#: The fields of the structs Ollama v0.17.4 decodes each route's body into
#: (``api/types.go``: GenerateRequest, ChatRequest, EmbedRequest, EmbeddingRequest,
#: ShowRequest; ``openai/openai.go``: ChatCompletionRequest, CompletionRequest,
#: EmbedRequest). Go's ``encoding/json`` matches their keys case-insensitively.
STRUCT_FIELDS: dict[str, frozenset[str]] = {
    "/api/generate": _NATIVE_INFER
    | _fields(
        "prompt",
        "suffix",
        "system",
        "template",
        "context",
        "raw",
        "images",
        "width",
        "height",
        "steps",
    ),
    "/api/chat": _NATIVE_INFER | _fields("messages", "tools"),
    "/api/embed": _NATIVE_COMMON | _fields("input", "dimensions"),
    "/api/embeddings": _fields("model", "prompt", "keep_alive", "options"),
    "/api/show": _fields("model", "name", "system", "template", "verbose", "options"),
    "/v1/chat/completions": _OPENAI_COMMON
    | _fields("messages", "response_format", "tools", "reasoning", "reasoning_effort")
    | _fields("top_logprobs"),
    "/v1/completions": _OPENAI_COMMON | _fields("prompt", "suffix"),
    "/v1/embeddings": _fields("model", "input", "dimensions", "encoding_format"),
}
#: The fields of one message (``api.Message``; ``openai.Message``).
MESSAGE_FIELDS: dict[Api, frozenset[str]] = {
    Api.NATIVE: _fields(
        "role", "content", "thinking", "images", "tool_calls", "tool_name", "tool_call_id"
    ),
    Api.OPENAI: _fields("role", "content", "reasoning", "tool_calls", "name", "tool_call_id"),
}

#: Longest model name accepted (Ollama's name parts: host 350, the others 80 each).
MAX_NAME_CHARS = 600

_STR = ((str,), "string")
_LIST = ((list,), "array")
_OBJECT = ((dict,), "object")
_NUMBER = ((int, float), "number")
#: The types the bridge relies on, for the fields it reads (``None`` is always accepted:
#: Go leaves the field unset). Checked only where the route's struct has the field.
FIELD_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "name": _STR,
    "options": _OBJECT,
    "system": _STR,
    "suffix": _STR,
    "images": _LIST,
    "messages": _LIST,
    "tools": _LIST,
    "max_tokens": _NUMBER,
    "stream_options": _OBJECT,
}
#: ``FIELD_TYPES`` restricted to each route's struct.
_TYPES_BY_PATH = {
    path: {f: t for f, t in FIELD_TYPES.items() if f in fields}
    for path, fields in STRUCT_FIELDS.items()
}
_MESSAGE_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "role": _STR,
    "images": _LIST,
    "tool_calls": _LIST,
}


@dataclass(frozen=True, slots=True)
class Parsed:
    model: str
    key: str
    kind: Kind
    stream: bool
    #: The client's keep_alive in seconds (``inf`` = forever), None when absent.
    keep_alive: float | None
    runner_options: dict[str, Any]
    user: str | None
    doc: dict[str, Any]
    #: Keys were renamed to their fields' spelling: the body must be re-encoded.
    folded: bool = False


_PAYLOAD_TYPES: dict[str, tuple[type, ...]] = {
    "prompt": (str, list),
    "messages": (list,),
    "input": (str, list),
}


def _type_error(field: str, value: Any, want: str) -> BadRequest:
    got = {
        bool: "bool",
        int: "number",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
    }.get(type(value), type(value).__name__)
    return BadRequest(f"invalid type for '{field}': expected {want}, got {got}")


def _check_types(
    obj: dict[str, Any], types: dict[str, tuple[tuple[type, ...], str]], where: str
) -> None:
    for field, (allowed, want) in types.items():
        value = obj.get(field)
        if value is not None and (not isinstance(value, allowed) or isinstance(value, bool)):
            raise _type_error(where + field, value, want)


def _read_messages(doc: dict[str, Any], ep: Endpoint) -> list[Any] | None:
    """Check ``messages`` (objects, Go-folded keys, field types); a new list when a
    message's keys were renamed, else None."""
    messages = doc.get("messages")
    if not isinstance(messages, list):
        return None
    fields = MESSAGE_FIELDS[ep.api]
    content_types = (str, list) if ep.api is Api.OPENAI else (str,)
    out: list[Any] | None = None
    for i, msg in enumerate(messages):
        where = f"messages[{i}]."
        if not isinstance(msg, dict):
            raise _type_error(where[:-1], msg, "object")
        folded = jsonbody.fold_keys(msg, fields, where)
        content = folded.get("content")
        if content is not None and not isinstance(content, content_types):
            raise _type_error(where + "content", content, "string")
        _check_types(folded, _MESSAGE_TYPES, where)
        if folded is not msg:
            out = list(messages) if out is None else out
            out[i] = folded
    return out


def parse(body: bytes, ep: Endpoint) -> Parsed:
    """Decode and check a request body; ``BadRequest``/``Forbidden`` on bad input."""
    raw = jsonbody.decode(body)
    fields = ep.fields
    doc = jsonbody.fold_keys(raw, fields) if fields else raw
    folded = doc is not raw
    messages = _read_messages(doc, ep) if "messages" in fields else None
    if messages is not None:
        doc = {**doc, "messages": messages}
        folded = True
    _check_types(doc, _TYPES_BY_PATH.get(ep.path, {}), "")
    model = doc.get("model")
    if model is None and "name" in fields:
        model = doc.get("name")
    if model is None or model == "":
        raise BadRequest("model is required")
    if not isinstance(model, str):
        raise _type_error("model", model, "string")
    if len(model) > MAX_NAME_CHARS:
        raise BadRequest(f"the model's name is longer than {MAX_NAME_CHARS} characters")
    if not names.is_valid(model):
        raise BadRequest(f"invalid model name '{model}'")
    if names.is_cloud(model):
        raise Forbidden(f"cloud model '{model}' is not served through this bridge")
    stream = doc.get("stream", ep.stream_default)
    if stream is None:
        stream = ep.stream_default
    if not isinstance(stream, bool):
        raise _type_error("stream", stream, "boolean")
    keep: float | None = None
    if doc.get("keep_alive") is not None:
        try:
            keep = durations.parse(doc["keep_alive"])
        except durations.KeepAliveError as exc:
            raise BadRequest(str(exc)) from None
    options = doc.get("options")
    if options is not None and not isinstance(options, dict):
        raise _type_error("options", options, "object")
    runner = {k: v for k, v in (options or {}).items() if k in RUNNER_OPTIONS}
    user = doc.get("user")
    if user is not None and not isinstance(user, str):
        raise _type_error("user", user, "string")
    kind = Kind.INFER
    if ep.payload is not None:
        payload = doc.get(ep.payload)
        if payload is not None and not isinstance(payload, _PAYLOAD_TYPES[ep.payload]):
            raise _type_error(ep.payload, payload, "string or array")
        if ep.api is Api.NATIVE and not payload:
            kind = Kind.UNLOAD if keep == 0 and ep.can_unload else Kind.LOAD
    return Parsed(model, names.key(model), kind, stream, keep, runner, user, doc, folded)


def effective_keep_alive(parsed: Parsed, policy: str, low: float, high: float) -> float | None:
    """The keep_alive the daemon should see: forever under the ``bridge`` policy
    (the bridge unloads idle models itself), the client's value clamped to
    ``[low, high]`` under ``honour`` (None: leave the runner's as it is)."""
    if policy == "bridge":
        return math.inf
    if parsed.keep_alive is None:
        return None
    return durations.clamp(parsed.keep_alive, low, high)


#: ``rewrite``'s ``num_ctx`` default: leave the client's num_ctx as it is.
KEEP = -1


def rewrite(
    body: bytes,
    parsed: Parsed,
    policy: str,
    low: float,
    high: float,
    *,
    num_ctx: int | None = KEEP,
    strip_runner: bool = False,
    native: bool = True,
) -> bytes:
    """The bytes to forward: the original unless something must change — the
    keep-alive policy, or (native APIs) the runner options: ``num_ctx`` set to the
    runner's (None: removed, for a runner loaded at the daemon's default) and,
    with ``strip_runner``, the other runner options removed, so the request never
    makes Ollama reload."""
    doc: dict[str, Any] | None = None
    if policy == "bridge" and parsed.keep_alive is None and "keep_alive" in parsed.doc:
        doc = dict(parsed.doc)  # an explicit null: the bridge's policy forwards none at all
        del doc["keep_alive"]
    elif parsed.keep_alive is not None:
        if policy == "bridge":
            doc = dict(parsed.doc)
            del doc["keep_alive"]
        else:
            clamped = durations.clamp(parsed.keep_alive, low, high)
            if clamped != parsed.keep_alive:
                doc = dict(parsed.doc)
                doc["keep_alive"] = durations.to_wire(clamped)
    if native and (num_ctx != KEEP or strip_runner):
        old = parsed.doc.get("options")
        opts = dict(old) if isinstance(old, dict) else {}
        if strip_runner:
            for k in RUNNER_OPTIONS - {"num_ctx"}:
                opts.pop(k, None)
        if num_ctx is None:
            opts.pop("num_ctx", None)
        elif num_ctx != KEEP:
            opts["num_ctx"] = num_ctx
        if opts != (old if isinstance(old, dict) else {}):
            doc = dict(parsed.doc) if doc is None else doc
            if opts or old is not None:
                doc["options"] = opts
    if doc is None:
        return orjson.dumps(parsed.doc) if parsed.folded else body
    return orjson.dumps(doc)
