"""The edge: Host and Origin checks, trusted proxies, body size and body budget.

Theory of operation. ``Edge`` is the outermost ASGI layer of the app. It reads each
request's headers once (one scan for ``host``, ``origin``, ``content-length``,
``transfer-encoding`` and, only with trusted proxies configured,
``x-forwarded-for``) and then, in this order:

1. **Trusted proxies.** ``X-Forwarded-For`` is read only when the peer is in
   ``ALB_TRUSTED_PROXIES`` (default: none, whatever uvicorn's
   ``FORWARDED_ALLOW_IPS`` says; ``bridge.http.server`` turns uvicorn's own proxy
   headers off). The client is the right-most address that is not itself a
   trusted proxy, so a client cannot prepend ``127.0.0.1`` to pass the admin
   routes' loopback check.
2. **Host** (DNS rebinding, CVE-2024-28224), as Ollama's ``allowedHostsMiddleware``:
   only when the bridge listens on a loopback address. Allowed: no Host; an IP
   that is loopback, private (Go's ``IsPrivate``: 10/8, 172.16/12, 192.168/16,
   fc00::/7), unspecified or one of this machine's; the names ``localhost``, the
   host name, ``*.localhost``, ``*.local``, ``*.internal``; and
   ``ALB_ALLOWED_HOSTS``. Anything else: 403.
3. **Origin** (CORS), as Ollama's gin-contrib/cors set-up: no ``Origin``, or an
   Origin equal to ``http(s)://`` + Host, is not a CORS request. Otherwise the
   origin must match Ollama's default list (``http(s)://localhost``,
   ``127.0.0.1``, ``0.0.0.0``, with any port; ``app://``, ``file://``,
   ``tauri://``, ``vscode-webview://``, ``vscode-file://``) or ``ALB_ORIGINS``
   (like ``OLLAMA_ORIGINS``: one ``*`` per entry, ``*`` alone for any), else 403:
   a page elsewhere can no longer make a browser on this machine load, pin or
   unload models through the admin routes' loopback trust. An allowed ``OPTIONS``
   (the preflight) is answered 204 with the allowed methods and headers; other
   allowed requests get ``Access-Control-Allow-Origin`` and ``Vary: Origin``.
   Unlike Ollama the Host check comes first, for the preflight too (stricter).
4. **Body size** (checked first). A ``Content-Length`` over ``ALB_MAX_BODY_BYTES`` is a 413 before
   a byte of the body is read; a chunked body is cut by ``read_body`` at the cap.
5. **Body budget** (``bridge.http.limits.BodyBudget``): the Content-Length is taken
   from the bridge-wide budget before the app runs (a chunked body: each chunk as
   it arrives), given back when the request is over; a request it cannot cover is
   a 503 with ``Retry-After``. Large bodies given back wake the reclaimer.

The body cap comes first, before the other checks. Refusals are errors of
``bridge.errors`` in the API's shape (``/v1/...``: OpenAI's, else Ollama's). When
one is answered before its body was read, ``bridge.http.connections`` half-closes the
connection after the answer and drops, unparsed, what still arrives until the
client is quiet (at most 5 s) before closing: the client reads the answer instead
of a reset, and a 1 GiB body is never parsed (a client using ``Expect:
100-continue``, as curl does past 1 MiB, sends none of it). The warm
path (a local client, no Origin, a small body) costs the one header scan, a dict
look-up for the Host and two integer operations for the budget. The rules
(``OriginRules``, ``HostRules``, ``TrustedProxies``) are pure and built once.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import socket
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bridge.errors import (
    Api,
    BodyTooLarge,
    BridgeError,
    Forbidden,
    Overloaded,
    render,
)
from bridge.http.limits import BodyBudget, Reclaimer
from bridge.policy.access import check_networks, check_origins, split_list

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Ollama's ``envconfig.AllowedOrigins`` defaults (besides ``OLLAMA_ORIGINS``).
DEFAULT_ORIGINS: tuple[str, ...] = (
    *(
        f"{scheme}://{host}{port}"
        for host in ("localhost", "127.0.0.1", "0.0.0.0")
        for scheme in ("http", "https")
        for port in ("", ":*")
    ),
    "app://*",
    "file://*",
    "tauri://*",
    "vscode-webview://*",
    "vscode-file://*",
)
#: Ollama's ``AllowHeaders`` plus the bridge's own request headers.
ALLOW_HEADERS = (
    "Authorization,Content-Type,User-Agent,Accept,X-Requested-With,Openai-Beta,"
    "X-Stainless-Arch,X-Stainless-Async,X-Stainless-Custom-Poll-Interval,"
    "X-Stainless-Helper-Method,X-Stainless-Lang,X-Stainless-Os,"
    "X-Stainless-Package-Version,X-Stainless-Poll-Helper,X-Stainless-Retry-Count,"
    "X-Stainless-Runtime,X-Stainless-Runtime-Version,X-Stainless-Timeout,"
    "X-Alb-Session,X-Alb-Daemon,X-Alb-Admin-Token"
)
ALLOW_METHODS = "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS"
MAX_AGE_S = 12 * 3600  # gin-contrib/cors DefaultConfig
_LOCAL_TLDS = (".localhost", ".local", ".internal")
#: Go's ``netip.Addr.IsPrivate`` (narrower than Python's ``is_private``).
_GO_PRIVATE = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)
_HOST_CACHE_MAX = 1024
_SHOWN = 100


def api_for(path: str) -> Api:
    """The error shape a path speaks: OpenAI's under ``/v1/``, else Ollama's."""
    return Api.OPENAI if path.startswith("/v1/") else Api.NATIVE


# --- Origin ---------------------------------------------------------------------------


class OriginRules:
    """Which browser origins may call the bridge (gin-contrib/cors with wildcards)."""

    def __init__(self, extra: Iterable[str] = ()) -> None:
        origins = [o.strip().lower() for o in (*extra, *DEFAULT_ORIGINS) if o.strip()]
        self.allow_all = "*" in origins
        self.exact = frozenset(o for o in origins if "*" not in o)
        self.wildcards = tuple(tuple(o.split("*", 1)) for o in origins if "*" in o and o != "*")

    def allows(self, origin: str) -> bool:
        if self.allow_all or origin in self.exact:
            return True
        for prefix, suffix in self.wildcards:
            if origin.startswith(prefix) and origin.endswith(suffix):
                return True
        return False


def same_origin(origin: bytes, host: bytes | None) -> bool:
    """gin-contrib/cors: an Origin that names the Host itself is not a CORS request."""
    if host is None:
        return False
    return origin in (b"http://" + host, b"https://" + host)


# --- Host -----------------------------------------------------------------------------


def split_host(value: str) -> str:
    """The host of a ``Host`` header (Go's ``net.SplitHostPort``, brackets dropped)."""
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else value
    host, sep, port = value.rpartition(":")
    if sep and ":" not in host and (port.isdigit() or port == ""):
        return host
    return value


def _unmapped(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def local_addresses() -> frozenset[IPAddress]:
    """This machine's interface addresses (Linux: /proc; elsewhere: the host name's)."""
    found: set[IPAddress] = set()
    with contextlib.suppress(OSError):
        lines = Path("/proc/net/fib_trie").read_text().splitlines()
        for prev, line in itertools.pairwise(lines):
            if line.strip() == "/32 host LOCAL" and "|--" in prev:
                with contextlib.suppress(ValueError):
                    found.add(ipaddress.ip_address(prev.split("|--", 1)[1].strip()))
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            raw = line.split()[0]
            with contextlib.suppress(ValueError, IndexError):
                found.add(ipaddress.IPv6Address(int(raw, 16)))
    if not found:
        with contextlib.suppress(OSError):
            for info in socket.getaddrinfo(socket.gethostname(), None):
                with contextlib.suppress(ValueError):
                    found.add(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]))
    return frozenset(found)


