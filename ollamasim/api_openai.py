"""The OpenAI-compatible surface (/v1), as Ollama's middleware/openai.go shapes it.

* Errors: ``{"error": {"message", "type", "param": null, "code": null}}`` with
  type ``invalid_request_error`` (400), ``not_found_error`` (404), else
  ``api_error``, at the native handler's status.
* Streams are SSE ``data: {...}`` chunks ending with ``data: [DONE]``. An error
  after the stream began reaches ``ChatWriter.writeResponse`` with status 200,
  which decodes ``{"error": ...}`` as an empty response: the client sees one
  chunk with an empty delta and ``model: ""``, and no ``[DONE]``.
* ``keep_alive`` cannot be set through /v1.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ollamasim import names
from ollamasim.api_common import BadRequest, engine_of, json_response, read_json
from ollamasim.api_generate import render_messages
from ollamasim.api_jobs import collect, start_job, stream_frames
from ollamasim.inference import Job, Stats
from ollamasim.streams import SSE_DONE, sse_event

FINGERPRINT = "fp_ollama"


def oai_error(status: int, message: str) -> Response:
    etype = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return json_response(
        {"error": {"message": message, "type": etype, "param": None, "code": None}}, status
    )


async def _body(request: Request) -> dict[str, Any]:
    try:
        return await read_json(request, "openai.ChatCompletionRequest")
    except BadRequest as exc:
        if exc.message == "missing request body":
            raise BadRequest("EOF") from None
        raise


def _options(body: dict[str, Any]) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if body.get("max_tokens") is not None:
        opts["num_predict"] = body["max_tokens"]
    if body.get("max_completion_tokens") is not None:
        opts["num_predict"] = body["max_completion_tokens"]
    for src, dst in (
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("seed", "seed"),
        ("frequency_penalty", "frequency_penalty"),
        ("presence_penalty", "presence_penalty"),
    ):
        if body.get(src) is not None:
            opts[dst] = body[src]
    return opts


def _usage(stats: Stats) -> dict[str, int]:
    return {
        "prompt_tokens": stats.prompt_eval_count,
        "completion_tokens": stats.eval_count,
        "total_tokens": stats.prompt_eval_count + stats.eval_count,
    }


async def _start(request: Request, body: dict[str, Any], endpoint: str) -> Job | Response:
    engine = engine_of(request)
    name = str(body.get("model") or "")
    m = engine.find_model(name) if names.is_valid(name) else None
    if m is None:
        if endpoint == "/v1/embeddings":
            return oai_error(404, f'model "{name}" not found, try pulling it first')
        return oai_error(404, f"model '{name}' not found")
    if m.is_embedding_only and endpoint != "/v1/embeddings":
        verb = "chat" if endpoint == "/v1/chat/completions" else "generate"
        return oai_error(400, f'"{name}" does not support {verb}')
    if body.get("tools") and "tools" not in m.capabilities:
        return oai_error(400, f"{names.full_name(m.name)} does not support tools")
    return await start_job(request, m, _options(body), None, endpoint, _schedule_error)


def _schedule_error(message: str, status: int) -> Response:
    return oai_error(status, message)


async def chat_completions(request: Request) -> Response:
    body = await _body(request)
    if not body.get("messages"):
        return oai_error(400, "[] is too short - 'messages'")
    job = await _start(request, body, "/v1/chat/completions")
    if isinstance(job, Response):
        return job
    prompt = render_messages(body["messages"], job.model.system)
    ident = f"chatcmpl-{uuid.uuid4().hex[:8]}"
    model = str(body["model"])

    def wrap(choice: dict[str, Any], obj: str) -> dict[str, Any]:
        return {
            "id": ident,
            "object": obj,
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": [choice],
        }

    def chunk(piece: str | None, finish: str | None) -> dict[str, Any]:
        return wrap(
            {
                "index": 0,
                "delta": {"role": "assistant", "content": piece or ""},
                "finish_reason": finish,
            },
            "chat.completion.chunk",
        )

    def complete(text: str, stats: Stats) -> dict[str, Any]:
        out = wrap(
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": stats.done_reason,
            },
            "chat.completion",
        )
        out["usage"] = _usage(stats)
        return out

    return await _respond(job, prompt, body, chunk, complete)


async def completions(request: Request) -> Response:
    body = await _body(request)
    job = await _start(request, body, "/v1/completions")
    if isinstance(job, Response):
        return job
    prompt = str(body.get("prompt") or "")
    ident = f"cmpl-{uuid.uuid4().hex[:8]}"
    model = str(body["model"])

    def wrap(choice: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": ident,
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": [choice],
        }

    def chunk(piece: str | None, finish: str | None) -> dict[str, Any]:
        return wrap({"text": piece or "", "index": 0, "finish_reason": finish})

    def complete(text: str, stats: Stats) -> dict[str, Any]:
        out = wrap({"text": text, "index": 0, "finish_reason": stats.done_reason})
        out["usage"] = _usage(stats)
        return out

    return await _respond(job, prompt, body, chunk, complete)


async def _respond(
    job: Job, prompt: str, body: dict[str, Any], chunk: Any, complete: Any
) -> Response:
    fault = job.engine.faults.stream_fault(job.model.key)
    options = _options(body)
    if fault is not None and fault.after_chunks == 0 and fault.message is not None:
        job.finish(outcome="fault")
        return oai_error(500, fault.message)
    if not body.get("stream"):
        # Only a fault with a message cuts a non-streamed /v1 reply short.
        message = fault.message if fault is not None else None
        cut_after = fault.after_chunks if fault is not None and message else None
        text, stats = await collect(job, prompt, options, cut_after)
        if stats is None:
            return oai_error(500, message or "")
        return json_response(complete(text, stats))
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    def done(stats: Stats) -> Iterator[bytes]:
        yield sse_event(chunk("", stats.done_reason))
        if include_usage:
            last = chunk("", None)
            last["choices"] = []
            last["usage"] = _usage(stats)
            yield sse_event(last)
        yield SSE_DONE

    def broken(message: str) -> bytes:
        frame = chunk(None, None)
        frame["model"] = ""
        frame["choices"][0].get("delta", {})["role"] = ""
        return sse_event(frame)

    frames = stream_frames(
        job, prompt, options, fault, lambda text: sse_event(chunk(text, None)), done, broken
    )
    return StreamingResponse(frames, media_type="text/event-stream")


async def embeddings(request: Request) -> Response:
    body = await _body(request)
    fmt = body.get("encoding_format")
    if fmt and str(fmt).lower() not in ("float", "base64"):
        return oai_error(
            400,
            f"Invalid value for 'encoding_format' = {fmt}. Supported values: ['float', 'base64'].",
        )
    raw = body.get("input")
    if raw == "":
        raw = [""]
    if raw is None or raw == []:
        return oai_error(400, "invalid input")
    inputs = [raw] if isinstance(raw, str) else raw
    if not isinstance(inputs, list) or not all(isinstance(x, str) for x in inputs):
        return oai_error(400, "invalid input type")
    job = await _start(request, body, "/v1/embeddings")
    if isinstance(job, Response):
        return job
    try:
        vectors, count = await job.embed(inputs, True)
    finally:
        job.finish()
    data = [{"object": "embedding", "embedding": v, "index": i} for i, v in enumerate(vectors)]
    return json_response(
        {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": count, "total_tokens": count},
        }
    )


def _created(modified_at: str) -> int:
    return int(datetime.fromisoformat(modified_at.replace("Z", "+00:00")).timestamp())


async def list_models(request: Request) -> Response:
    engine = engine_of(request)
    data = [
        {
            "id": names.display_shortest(m.name),
            "object": "model",
            "created": _created(m.modified_at),
            "owned_by": names.namespace_of(m.name),
        }
        for m in engine.models.values()
    ]
    return json_response({"object": "list", "data": data})


async def retrieve_model(request: Request) -> Response:
    engine = engine_of(request)
    name = request.path_params["model"]
    m = engine.find_model(name)
    if m is None:
        return oai_error(404, f"model '{name}' not found")
    return json_response(
        {
            "id": name,
            "object": "model",
            "created": _created(m.modified_at),
            "owned_by": names.namespace_of(m.name),
        }
    )
