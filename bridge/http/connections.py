"""Per-connection limits: uvicorn's httptools protocol with timers and a header cap.

Theory of operation. uvicorn (0.54, httptools) has no request-head timeout, no cap
on a head's size (``h11_max_incomplete_event_size`` is h11's only), no body
timeout and no cap on open connections: 2,000 sockets that never finish a head
were held for ever, and 50 unfinished 8 MiB heads took 400 MB (httptools
accumulates a header's value until it is complete). ``GuardedProtocol``
subclasses ``HttpToolsProtocol`` — the one place that sees connections and raw
bytes — and adds, per connection:

* a **head timer**, armed when the connection is made, and for a keep-alive
  request after a read that began its head but did not complete it (a head that
  arrives in one read, the usual case, arms no timer); cancelled when the head is
  complete: ``ALB_HEADER_TIMEOUT`` seconds for the whole request line and headers,
  however slowly they trickle in. An idle new connection is closed; a partial head
  gets a 408. Between requests uvicorn's keep-alive timer (``ALB_IDLE_TIMEOUT``)
  closes idle connections.
* a **head size cap**: while a head is open, the bytes received are counted after
  httptools has parsed them; past ``ALB_MAX_HEADER_BYTES`` the connection gets a
  431 and is closed. The count is of whole reads (a read holding the end of a
  pipelined body and the start of the next head counts whole), so a head holds at
  most the cap plus one read (256 KiB) before it is refused.
* a **body rate**: when a head is complete but its body is not (after the read
  that completed the head), a one-second timer checks that the body arrives at
  ``ALB_BODY_MIN_RATE`` bytes/s on average after ``ALB_BODY_GRACE`` seconds
  (``bridge.http.limits.body_too_slow``); while uvicorn has paused reading because the
  app is not reading the body yet, the clock restarts (that wait is the bridge's,
  not the client's). A slow body gets a 408 and the connection is closed (the
  handler sees a disconnect).
* a **connection cap**: past ``ALB_MAX_CLIENT_CONNECTIONS`` open connections a new
  one gets 1 s to send its head and then a 503 in the API's shape with
  ``Retry-After: 1`` and ``Connection: close`` (uvicorn's own ``limit_concurrency``
  answers a plain-text 503 and caps nothing until a head is read).

A refusal (408, 431), and an answer given before a large part of the request's body
was read (the edge's 413 / 403 / 503 of a big upload; more than ``DRAIN_MAX`` bytes
still to come, or a chunked body), ends the connection with a *lingering close* (as
nginx does): the answer, a half-close (FIN), then what still arrives is dropped unparsed
until the client has been quiet for half a second (at most five), then the close.
Closing at once with unread bytes makes the kernel send a reset, and the client
often loses the answer with it. An answer given while only a little of the body is
still to come (a route that does not read bodies, a refusal of a small one) keeps
the connection: the rest is parsed and dropped, as uvicorn does, so a client that
reuses the connection (it was told nothing else) is not cut off.

The warm path (a request whose head and body arrive in one read) adds three
attribute checks per read and the head timer's cancel; refusals are rendered from
``bridge.errors`` in the API's shape of the path read so far.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from prometheus_client import Counter, Gauge
from starlette.types import Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from bridge.errors import BadRequest, BridgeError, Overloaded, render
from bridge.http.edge import api_for, respond_error
from bridge.http.limits import body_too_slow
from bridge.metrics import Metrics
from bridge.settings import Settings

#: Seconds a connection over the cap gets to send the head its 503 answers.
OVER_CAP_HEAD_S = 1.0
#: Seconds between two checks of a body's rate.
BODY_TICK_S = 1.0
#: A refused connection is read (the bytes dropped) after its answer and a half-close
#: until the client has sent nothing for LINGER_IDLE_S, at most LINGER_MAX_S (nginx's
#: lingering_timeout / lingering_time): the client reads the answer, not a reset.
LINGER_IDLE_S = 0.5
#: Body bytes still to come that an early answer lets the parser drain (keep-alive)
#: rather than ending the connection with a lingering close.
DRAIN_MAX = 64 * 1024
LINGER_MAX_S = 5.0


class HeadersTooLarge(BridgeError):
    status = 431


class RequestTimeout(BridgeError):
    status = 408


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    header_timeout: float
    idle_timeout: float
    max_header_bytes: int
    max_connections: int
    body_min_rate: float
    body_grace: float

    @classmethod
    def from_settings(cls, s: Settings) -> ConnectionLimits:
        return cls(
            header_timeout=s.header_timeout,
            idle_timeout=s.idle_timeout,
            max_header_bytes=s.max_header_bytes,
            max_connections=s.max_client_connections,
            body_min_rate=float(s.body_min_rate),
            body_grace=s.body_grace,
        )


#: Not anchored at a line's start: on a keep-alive connection the read the parser refuses
#: can begin with the rest of the previous request's body (a route that answered without
#: reading it), so the request line may follow body bytes, spaces included, on one line.
#: (The method is a lookbehind of one byte: a leading ``[!-~]+`` would backtrack
#: quadratically over a long run of printable bytes.)
_REQUEST_LINE = re.compile(rb"(?<=[!-~]) (/[!-~]*) HTTP/1\.[01]\r?\n")


def request_target(data: bytes) -> bytes:
    """The target of the last request line in ``data`` (``b"BREW /v1/x HTTP/1.1\r\n"``
    -> ``b"/v1/x"``, also after the tail of a previous body: ``b'{"a": 1}BREW /v1/x
    HTTP/1.1\r\n'``), or ``b""``."""
    found = list(_REQUEST_LINE.finditer(data[-65536:]))
    return found[-1].group(1) if found else b""


def raw_response(err: BridgeError, url: bytes) -> bytes:
    """A whole HTTP/1.1 response for ``err`` (API shape by the path in ``url``) that
    tells the client the connection closes."""
    path = url.split(b"?", 1)[0].decode("latin-1")
    status, headers, body = render(err, api_for(path))
    lines = [STATUS_LINE[status]]
    for name, value in [*headers, (b"content-length", str(len(body)).encode())]:
        lines += [name, b": ", value, b"\r\n"]
    lines += [b"connection: close\r\n\r\n", body]
    return b"".join(lines)


async def refuse_connection(scope: Scope, receive: Receive, send: Send) -> None:
    """The app a connection over the cap is answered by."""
    err = Overloaded(
        "too many open connections to the bridge (ALB_MAX_CLIENT_CONNECTIONS); retry shortly",
        retry_after=1,
    )
    await respond_error(send, err, scope["path"], close=True)


class GuardedProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` with the limits of the module docstring."""

    limits: ClassVar[ConnectionLimits]
    #: ``alb_connection_refusals_total{reason}`` and ``alb_client_connections``.
    refused: ClassVar[Counter | None] = None
    open_connections: ClassVar[Gauge | None] = None

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.timeout_keep_alive = self.limits.idle_timeout  # type: ignore[assignment]
        self._head_open = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._body_open = False
        #: Body bytes still to come (Content-Length less what was parsed); -1: chunked.
        self._body_left = 0
        self._last_read = b""
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_seen = 0
        self._body_since = 0.0
        self._lingering = False
        self._linger_last = 0.0
        self._linger_until = 0.0

    # --- connection ---------------------------------------------------------------

    def _count(self, reason: str) -> None:
        if self.refused is not None:
            self.refused.labels(reason=reason).inc()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.open_connections is not None:
            self.open_connections.inc()
        if len(self.connections) > self.limits.max_connections:
            self._count("connection_cap")
            self.app = refuse_connection
            self._arm_head(min(OVER_CAP_HEAD_S, self.limits.header_timeout))
        else:
            self._arm_head(self.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.open_connections is not None:
            self.open_connections.dec()
        self._cancel_head()
        self._cancel_body()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            self._linger_last = self.loop.time()
            return
        self._last_read = data  # the request line, should the parser refuse this read
        super().data_received(data)
        self._last_read = b""
        if self._head_open:
            if self._head_timer is None:
                self._arm_head(self.limits.header_timeout)
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse(
                    HeadersTooLarge(
                        f"request head exceeds {self.limits.max_header_bytes} bytes "
                        "(ALB_MAX_HEADER_BYTES)"
                    ),
                    "head_too_large",
                )
        elif self._body_open:
            if self._body_timer is None:
                self._watch_body()
            else:
                self._body_seen += len(data)

    def send_400_response(self, msg: str) -> None:
        """What the HTTP parser could not read (a malformed head, a method it does not
        know): uvicorn's plain-text 400, in the API's shape instead."""
        self._head_open = False
        self._cancel_head()
        if self.transport.is_closing():
            return
        self._count("bad_request")
        err = BadRequest(f"invalid HTTP request: {msg.rstrip('.').lower()}")
        # The read the parser refused holds the request line (``url`` may still be the
        # previous request's: the parser can refuse a head before its message begins).
        url = request_target(self._last_read)
        self.transport.write(raw_response(err, url))
        self.transport.close()

    # --- parser callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._head_open:  # a keep-alive request: its timer is armed if it needs one
            self._head_open = True
            self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._head_open = False
        self._cancel_head()
        self._body_open = True
        left = 0
        for name, value in self.headers:
            if name == b"content-length":
                left = int(value) if value.isdigit() else -1
            elif name == b"transfer-encoding":
                left = -1
        self._body_left = left
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._body_left > 0:
            self._body_left -= len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._body_open = False
        self._cancel_body()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        left = self._body_left
        if self._body_open and (left < 0 or left > DRAIN_MAX) and not self.transport.is_closing():
            # Answered before its body was read (413, 403, a spent budget): no more of
            # this body is parsed; the client gets the answer, then the connection ends.
            self._linger()

    # --- the head ---------------------------------------------------------------------

    def _arm_head(self, seconds: float) -> None:
        self._cancel_head()
        self._head_open = True
        self._head_timer = self.loop.call_later(seconds, self._head_expired)

    def _cancel_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._head_bytes == 0 and not getattr(self, "url", b""):
            self._count("head_timeout")
            self.transport.close()  # never said a word: nothing to answer
            return
        self._refuse(
            RequestTimeout("request head not complete in time (ALB_HEADER_TIMEOUT)"),
            "head_timeout",
        )

    def _refuse(self, err: BridgeError, reason: str) -> None:
        self._head_open = False
        self._cancel_head()
        if self.transport.is_closing() or self._lingering:
            return
        self._count(reason)
        self.transport.write(raw_response(err, getattr(self, "url", b"")))
        self._linger()

    def _linger(self) -> None:
        """Half-close after what was written, drop what still arrives, close once the
        client has gone quiet (see ``LINGER_IDLE_S``)."""
        self._lingering = True
        self._cancel_body()
        self._unset_keepalive_if_required()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        now = self.loop.time()
        self._linger_last, self._linger_until = now, now + LINGER_MAX_S
        self.timeout_keep_alive_task = self.loop.call_later(LINGER_IDLE_S, self._linger_check)

    def _linger_check(self) -> None:
        now = self.loop.time()
        if now - self._linger_last >= LINGER_IDLE_S or now >= self._linger_until:
            self.timeout_keep_alive_task = None
            self.transport.close()
            return
        at = min(self._linger_last + LINGER_IDLE_S, self._linger_until)
        self.timeout_keep_alive_task = self.loop.call_at(at, self._linger_check)

    # --- the body ---------------------------------------------------------------------

    def _watch_body(self) -> None:
        if self.limits.body_min_rate <= 0 or self.transport.is_closing():
            return
        self._body_seen = 0
        self._body_since = self.loop.time()
        self._body_timer = self.loop.call_later(BODY_TICK_S, self._check_body)

    def _cancel_body(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _check_body(self) -> None:
        self._body_timer = None
        if not self._body_open or self.transport.is_closing():
            return
        now = self.loop.time()
        lim = self.limits
        if self.flow.read_paused:
            # The app is not reading yet: the wait is the bridge's, not the client's.
            self._body_seen, self._body_since = 0, now
        elif body_too_slow(
            self._body_seen, now - self._body_since, lim.body_min_rate, lim.body_grace
        ):
            cycle = self.cycle
            if cycle is not None and not cycle.response_started:
                err = RequestTimeout(
                    f"request body slower than {lim.body_min_rate:g} bytes/s (ALB_BODY_MIN_RATE)"
                )
                self._refuse(err, "body_too_slow")
            else:
                self._count("body_too_slow")
                self.transport.close()
            return
        self._body_timer = self.loop.call_later(BODY_TICK_S, self._check_body)


def protocol_for(limits: ConnectionLimits, metrics: Metrics | None = None) -> type[GuardedProtocol]:
    """A ``GuardedProtocol`` class bound to ``limits`` and counting into ``metrics``
    (uvicorn instantiates the class)."""
    attrs: dict[str, Any] = {"limits": limits}
    if metrics is not None:
        attrs.update(
            refused=metrics.connection_refusals, open_connections=metrics.client_connections
        )
    return type("GuardedProtocol", (GuardedProtocol,), attrs)


__all__ = [
    "ConnectionLimits",
    "GuardedProtocol",
    "HeadersTooLarge",
    "RequestTimeout",
    "protocol_for",
    "raw_response",
    "refuse_connection",
]
