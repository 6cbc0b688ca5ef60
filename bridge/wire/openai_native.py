"""OpenAI-surface requests served through Ollama's native API (theory of operation).

Ollama's ``/v1/chat/completions`` and ``/v1/completions`` cannot send ``num_ctx``:
Ollama runs them at its default context, so on a daemon whose runner of the model
was loaded at another context (for native requests that need more), a /v1 request
reloads it, and the next native request reloads it back. When such a runner fits
the /v1 request, the bridge sends it to ``/api/chat`` / ``/api/generate`` instead,
with ``options.num_ctx`` set to the runner's, and turns the native answer back into
the OpenAI shape Ollama's own /v1 layer writes. Everything here is pure:

* ``to_native`` maps the request body, field for field, as Ollama's
  ``openai.FromChatRequest`` / ``FromCompleteRequest`` do (same defaults, same
  400 messages for what they refuse).
* ``Translator`` turns native objects into the OpenAI reply: ``whole`` for a
  non-streamed answer, ``frame`` for each NDJSON object of a stream (SSE
  ``data: {...}`` events; the ``done`` object also yields the usage chunk when
  ``stream_options.include_usage`` and ``data: [DONE]``), as Ollama's
  ``middleware.ChatWriter`` / ``CompleteWriter`` do.

Source: ollama/ollama ``openai/openai.go`` and ``middleware/openai.go``. Where the
bridge differs on purpose: ``max_completion_tokens`` is honoured like ``max_tokens``
(the bridge sizes contexts by it too), and an error inside a stream ends it with an
OpenAI error event rather than Ollama's empty chunk.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from bridge.errors import BadRequest

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
#: The native endpoint each translatable /v1 endpoint is served by.
NATIVE_PATH = {CHAT: "/api/chat", COMPLETIONS: "/api/generate"}

_FINGERPRINT = "fp_ollama"
_DONE = b"data: [DONE]\n\n"
_IMAGE_PREFIXES = (
    "data:;base64,",
    *(f"data:image/{t};base64," for t in ("jpeg", "jpg", "png", "webp")),
)
_EFFORTS = ("high", "medium", "low", "none")
_GO_TYPES = {
    type(None): "<nil>",
    bool: "bool",
    int: "float64",
    float: "float64",
    str: "string",
    list: "[]interface {}",
    dict: "map[string]interface {}",
}


def _go_type(value: Any) -> str:
    return _GO_TYPES.get(type(value), type(value).__name__)


def _number(doc: Mapping[str, Any], field: str, go: str) -> Any:
    """A numeric field as Go's JSON binding accepts it (None when absent or null)."""
    value = doc.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        got = {str: "string", bool: "bool", list: "array", dict: "object"}.get(type(value), "?")
        raise BadRequest(f"json: cannot unmarshal {got} into Go struct field .{field} of type {go}")
    if go == "int" and not float(value).is_integer():
        raise BadRequest(f"json: cannot unmarshal number {value} into Go struct field .{field}")
    return int(value) if go == "int" else value


def _stops(value: Any, *, strict: bool) -> list[str] | None:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        out = []
        for s in value:
            if isinstance(s, str):
                out.append(s)
            elif strict:
                raise BadRequest(f"invalid type for 'stop' field: {_go_type(s)}")
        return out
    return None


def _options(doc: Mapping[str, Any], num_ctx: int, *, chat: bool) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    stops = _stops(doc.get("stop"), strict=not chat)
    if stops is not None:
        opts["stop"] = stops
    predict = _number(doc, "max_tokens", "int")
    if predict is None:  # the bridge's addition (see the module docstring)
        predict = _number(doc, "max_completion_tokens", "int")
    if predict is not None:
        opts["num_predict"] = predict
    temperature = _number(doc, "temperature", "float64")
    opts["temperature"] = 1.0 if temperature is None else temperature
    seed = _number(doc, "seed", "int")
    if seed is not None:
        opts["seed"] = seed
    for field in ("frequency_penalty", "presence_penalty"):
        value = _number(doc, field, "float64")
        if value is not None:
            opts[field] = value
        elif not chat:  # CompletionRequest has them as plain float32s: always sent
            opts[field] = 0
    top_p = _number(doc, "top_p", "float64")
    opts["top_p"] = 1.0 if top_p is None or (not chat and top_p == 0) else top_p
    opts["num_ctx"] = num_ctx
    return opts


