"""Who may call which route (issue #16): the ASGI layer between the edge and the routes.

With ``ALB_AUTH=keys`` every request but ``/healthz``, ``/readyz``, ``/metrics`` and the
status page's static files (``/alb/ui``: the JSON it reads needs a key) names a key
(``bridge.tenancy.keyring.Keyring.authenticate``) that holds the route's scope
(``bridge.policy.keys.scope_for``): no or a wrong key is a 401, a key without the
scope a 403, both in the route's API shape and before a byte of the body is read.
The principal goes on to the route in ``scope["alb.principal"]``: the inference
pipeline checks its model patterns and limits (``bridge.http.proxy``), the admin
routes that it holds ``admin``. With ``ALB_AUTH=none`` every request is
``ANONYMOUS`` (all scopes; the admin routes keep their loopback-or-token rule).

It runs inside the edge, so the Host, Origin and trusted-proxy checks come first: a
browser page from an origin that is not allowed never gets as far as a key check, and
a key sent from one is never accepted.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from bridge.errors import BridgeError, Forbidden, Unavailable, render
from bridge.http.edge import api_for
from bridge.http.state import Bridge
from bridge.policy.keys import ANONYMOUS, Principal, scope_for
from bridge.policy.keys import Scope as KeyScope

PRINCIPAL = "alb.principal"


def principal_of(scope: Scope) -> Principal:
    """The caller the gatekeeper admitted (``ANONYMOUS`` when it did not run)."""
    p = scope.get(PRINCIPAL)
    return p if isinstance(p, Principal) else ANONYMOUS


class Gatekeeper:
    def __init__(self, app: ASGIApp, bridge: Bridge) -> None:
        self._app = app
        self._bridge = bridge

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._bridge.settings.auth == "none":
            await self._app(scope, receive, send)
            return
        path: str = scope["path"]
        need = scope_for(path)
        if need is not None:
            try:
                scope[PRINCIPAL] = self._admit(scope, need)
            except BridgeError as err:
                await _answer(send, err, path)
                return
        await self._app(scope, receive, send)

    def _admit(self, scope: Scope, need: KeyScope) -> Principal:
        tenancy = self._bridge.tenancy
        if tenancy is None or not tenancy.keyring.loaded.is_set():
            raise Unavailable("the bridge has not loaded its keys yet", retry_after=1)
        principal = tenancy.keyring.authenticate(scope["headers"])
        if need not in principal.scopes:
            tenancy.keyring.refused("scope")
            who = f"key {principal.key_id}" if principal.key else "the admin token"
            raise Forbidden(f"{who} does not hold the {need.value} scope")
        return principal


async def _answer(send: Send, err: BridgeError, path: str) -> None:
    status, headers, body = render(err, api_for(path))
    if err.status == 401:
        headers = [*headers, (b"www-authenticate", b'Bearer realm="alb"')]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
