"""Admin API (load / unload / pin / unpin a model) and the decision log.

Admin scope: with ``ALB_AUTH=keys`` a key holding ``admin`` (or the admin token; the
gatekeeper checks it). Otherwise, with ``ALB_ADMIN_TOKEN`` set, the routes need
``Authorization: Bearer <token>`` (or ``X-ALB-Admin-Token``); without it they answer
loopback clients only, so an unconfigured bridge cannot be steered from the network.
A ``num_ctx`` given to ``load`` or ``pin`` must lie within 4 .. ``ALB_NUM_CTX_MAX``
(400 otherwise). ``GET
/alb/v1/decisions`` is read-only (no prompts in it) and open like ``/alb/v1/models``.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from bridge.errors import Api, BadRequest, Forbidden, Unauthorized
from bridge.http.gatekeeper import principal_of
from bridge.http.relay import read_body
from bridge.http.responses import guard, json_response
from bridge.http.routes_openai import MODEL_PATH
from bridge.http.state import Bridge
from bridge.policy.keys import Scope
from bridge.wire import jsonbody, names

_ACTIONS = ("load", "unload", "pin", "unpin")
#: The largest context anything accepts (a signed 32-bit int in llama.cpp).
_NUM_CTX_LIMIT = 2**31 - 1


def _loopback(host: str | None) -> bool:
    if host in ("localhost", "testclient"):
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def authorize(bridge: Bridge, request: Request) -> None:
    if bridge.settings.auth == "keys":
        # The gatekeeper admitted only a holder of ``admin`` to the admin routes; on
        # the others (operator views) the question is whether the caller holds it.
        if Scope.ADMIN not in principal_of(request.scope).scopes:
            raise Forbidden("the admin scope is needed")
        return
    token = bridge.settings.admin_token
    if token is None:
        if not _loopback(request.client.host if request.client else None):
            raise Forbidden(
                "admin routes answer only loopback clients unless ALB_ADMIN_TOKEN is set"
            )
        return
    given = request.headers.get("x-alb-admin-token", "")
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    if not given or not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise Unauthorized("admin token missing or wrong")


async def _options(bridge: Bridge, request: Request) -> tuple[str | None, int | None]:
    body = await read_body(request.receive, bridge.settings.max_body_bytes)
    doc: dict[str, Any] = jsonbody.decode(body) if body.strip() else {}
    daemon = doc.get("daemon", request.query_params.get("daemon"))
    num_ctx = doc.get("num_ctx", request.query_params.get("num_ctx"))
    if daemon is not None and (
        not isinstance(daemon, str) or daemon not in bridge.rt().fleet.daemons
    ):
        raise BadRequest(f"no daemon named {daemon!r}")
    if num_ctx is not None:
        num_ctx = _num_ctx(num_ctx, min(bridge.settings.num_ctx_max, _NUM_CTX_LIMIT))
    return daemon, num_ctx


def _num_ctx(value: object, most: int) -> int:
    """An admin ``num_ctx``: a whole number from 4 to ``most`` (``ALB_NUM_CTX_MAX``, at
    most 2^31 - 1: llama.cpp keeps the context in a 32-bit int), else a 400."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise BadRequest("num_ctx must be an integer")
    try:
        n = int(value)
    except ValueError:
        raise BadRequest("num_ctx must be an integer") from None
    if n < 4:
        raise BadRequest("num_ctx must be at least 4")
    if n > most:
        raise BadRequest(f"num_ctx must be at most {most} (ALB_NUM_CTX_MAX)")
    return n


def routes(bridge: Bridge) -> list[BaseRoute]:
    native = guard(Api.NATIVE)

    @native
    async def model_action(request: Request) -> Response:
        authorize(bridge, request)
        action = str(request.path_params["action"])
        if action not in _ACTIONS:
            return Response("404 page not found", status_code=404, media_type="text/plain")
        model = str(request.path_params["model"])
        if not names.is_valid(model):
            raise BadRequest(f"invalid model name '{model}'")
        key = names.key(model)
        daemon, num_ctx = await _options(bridge, request)
        s = bridge.rt().scheduler
        out: dict[str, Any] = {"model": key, "action": action}
        if action == "load":
            out["daemon"] = await s.load_model(key, daemon, num_ctx)
        elif action == "pin":
            out["daemon"] = await s.pin(key, daemon, num_ctx)
            out["pinned"] = True
        elif action == "unpin":
            s.unpin(key, daemon)
            out["pinned"] = False
        else:
            out["unloaded_from"] = await s.unload_model(key, daemon, "admin")
        if action in ("load", "pin"):
            gate = s.gates.get((out["daemon"], key))
            out["num_ctx"] = gate.ctx if gate else None
        return json_response(out)

    @native
    async def decisions(request: Request) -> Response:
        q = request.query_params
        model = q.get("model")
        try:
            limit = min(max(int(q.get("limit", "100")), 1), 10000)
        except ValueError:
            limit = 100
        rows = bridge.decisions.query(
            model=names.key(model) if model else None, kind=q.get("kind"), limit=limit
        )
        return json_response({"decisions": [d.to_json() for d in rows]})

    return [
        Route(f"/alb/v1/models/{{model:{MODEL_PATH}}}/{{action}}", model_action, methods=["POST"]),
        Route("/alb/v1/decisions", decisions, methods=["GET"]),
    ]