def listens_on_loopback(host: str) -> bool:
    """Ollama checks Hosts only when its listener is on a loopback address."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class HostRules:
    """Which ``Host`` headers a loopback listener answers (Ollama's ``allowedHost``)."""

    def __init__(
        self,
        extra: Iterable[str] = (),
        *,
        hostname: str | None = None,
        addresses: frozenset[IPAddress] | None = None,
    ) -> None:
        names = [h.strip().lower() for h in extra if h.strip()]
        self.allow_all = "*" in names
        self.names = frozenset(n for n in names if not n.startswith("*."))
        self.suffixes = (*_LOCAL_TLDS, *(n[1:] for n in names if n.startswith("*.")))
        self.hostname = (socket.gethostname() if hostname is None else hostname).lower()
        self.addresses = local_addresses() if addresses is None else addresses

    def allows(self, host_header: str) -> bool:
        if self.allow_all:
            return True
        host = split_host(host_header).lower()
        try:
            ip = _unmapped(ipaddress.ip_address(host))
        except ValueError:
            pass
        else:
            if ip.is_loopback or ip.is_unspecified or ip in self.addresses:
                return True
            if any(ip in net for net in _GO_PRIVATE if net.version == ip.version):
                return True
        if host in ("", "localhost", self.hostname) or host in self.names:
            return True
        return host.endswith(self.suffixes)


# --- trusted proxies ------------------------------------------------------------------


class TrustedProxies:
    """Peers whose ``X-Forwarded-For`` is believed."""

    def __init__(self, networks: Iterable[str] = ()) -> None:
        self.networks: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in networks
        )

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, address: str) -> bool:
        try:
            ip = _unmapped(ipaddress.ip_address(address))
        except ValueError:
            return False
        return any(ip in net for net in self.networks if net.version == ip.version)

    def client(self, peer: str, forwarded: list[bytes]) -> str:
        """The client a request from ``peer`` came from: ``peer`` unless it is trusted,
        else the right-most ``X-Forwarded-For`` entry that is not a trusted proxy."""
        if not forwarded or not self.trusts(peer):
            return peer
        entries = [e.strip() for h in forwarded for e in h.decode("latin-1").split(",")]
        entries = [e for e in entries if e]
        for entry in reversed(entries):
            if not self.trusts(entry):
                try:
                    return str(ipaddress.ip_address(entry))
                except ValueError:
                    return "unknown"
        return entries[0] if entries else peer


