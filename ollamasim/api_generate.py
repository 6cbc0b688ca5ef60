"""Ollama's native completion endpoints: /api/generate and /api/chat.

Both follow the same steps (server/routes.go ``GenerateHandler``, ``ChatHandler``):
find the model; with no input and ``keep_alive: 0``, unload it; check capabilities;
schedule a runner; with no input that is all (a load); else generate, streamed as
NDJSON unless ``stream: false``. They differ in the shape of a reply, which each
states as a ``reply(text, done_reason)`` function. Status codes and error strings
follow server/routes.go (see the README of the package for the source references).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ollamasim import names
from ollamasim.api_common import (
    created_at,
    engine_of,
    error_response,
    json_response,
    keep_alive_of,
    options_of,
    read_json,
)
from ollamasim.api_jobs import collect, start_job, stream_frames
from ollamasim.config import ModelConfig
from ollamasim.inference import Stats
from ollamasim.streams import ndjson_line

NDJSON = "application/x-ndjson"

# reply(text, done_reason): a chunk while done_reason is None, else a done object.
_Reply = Callable[[str, str | None], dict[str, Any]]


async def generate(request: Request) -> Response:
    engine = engine_of(request)
    body = await read_json(request, "api.GenerateRequest")
    keep_alive = keep_alive_of(body)
    name = str(body.get("model") or "")
    m = engine.find_model(name) if names.is_valid(name) else None
    if m is None:
        return error_response(f"model '{name}' not found", 404)
    prompt = str(body.get("prompt") or "")

    def reply(text: str, done_reason: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"model": name, "created_at": created_at(engine), "response": text}
        out["done"] = done_reason is not None
        if done_reason is not None:
            out["done_reason"] = done_reason
        return out

    if prompt == "" and keep_alive == 0:
        engine.unload_requested(m)
        return json_response(reply("", "unload"))
    if body.get("raw") and (body.get("template") or body.get("system") or body.get("context")):
        return error_response("raw mode does not support template, system, or context", 400)
    refused = _unsupported(m, name, body, "generate", ("suffix", "insert"))
    if refused is not None:
        return refused
    text = (str(body.get("system") or m.system) + "\n" if not body.get("raw") else "") + prompt

    def final(stats: Stats, full: str) -> dict[str, Any]:
        out = reply(full, stats.done_reason)
        if not body.get("raw"):
            out["context"] = stats.context
        out.update(stats.metrics())
        return out

    return await _run(
        request, m, body, keep_alive, "/api/generate", text if prompt else None, reply, final
    )


def render_messages(messages: list[Any], system: str) -> str:
    parts = (
        [f"system: {system}"]
        if system and not any(isinstance(x, dict) and x.get("role") == "system" for x in messages)
        else []
    )
    for msg in messages:
        if isinstance(msg, dict):
            parts.append(f"{msg.get('role', 'user')}: {msg.get('content') or ''}")
    parts.append("assistant:")
    return "\n".join(parts)


async def chat(request: Request) -> Response:
    engine = engine_of(request)
    body = await read_json(request, "api.ChatRequest")
    keep_alive = keep_alive_of(body)
    name = str(body.get("model") or "")
    if not names.is_valid(name):
        return error_response("model is required", 400)
    m = engine.find_model(name)
    if m is None:
        return error_response(f"model '{name}' not found", 404)
    messages = body.get("messages") or []

    def reply(text: str, done_reason: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"model": name, "created_at": created_at(engine)}
        out["message"] = {"role": "assistant", "content": text}
        if done_reason is not None:
            out["done_reason"] = done_reason
        out["done"] = done_reason is not None
        return out

    if not messages and keep_alive == 0:
        engine.unload_requested(m)
        return json_response(reply("", "unload"))
    refused = _unsupported(m, name, body, "chat", ("tools", "tools"))
    if refused is not None:
        return refused

    def final(stats: Stats, full: str) -> dict[str, Any]:
        out = reply(full, stats.done_reason)
        out.update(stats.metrics())
        return out

    prompt = render_messages(messages, m.system) if messages else None
    return await _run(request, m, body, keep_alive, "/api/chat", prompt, reply, final)


def _unsupported(
    m: ModelConfig, name: str, body: dict[str, Any], verb: str, needs: tuple[str, str]
) -> Response | None:
    """The capability checks, in the handlers' order; ``needs``: (field, capability)."""
    field, capability = needs
    if body.get("think") is True and "thinking" not in m.capabilities:
        return error_response(f'"{name}" does not support thinking', 400)
    if m.is_embedding_only:
        return error_response(f'"{name}" does not support {verb}', 400)
    if body.get(field) and capability not in m.capabilities:
        return error_response(f"{names.full_name(m.name)} does not support {capability}", 400)
    return None


async def _run(  # noqa: PLR0917
    request: Request,
    m: ModelConfig,
    body: dict[str, Any],
    keep_alive: int | None,
    endpoint: str,
    prompt: str | None,
    reply: _Reply,
    final: Callable[[Stats, str], dict[str, Any]],
) -> Response:
    """Schedule a runner; then a load reply (no ``prompt``), or generate ``prompt``.

    The reply is an NDJSON stream or one object, with stream faults applied.
    """
    options = options_of(body)
    job = await start_job(request, m, options, keep_alive, endpoint)
    if isinstance(job, Response):
        return job
    if prompt is None:
        job.finish(outcome="load")
        return json_response(reply("", "load"))
    fault = job.engine.faults.stream_fault(job.model.key)
    if fault is not None and fault.after_chunks == 0 and fault.message is not None:
        job.finish(outcome="fault")
        return error_response(fault.message, 500)
    if body.get("stream") is False:
        cut_after = fault.after_chunks if fault is not None else None
        text, stats = await collect(job, prompt, options, cut_after)
        if stats is not None:
            return json_response(final(stats, text))
        if fault is not None and fault.message is not None:
            return error_response(fault.message, 500)
        return json_response(reply(text, None))
    frames = stream_frames(
        job,
        prompt,
        options,
        fault,
        piece=lambda text: ndjson_line(reply(text, None)),
        done=lambda stats: [ndjson_line(final(stats, ""))],
        broken=lambda message: ndjson_line({"error": message}),
    )
    return StreamingResponse(frames, media_type=NDJSON)
