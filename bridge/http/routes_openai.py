"""The OpenAI-compatible surface Ollama serves (``/v1``), through the same proxy."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from starlette.convertors import PathConvertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from bridge.errors import Api, ModelNotFound
from bridge.http.proxy import InferenceRoute
from bridge.http.responses import guard, json_response
from bridge.http.state import Bridge
from bridge.wire import names
from bridge.wire.parsing import Endpoint

CHAT = Endpoint("/v1/chat/completions", Api.OPENAI, "messages", False)
COMPLETIONS = Endpoint("/v1/completions", Api.OPENAI, "prompt", False)
EMBEDDINGS = Endpoint("/v1/embeddings", Api.OPENAI, "input", False, embed_style_404=True)

_FRACTION = re.compile(r"(\.\d{6})\d+")


class _ModelPath(PathConvertor):
    """Starlette's ``path`` with newlines too: its ``.*`` stops at one, so a name holding
    a newline missed the route and got the text 404 instead of OpenAI's (gin's ``:model``
    takes any byte but ``/``; found by tests/bridge/http/test_schemathesis.py)."""

    regex = "(?s:.*)"


#: The convertor's name in route paths (``/v1/models/{model:alb_model}``; the admin
#: routes use it too).
MODEL_PATH = "alb_model"
register_url_convertor(MODEL_PATH, _ModelPath())


def unix_time(stamp: str) -> int:
    """Seconds since the epoch of an RFC 3339 time as Go prints it (nanoseconds allowed)."""
    try:
        return int(
            datetime.fromisoformat(_FRACTION.sub(r"\1", stamp.replace("Z", "+00:00"))).timestamp()
        )
    except ValueError:
        return 0


def model_object(ident: str, row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": ident,
        "object": "model",
        "created": unix_time(str(row.get("modified_at", ""))),
        "owned_by": names.namespace(ident),
    }


def routes(bridge: Bridge) -> list[BaseRoute]:
    openai = guard(Api.OPENAI)

    @openai
    async def list_models(request: Request) -> Response:
        """Every model any daemon has. (Ollama answers ``data: null`` for an empty
        store; the bridge answers ``[]``, which every OpenAI client accepts.)"""
        rt = bridge.rt()
        await rt.fleet.refresh_all(force=True)
        merged: dict[str, dict[str, Any]] = {}
        for d in rt.fleet.daemons.values():
            for key, row in d.catalog.items():
                merged.setdefault(key, row)
        rows = sorted(merged.values(), key=lambda r: str(r.get("modified_at", "")), reverse=True)
        data = [model_object(str(r.get("model") or r.get("name")), r) for r in rows]
        return json_response({"object": "list", "data": data})

    @openai
    async def retrieve_model(request: Request) -> Response:
        rt = bridge.rt()
        name = str(request.path_params["model"])
        key = names.key(name)
        if not names.is_valid(name) or not await rt.fleet.ensure_known(key):
            raise ModelNotFound(f"model '{name}' not found")
        row: dict[str, Any] = {}
        for d in rt.fleet.daemons.values():
            row = d.catalog.get(key) or row
        return json_response(model_object(name, row))

    return [
        Route(CHAT.path, InferenceRoute(bridge, CHAT), methods=["POST"]),
        Route(COMPLETIONS.path, InferenceRoute(bridge, COMPLETIONS), methods=["POST"]),
        Route(EMBEDDINGS.path, InferenceRoute(bridge, EMBEDDINGS), methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route(f"/v1/models/{{model:{MODEL_PATH}}}", retrieve_model, methods=["GET"]),
    ]