# --- the ASGI layer ---------------------------------------------------------------------


class EdgePolicy:
    """The edge's rules, built once from the settings."""

    def __init__(
        self,
        *,
        origins: OriginRules,
        hosts: HostRules | None,
        proxies: TrustedProxies,
        max_body: int,
    ) -> None:
        self.origins = origins
        #: None: the listener is not on loopback, so no Host check (as Ollama).
        self.hosts = hosts
        self.proxies = proxies
        self.max_body = max_body
        self._host_ok: dict[bytes, bool] = {}

    @classmethod
    def from_settings(
        cls, listen_host: str, origins: str, allowed_hosts: str, proxies: str, max_body: int
    ) -> EdgePolicy:
        hosts = HostRules(split_list(allowed_hosts)) if listens_on_loopback(listen_host) else None
        return cls(
            origins=OriginRules(split_list(origins)),
            hosts=hosts,
            proxies=TrustedProxies(split_list(proxies)),
            max_body=max_body,
        )

    def host_allowed(self, host: bytes | None) -> bool:
        if self.hosts is None or host is None:
            return True
        ok = self._host_ok.get(host)
        if ok is None:
            ok = self.hosts.allows(host.decode("latin-1"))
            if len(self._host_ok) >= _HOST_CACHE_MAX:
                self._host_ok.clear()
            self._host_ok[host] = ok
        return ok


def preflight_headers(origin: bytes, allow_all: bool) -> list[tuple[bytes, bytes]]:
    """What gin-contrib/cors answers an allowed preflight with (Ollama's config)."""
    headers = [
        (b"access-control-allow-methods", ALLOW_METHODS.encode()),
        (b"access-control-allow-headers", ALLOW_HEADERS.encode()),
        (b"access-control-max-age", str(MAX_AGE_S).encode()),
    ]
    if allow_all:
        return [*headers, (b"access-control-allow-origin", b"*")]
    return [
        *headers,
        (b"vary", b"Origin"),
        (b"vary", b"Access-Control-Request-Method"),
        (b"vary", b"Access-Control-Request-Headers"),
        (b"access-control-allow-origin", origin),
    ]