def _tool_calls(calls: Any) -> list[dict[str, Any]]:
    out = []
    for call in calls if isinstance(calls, list) else ():
        fn = call.get("function") if isinstance(call, dict) else None
        fn = fn if isinstance(fn, dict) else {}
        try:
            args = orjson.loads(fn.get("arguments") or "")
        except (orjson.JSONDecodeError, TypeError):
            raise BadRequest("invalid tool call arguments") from None
        if not isinstance(args, dict):
            raise BadRequest("invalid tool call arguments")
        out.append({"function": {"name": str(fn.get("name") or ""), "arguments": args}})
    return out


def _image(part: Mapping[str, Any]) -> str:
    raw = part.get("image_url")
    url = raw.get("url") if isinstance(raw, dict) else raw
    if not isinstance(url, str):
        raise BadRequest("invalid message format")
    prefix = next((p for p in _IMAGE_PREFIXES if url.startswith(p)), None)
    if prefix is None:
        raise BadRequest("invalid image input")
    data = url[len(prefix) :]
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("invalid message format") from None
    return data


def _message(role: Any, content: str, **extra: Any) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": role, "content": content}
    msg.update((k, v) for k, v in extra.items() if v)
    return msg


def _tool_name(messages: list[Any], msg: Mapping[str, Any]) -> str:
    if str(msg.get("role", "")).lower() != "tool":
        return ""
    name = msg.get("name") or ""
    call_id = msg.get("tool_call_id")
    if not name and call_id:
        for earlier in reversed(messages):  # last one wins, as in Ollama
            for call in (earlier.get("tool_calls") or ()) if isinstance(earlier, dict) else ():
                if isinstance(call, dict) and call.get("id") == call_id:
                    fn = call.get("function")
                    return str(fn.get("name") or "") if isinstance(fn, dict) else ""
    return str(name)


