"""Ollama's native embedding endpoints: /api/embed and the older /api/embeddings.

Status codes and error strings follow server/routes.go (see the README of the
package for the source references)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ollamasim import names
from ollamasim.api_common import (
    engine_of,
    error_response,
    json_response,
    keep_alive_of,
    options_of,
    read_json,
)
from ollamasim.api_jobs import start_job
from ollamasim.config import ModelConfig
from ollamasim.durations import NANOS
from ollamasim.tokens import embed as embed_vector


async def embed(request: Request) -> Response:
    engine = engine_of(request)
    body = await read_json(request, "api.EmbedRequest")
    keep_alive = keep_alive_of(body)
    name = str(body.get("model") or "")
    raw = body.get("input")
    inputs: list[str] = []
    if isinstance(raw, str):
        inputs = [raw] if raw else []
    elif isinstance(raw, list):
        if not all(isinstance(x, str) for x in raw):
            return error_response("invalid input type", 400)
        inputs = list(raw)
    elif raw is not None:
        return error_response("invalid input type", 400)
    if not names.is_valid(name):
        return error_response(f"model '{name}' not found", 404)
    m = engine.find_model(name)
    if m is None:
        # EmbedHandler reaches scheduleRunner without GetModelForRunner first, so the
        # miss goes through handleScheduleError (Go %q: double quotes).
        return error_response(f'model "{name}" not found, try pulling it first', 404)
    return await embed_with(request, m, name, inputs, body, keep_alive, "/api/embed")


async def embed_with(  # noqa: PLR0917
    request: Request,
    m: ModelConfig,
    name: str,
    inputs: list[str],
    body: dict[str, Any],
    keep_alive: int | None,
    endpoint: str,
) -> Response:
    job = await start_job(request, m, options_of(body), keep_alive, endpoint)
    if isinstance(job, Response):
        return job
    try:
        if not inputs:
            return json_response({"model": name, "embeddings": []})
        try:
            vectors, count = await job.embed(inputs, body.get("truncate") is not False)
        except ValueError as exc:
            return error_response(str(exc), 400)
        total = job.load_s + count / job.engine.fleet.prefill_rate(m) + 0.0002
        return json_response(
            {
                "model": name,
                "embeddings": vectors,
                "total_duration": int(total * NANOS),
                "load_duration": int(job.load_s * NANOS),
                "prompt_eval_count": count,
            }
        )
    finally:
        job.finish(outcome="ok" if inputs else "load")


async def embeddings_legacy(request: Request) -> Response:
    engine = engine_of(request)
    body = await read_json(request, "api.EmbeddingRequest")
    keep_alive = keep_alive_of(body)
    name = str(body.get("model") or "")
    if not names.is_valid(name):
        return error_response("model is required", 400)
    m = engine.find_model(name)
    if m is None:
        return error_response(f'model "{name}" not found, try pulling it first', 404)
    job = await start_job(request, m, options_of(body), keep_alive, "/api/embeddings")
    if isinstance(job, Response):
        return job
    try:
        prompt = str(body.get("prompt") or "")
        if not prompt:
            return json_response({"embedding": []})
        await job.embed([prompt], True)
        return json_response(
            {"embedding": embed_vector(engine.fleet.seed, m.key, prompt, m.embedding_length)}
        )
    finally:
        job.finish()
