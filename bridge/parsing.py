"""Request parsing and the body rewrite: pure functions, no I/O.

``parse`` decodes a request body once and checks what the bridge relies on
(the model name and the types of the fields it reads), raising ``BadRequest``
— never anything else — for bad input. ``rewrite`` applies the keep-alive
policy and returns the original bytes whenever nothing changes, so most
requests are forwarded byte for byte.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson

from bridge import keepalive, names
from bridge.errors import Api, BadRequest, Forbidden

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

    def not_found(self, model: str) -> str:
        if self.embed_style_404:
            return f'model "{model}" not found, try pulling it first'
        return f"model '{model}' not found"


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


def parse(body: bytes, ep: Endpoint) -> Parsed:
    """Decode and check a request body; ``BadRequest``/``Forbidden`` on bad input."""
    if not body.strip():
        raise BadRequest("missing request body")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"invalid JSON: {exc.msg}") from None
    if not isinstance(doc, dict):
        raise BadRequest("the request body must be a JSON object")
    model = doc.get("model")
    if model is None and ep.api is Api.NATIVE:
        model = doc.get("name")
    if model is None or model == "":
        raise BadRequest("model is required")
    if not isinstance(model, str):
        raise _type_error("model", model, "string")
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
            keep = keepalive.parse(doc["keep_alive"])
        except keepalive.KeepAliveError as exc:
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
    return Parsed(model, names.key(model), kind, stream, keep, runner, user, doc)


def effective_keep_alive(parsed: Parsed, policy: str, low: float, high: float) -> float | None:
    """The keep_alive the daemon should see: forever under the ``bridge`` policy
    (the bridge unloads idle models itself), the client's value clamped to
    ``[low, high]`` under ``honour`` (None: leave the runner's as it is)."""
    if policy == "bridge":
        return math.inf
    if parsed.keep_alive is None:
        return None
    return keepalive.clamp(parsed.keep_alive, low, high)


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
            clamped = keepalive.clamp(parsed.keep_alive, low, high)
            if clamped != parsed.keep_alive:
                doc = dict(parsed.doc)
                doc["keep_alive"] = keepalive.to_wire(clamped)
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
    return body if doc is None else orjson.dumps(doc)