def _messages(messages: list[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for msg in messages:
        if not isinstance(msg, dict):
            raise BadRequest("invalid message format")
        role = msg.get("role", "")
        tool_name = _tool_name(messages, msg)
        call_id = msg.get("tool_call_id") or ""
        thinking = msg.get("reasoning") or ""
        content = msg.get("content")
        calls = msg.get("tool_calls")
        if isinstance(content, str):
            out.append(
                _message(
                    role,
                    content,
                    thinking=thinking,
                    tool_calls=_tool_calls(calls),
                    tool_name=tool_name,
                    tool_call_id=call_id,
                )
            )
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    raise BadRequest("invalid message format")
                kind = part.get("type")
                if kind == "text":
                    text = part.get("text")
                    if not isinstance(text, str):
                        raise BadRequest("invalid message format")
                    out.append(_message(role, text))
                elif kind == "image_url":
                    out.append(_message(role, "", images=[_image(part)]))
                else:
                    raise BadRequest("invalid message format")
            if out and calls:
                out[-1].update(
                    _message(
                        role,
                        out[-1]["content"],
                        tool_calls=_tool_calls(calls),
                        tool_name=tool_name,
                        tool_call_id=call_id,
                        thinking=thinking,
                    )
                )
        else:
            if calls is None:
                raise BadRequest(f"invalid message content type: {_go_type(content)}")
            out.append(
                _message(
                    role, "", thinking=thinking, tool_calls=_tool_calls(calls), tool_call_id=call_id
                )
            )
    return out


def _format(doc: Mapping[str, Any]) -> Any:
    fmt = doc.get("response_format")
    if not isinstance(fmt, dict):
        return None
    kind = str(fmt.get("type") or "").strip().lower()
    if kind == "json_object":
        return "json"
    schema = fmt.get("json_schema")
    if kind == "json_schema" and isinstance(schema, dict):
        return schema.get("schema")
    return None


def _think(doc: Mapping[str, Any]) -> Any:
    reasoning = doc.get("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else doc.get("reasoning_effort")
    if not effort:
        return None
    if effort not in _EFFORTS:
        raise BadRequest(
            f'invalid reasoning value: \'{effort}\' (must be "high", "medium", "low", or "none")'
        )
    return False if effort == "none" else effort


def to_native(path: str, doc: Mapping[str, Any], num_ctx: int) -> bytes:
    """The native body that serves the /v1 request ``doc`` on a runner at ``num_ctx``;
    ``BadRequest`` with Ollama's message for what its /v1 layer refuses."""
    stream = doc.get("stream") is True
    if path == CHAT:
        messages = doc.get("messages")
        if not messages or not isinstance(messages, list):
            raise BadRequest("[] is too short - 'messages'")
        out: dict[str, Any] = {"model": doc.get("model"), "messages": _messages(messages)}
        fmt = _format(doc)
        if fmt is not None:
            out["format"] = fmt
        out["options"] = _options(doc, num_ctx, chat=True)
        out["stream"] = stream
        if doc.get("tools"):
            out["tools"] = doc["tools"]
        think = _think(doc)
        if think is not None:
            out["think"] = think
        if doc.get("logprobs") is True:
            out["logprobs"] = True
        top = _number(doc, "top_logprobs", "int")  # passed on as is, as FromChatRequest does
        if top:
            out["top_logprobs"] = top
        return orjson.dumps(out)
    prompt = doc.get("prompt", "")
    if prompt is None:
        prompt = ""
    if not isinstance(prompt, str):
        raise BadRequest(
            f"json: cannot unmarshal {'array' if isinstance(prompt, list) else 'value'} "
            "into Go struct field CompletionRequest.prompt of type string"
        )
    out = {"model": doc.get("model"), "prompt": prompt}
    suffix = doc.get("suffix")
    if isinstance(suffix, str) and suffix:
        out["suffix"] = suffix
    out["options"] = _options(doc, num_ctx, chat=False)
    out["stream"] = stream
    # FromCompleteRequest: an integer logprobs > 0 asks for that many alternatives. Ollama
    # computes them, and its CompleteWriter does not write them: neither does the bridge.
    top = _number(doc, "logprobs", "int")
    if top is not None and top > 0:
        out["logprobs"] = True
        out["top_logprobs"] = top
    return orjson.dumps(out)


def _usage(native: Mapping[str, Any]) -> dict[str, int]:
    prompt = int(native.get("prompt_eval_count") or 0)
    completion = int(native.get("eval_count") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _openai_tool_calls(calls: Any) -> list[dict[str, Any]]:
    out = []
    for call in calls if isinstance(calls, list) else ():
        fn = call.get("function") if isinstance(call, dict) else None
        fn = fn if isinstance(fn, dict) else {}
        out.append(
            {
                "id": str(call.get("id") or "") if isinstance(call, dict) else "",
                "index": int(fn.get("index") or 0),
                "type": "function",
                "function": {
                    "name": str(fn.get("name") or ""),
                    "arguments": orjson.dumps(fn.get("arguments")).decode(),
                },
            }
        )
    return out


def unix_time(stamp: Any) -> int:
    """Seconds since the epoch of Ollama's ``created_at`` (RFC 3339, nanoseconds)."""
    if not isinstance(stamp, str) or not stamp:
        return 0
    text = stamp.replace("Z", "+00:00")
    dot = text.find(".")
    if dot >= 0:  # Go prints up to nine fractional digits; Python reads six
        end = dot + 1
        while end < len(text) and text[end].isdigit():
            end += 1
        text = text[:dot] + text[end:]
    try:
        return int(datetime.fromisoformat(text).timestamp())
    except ValueError:
        return 0


@dataclass(slots=True)
class Translator:
    """Native answers of one request, as Ollama's /v1 layer writes them.

    ``ident``: ``chatcmpl-<n>`` / ``cmpl-<n>``; ``created``: the request's start (Unix
    seconds) for stream chunks (a whole answer takes the daemon's ``created_at``)."""

    chat: bool
    stream: bool
    ident: str
    created: int
    include_usage: bool = False
    tool_call_sent: bool = False

    @classmethod
    def for_request(cls, path: str, doc: Mapping[str, Any], n: int, created: int) -> Translator:
        chat = path == CHAT
        opts = doc.get("stream_options")
        usage = isinstance(opts, dict) and opts.get("include_usage") is True
        stream = doc.get("stream") is True
        return cls(chat, stream, f"{'chatcmpl' if chat else 'cmpl'}-{n}", created, usage)

    def whole(self, native: Mapping[str, Any]) -> bytes:
        """A non-streamed answer (JSON and a newline, as Go's encoder writes it)."""
        reason = native.get("done_reason") or None
        if self.chat:
            msg = native.get("message")
            msg = msg if isinstance(msg, dict) else {}
            calls = _openai_tool_calls(msg.get("tool_calls"))
            message: dict[str, Any] = {
                "role": msg.get("role", ""),
                "content": msg.get("content", ""),
            }
            if msg.get("thinking"):
                message["reasoning"] = msg["thinking"]
            if calls:
                message["tool_calls"] = calls
                reason = "tool_calls"
            choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": reason}
            if native.get("logprobs"):
                choice["logprobs"] = {"content": native["logprobs"]}
            obj = "chat.completion"
        else:
            choice = {"text": native.get("response", ""), "index": 0, "finish_reason": reason}
            obj = "text_completion"
        out = {
            "id": self.ident,
            "object": obj,
            "created": unix_time(native.get("created_at")),
            "model": native.get("model", ""),
            "system_fingerprint": _FINGERPRINT,
            "choices": [choice],
            "usage": _usage(native),
        }
        return orjson.dumps(out) + b"\n"

    def frame(self, native: Mapping[str, Any]) -> bytes:
        """The SSE events for one NDJSON object of a native stream."""
        done = native.get("done") is True
        reason = (native.get("done_reason") or None) if done else None
        model = native.get("model", "")
        if self.chat:
            msg = native.get("message")
            msg = msg if isinstance(msg, dict) else {}
            calls = _openai_tool_calls(msg.get("tool_calls"))
            delta: dict[str, Any] = {"role": "assistant", "content": msg.get("content", "")}
            if msg.get("thinking"):
                delta["reasoning"] = msg["thinking"]
            if calls:
                delta["tool_calls"] = calls
            if reason is not None and (self.tool_call_sent or calls):
                reason = "tool_calls"
            self.tool_call_sent = self.tool_call_sent or bool(calls)
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": reason}
            if native.get("logprobs"):
                choice["logprobs"] = {"content": native["logprobs"]}
            chunk: dict[str, Any] = {
                "id": self.ident,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": model,
                "system_fingerprint": _FINGERPRINT,
                "choices": [choice],
            }
        else:
            chunk = {
                "id": self.ident,
                "object": "text_completion",
                "created": self.created,
                "choices": [
                    {"text": native.get("response", ""), "index": 0, "finish_reason": reason}
                ],
                "model": model,
                "system_fingerprint": _FINGERPRINT,
            }
            if self.include_usage:  # CompleteWriter puts a zero usage on every chunk
                chunk["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        out = b"data: " + orjson.dumps(chunk) + b"\n\n"
        if not done:
            return out
        if self.include_usage:
            chunk["choices"] = []
            chunk["usage"] = _usage(native)
            out += b"data: " + orjson.dumps(chunk) + b"\n\n"
        return out + _DONE