async def respond_error(send: Send, err: BridgeError, path: str, *, close: bool = False) -> None:
    """``err`` in the API's shape of ``path``, as a whole response."""
    status, headers, body = render(err, api_for(path))
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _respond_empty(send: Send, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _shown(value: bytes) -> str:
    return value[:_SHOWN].decode("latin-1")


class Edge:
    """ASGI middleware: the checks of the module docstring, then the app."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        policy: EdgePolicy,
        budget: BodyBudget,
        reclaimer: Reclaimer,
        refused: Counter | None = None,
    ) -> None:
        self.app = app
        self.policy = policy
        self.budget = budget
        self.reclaimer = reclaimer
        #: ``alb_edge_refusals_total{reason}``
        self._refused = refused

    def _count(self, reason: str) -> None:
        if self._refused is not None:
            self._refused.labels(reason=reason).inc()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = self.policy
        host = origin = length = None
        chunked = False
        forwarded: list[bytes] = []
        read_xff = bool(policy.proxies)
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
            elif name == b"content-length":
                length = value
            elif name == b"origin":
                origin = value
            elif name == b"transfer-encoding":
                chunked = True
            elif read_xff and name == b"x-forwarded-for":
                forwarded.append(value)
        if forwarded and scope.get("client"):
            peer, port = scope["client"]
            scope["client"] = (policy.proxies.client(peer, forwarded), port)
        size = int(length) if length and length.isdigit() else 0
        path = scope["path"]
        if size > policy.max_body:
            # Not a byte of the body is read; the connection then lingers briefly and
            # closes (bridge.http.connections), so the client reads this answer, not a reset.
            too_large = BodyTooLarge(
                f"request body of {size} bytes exceeds the limit of {policy.max_body} bytes"
            )
            self._count("body_too_large")
            await respond_error(send, too_large, path)
            return

        if not policy.host_allowed(host):
            shown = _shown(host or b"")
            err = Forbidden(
                f"host {shown!r} is not allowed for a bridge listening on loopback "
                "(DNS rebinding protection); add it to ALB_ALLOWED_HOSTS"
            )
            self._count("host")
            await respond_error(send, err, path)
            return
        if origin is not None and not same_origin(origin, host):
            allow_all = policy.origins.allow_all
            if not policy.origins.allows(origin.decode("latin-1")):
                err = Forbidden(f"origin {_shown(origin)!r} is not allowed; add it to ALB_ORIGINS")
                self._count("origin")
                await respond_error(send, err, path)
                return
            if scope["method"] == "OPTIONS":
                await _respond_empty(send, 204, preflight_headers(origin, allow_all))
                return
            send = _with_cors(send, origin, allow_all)
        elif scope["method"] == "OPTIONS" and policy.hosts is not None:
            # Ollama's allowedHostsMiddleware answers any OPTIONS it lets through 204.
            await _respond_empty(send, 204, [])
            return

        if size:
            if not self.budget.take(size):
                self._count("body_budget")
                await respond_error(send, _spent(self.budget), path)
                return
            try:
                await self.app(scope, receive, send)
            finally:
                self.budget.give(size)
                self.reclaimer.released(size)
        elif chunked:
            await self._chunked(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _chunked(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A body of unknown length: charged to the budget chunk by chunk."""
        budget = self.budget
        held = 0

        async def charged() -> Message:
            nonlocal held
            message = await receive()
            chunk = message.get("body")
            if chunk:
                if not budget.take(len(chunk)):
                    self._count("body_budget")
                    raise _spent(budget)
                held += len(chunk)
            return message

        try:
            await self.app(scope, charged, send)
        finally:
            budget.give(held)
            self.reclaimer.released(held)


def _spent(budget: BodyBudget) -> Overloaded:
    return Overloaded(
        f"the bridge holds {budget.in_use} bytes of request bodies, its budget is "
        f"{budget.capacity} (ALB_BODY_BUDGET_BYTES); retry shortly",
        retry_after=1,
    )


def _with_cors(send: Send, origin: bytes, allow_all: bool) -> Send:
    """``send`` adding gin-contrib/cors's headers for an allowed cross-origin request."""
    extra = [(b"access-control-allow-origin", b"*" if allow_all else origin)]
    if not allow_all:
        extra.append((b"vary", b"Origin"))

    async def cors_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return cors_send


__all__ = [
    "DEFAULT_ORIGINS",
    "Edge",
    "EdgePolicy",
    "HostRules",
    "OriginRules",
    "TrustedProxies",
    "api_for",
    "check_networks",
    "check_origins",
    "listens_on_loopback",
    "local_addresses",
    "respond_error",
    "split_host",
]
