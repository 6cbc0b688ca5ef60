"""The inference pipeline shared by every generate/chat/embed route, native and /v1.

One raw ASGI handler per route (no per-request framework objects on the hot
path): read the body once under the cap, parse it once, check the model,
admit (``Scheduler.admit``: a slot now, or a place in the model's queue),
forward (``relay``; a /v1 request given a runner at another context goes through
the native API with its num_ctx, ``bridge.wire.openai_native``), release the slot,
record. A task watches for the client's disconnect and cancels the handler, which
closes the upstream response; a load the bridge started keeps running. A streaming /v1 request
that has to wait gets SSE comment heartbeats until its slot is free; native
NDJSON streams send nothing until the daemon's first line (as Ollama does).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from bridge.errors import (
    JSON_TYPE,
    Api,
    BadRequest,
    BridgeError,
    ClientGone,
    Forbidden,
    ModelNotFound,
    Moved,
    Replaced,
    Unavailable,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from bridge.events.sink import RequestRecord
from bridge.http.gatekeeper import principal_of
from bridge.http.relay import HEARTBEAT, Exchange, read_body, relay, watch_disconnect
from bridge.http.responses import internal_error
from bridge.http.state import Bridge, Runtime
from bridge.policy.keys import reserve_tokens
from bridge.policy.numctx import (
    Need,
    PromptSize,
    need_for,
    output_eval_count,
    prompt_eval_count,
    prompt_size,
)
from bridge.policy.sizing import ModelInfo
from bridge.scheduling.scheduler import Lease, Scheduler, Ticket
from bridge.tenancy.quotas import Permit
from bridge.wire.framing import End
from bridge.wire.openai_native import NATIVE_PATH, Translator, to_native
from bridge.wire.parsing import KEEP, Endpoint, Kind, Parsed, parse, rewrite

_SSE_TYPE = b"text/event-stream"
#: Placements one request may go through (failovers and re-placements included).
_MAX_PLACEMENTS = 6
#: Times a queued request may be moved to a new copy of its model without it counting
#: as a placement (at most one per new copy).
_MAX_MOVES = 16


def session_of(
    headers: list[tuple[bytes, bytes]], user: str | None, client: Any, key_id: str | None = None
) -> str:
    """``X-ALB-Session``, else the OpenAI ``user``, else the API key's id (the bridge's
    key, else a hash of the ``Authorization`` header), else the peer."""
    auth = b""
    for name, value in headers:
        if name == b"x-alb-session" and value:
            return value.decode("latin-1")
        if name == b"authorization":
            auth = value
    if user:
        return "user:" + user
    if key_id is not None:
        return "key:" + key_id
    if auth:
        return "key:" + hashlib.sha256(auth).hexdigest()[:12]
    return "peer:" + (str(client[0]) if client else "-")


def _alb_headers(
    lease: Lease | Ticket, queue_ms: float, load_ms: float
) -> list[tuple[bytes, bytes]]:
    return [
        (b"x-alb-queue-ms", f"{queue_ms:.1f}".encode()),
        (b"x-alb-load-ms", f"{load_ms:.1f}".encode()),
        (b"x-alb-daemon", lease.daemon.name.encode()),
        (b"x-alb-cold", b"true" if lease.cold else b"false"),
    ]


def _created_at() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class InferenceRoute:
    """ASGI app for one proxied inference endpoint."""

    def __init__(self, bridge: Bridge, endpoint: Endpoint) -> None:
        self._bridge = bridge
        self._ep = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        bridge, ep = self._bridge, self._ep
        t0 = time.monotonic()
        ex = Exchange(send, ep.api)
        task = asyncio.current_task()
        assert task is not None
        watcher: asyncio.Task[None] | None = None
        state = _State()
        try:
            try:
                body = await read_body(receive, bridge.settings.max_body_bytes)
            except asyncio.CancelledError:
                raise ClientGone("client went away while sending") from None
            watcher = asyncio.get_running_loop().create_task(watch_disconnect(receive, ex, task))
            parsed = parse(body, ep)
            state.parsed = parsed
            state.model = parsed.key
            principal = principal_of(scope)
            key = principal.key
            if key is not None:
                state.key_id = key.id
                if not key.allows_model(parsed.key):
                    self._refused("model")
                    raise Forbidden(f"key {key.id} may not use model '{parsed.model}'")
            rt = bridge.rt()
            if not await rt.fleet.ensure_known(parsed.key):
                state.model = "-"
                if not any(d.up for d in rt.fleet.daemons.values()):
                    raise Unavailable("no daemon is answering", retry_after=5)
                raise ModelNotFound(ep.not_found(parsed.model))
            state.session = session_of(
                scope["headers"], parsed.user, scope.get("client"), state.key_id
            )
            try:
                async with asyncio.timeout(bridge.settings.request_timeout):
                    if key is not None and bridge.tenancy is not None:
                        state.permit = await bridge.tenancy.quotas.admit(
                            key, self._reserve(parsed.doc, bridge.tenancy.output_reserve)
                        )
                        ex.limit_headers = state.permit.headers
                    await self._serve(rt, ex, body, parsed, state)
            except TimeoutError:
                raise UpstreamTimeout(
                    f"request did not finish within {bridge.settings.request_timeout:g}s"
                ) from None
        except BridgeError as err:
            if isinstance(err, ClientGone):
                ex.client_gone = True
            await ex.fail(err)
            # The name, not the error: its traceback holds this frame, whose ``state``
            # holding it would be a cycle that keeps the body alive until a full GC.
            state.error = type(err).__name__
        except asyncio.CancelledError:
            if not ex.client_gone:
                raise
            task.uncancel()
        except Exception:  # a bug: answered in the API's shape, logged with an id
            bug = internal_error(f"{ep.path} request")
            state.error = type(bug).__name__
            with contextlib.suppress(Exception):
                await ex.fail(bug)
        finally:
            if watcher is not None:
                watcher.cancel()
            if state.permit is not None:
                self._settle(ex, state)
            self._record(ex, state, t0, scope)

    def _refused(self, reason: str) -> None:
        if self._bridge.tenancy is not None:
            self._bridge.tenancy.keyring.refused(reason)

    @staticmethod
    def _reserve(doc: dict[str, Any], output_reserve: int) -> int:
        chars = prompt_size(doc).chars
        value = doc.get("input")
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str):
                chars += len(item)
        cap = doc.get("max_completion_tokens", doc.get("max_tokens"))
        options = doc.get("options")
        if cap is None and isinstance(options, dict):
            cap = options.get("num_predict")
        most = cap if isinstance(cap, int) and not isinstance(cap, bool) else None
        return reserve_tokens(chars, most, output_reserve)

    def _settle(self, ex: Exchange, state: _State) -> None:
        """A key's tokens: the final frame's counts; none when the request never held a
        slot; the reservation when the daemon answered without counts."""
        assert self._bridge.tenancy is not None
        assert state.permit is not None
        prompt: int | None = 0
        output: int | None = 0
        if ex.tail:
            prompt, output = prompt_eval_count(ex.tail), output_eval_count(ex.tail)
        elif state.lease is not None:
            prompt = output = None
        self._bridge.tenancy.quotas.finish(state.permit, prompt, output)

    async def _serve(
        self, rt: Runtime, ex: Exchange, body: bytes, parsed: Parsed, state: _State
    ) -> None:
        settings = self._bridge.settings
        if parsed.kind is Kind.UNLOAD and self._ep.can_unload:
            await self._unload(rt, ex, parsed)
            return
        info = await rt.fleet.model_info(parsed.key)
        need = self._need(rt, parsed, info, state)
        sse = parsed.stream and self._ep.api is Api.OPENAI
        metrics = self._bridge.metrics
        exclude: set[str] = set()
        failure: BridgeError | None = None
        placements = moves = 0
        while placements < _MAX_PLACEMENTS:
            placements += 1
            try:
                got = rt.scheduler.admit(parsed.key, need, info, exclude=frozenset(exclude))
            except Unavailable:
                if failure is not None:
                    raise failure from None
                raise
            try:
                if isinstance(got, Ticket):
                    state.daemon = got.daemon.name
                    weight = state.permit.key.priority if state.permit is not None else 1
                    lease = await self._wait(rt, ex, got, state.session, sse=sse, weight=weight)
                else:
                    lease = got
            except Moved as err:  # a new copy: placed again, at no cost
                moves += 1
                if moves <= _MAX_MOVES:
                    placements -= 1
                failure = err
                continue
            except Replaced as err:
                failure = err
                continue
            with _Held(rt.scheduler, lease) as held:
                state.lease = lease
                state.daemon = lease.daemon.name
                if not ex.started:
                    ex.extra_headers = _alb_headers(lease, lease.queue_ms, lease.load_ms)
                path, forward, translator = self._forward(lease, body, parsed, need)
                held.used = True
                try:
                    end = await relay(
                        rt.upstream,
                        ex,
                        lease.daemon.url,
                        path,
                        forward,
                        retries=settings.upstream_retries,
                        on_retry=metrics.retries_by(lease.daemon.name).inc,
                        translator=translator,
                    )
                    state.stream_failed = end is End.ERROR
                except BridgeError as err:
                    if err.retriable and not ex.sent_upstream_bytes:
                        # Nothing reached the client: try another daemon. Only transport
                        # failures count against the daemon's circuit (a 5xx is the model's).
                        if isinstance(err, UpstreamUnreachable):
                            rt.scheduler.report_failure(lease.daemon, err.message)
                        metrics.failovers.labels(daemon=lease.daemon.name).inc()
                        exclude.add(lease.daemon.name)
                        failure = err
                        continue
                    state.stream_failed = ex.sent_upstream_bytes
                    raise
            self._calibrate(rt, parsed, ex, state)
            return
        raise failure or Unavailable("no daemon could serve the request", retry_after=5)

    def _forward(
        self, lease: Lease, body: bytes, parsed: Parsed, need: Need
    ) -> tuple[str, bytes, Translator | None]:
        """The path and bytes to send for ``lease``'s runner, and the translator of the
        answer (None: the daemon's answer goes to the client as it is)."""
        settings = self._bridge.settings
        if need.auto and not lease.gate.auto and lease.gate.ctx:
            # A /v1 request on a runner at another context (``Need.translate``):
            # the native API with the runner's num_ctx, answered in OpenAI's shape.
            forward = to_native(self._ep.path, parsed.doc, lease.gate.ctx)
            translator = Translator.for_request(
                self._ep.path, parsed.doc, random.randrange(999), int(time.time())
            )
            self._bridge.metrics.num_ctx_choice("translated").inc()
            return NATIVE_PATH[self._ep.path], forward, translator
        forward = rewrite(
            body,
            parsed,
            settings.keep_alive_policy,
            settings.keep_alive_min,
            settings.keep_alive_max,
            num_ctx=None if lease.gate.auto else lease.gate.ctx or KEEP,
            strip_runner=settings.runner_options == "strip",
            native=self._ep.api is Api.NATIVE,
        )
        return self._ep.path, forward, None

    def _need(self, rt: Runtime, parsed: Parsed, info: ModelInfo | None, state: _State) -> Need:
        ep = self._ep
        embed = ep.payload == "input" or ep.path == "/api/embeddings"
        ratio = rt.scheduler.calibrator.ratio(parsed.key)
        state.prompt = None if embed else prompt_size(parsed.doc)
        try:
            return need_for(
                parsed.doc,
                embed=embed,
                openai=ep.api is Api.OPENAI,
                model_context=info.context_length if info is not None else 0,
                chars_per_token=ratio,
                limits=rt.scheduler.limits,
                translate=ep.path in NATIVE_PATH and self._bridge.settings.openai_native,
            )
        except BadRequest as err:
            self._bridge.metrics.num_ctx_choices.labels(choice="rejected").inc()
            rt.scheduler.decisions.record(
                "reject",
                parsed.key,
                "",
                err.message,
                model_context=info.context_length if info else None,
                chars_per_token=round(ratio, 3),
            )
            raise

    def _calibrate(self, rt: Runtime, parsed: Parsed, ex: Exchange, state: _State) -> None:
        if state.prompt is None or not ex.tail:
            return
        count = prompt_eval_count(ex.tail)
        if count:
            rt.scheduler.calibrator.observe(
                parsed.key, state.prompt, count, self._bridge.settings.image_tokens
            )

    async def _wait(
        self,
        rt: Runtime,
        ex: Exchange,
        ticket: Ticket,
        session: str,
        *,
        sse: bool,
        weight: int = 1,
    ) -> Lease:
        if not sse:
            return await rt.scheduler.wait(ticket, session, weight=weight)
        waiting = asyncio.ensure_future(rt.scheduler.wait(ticket, session, weight=weight))
        interval = self._bridge.settings.heartbeat_interval
        handed_over = False
        try:
            while True:
                done, _ = await asyncio.wait({waiting}, timeout=interval)
                if done:
                    handed_over = True
                    return waiting.result()
                if not ex.started:
                    elapsed = (time.monotonic() - ticket.started_at) * 1000
                    ex.extra_headers = _alb_headers(ticket, elapsed, elapsed if ticket.cold else 0)
                    await ex.start(200, [(b"content-type", _SSE_TYPE)])
                await ex.chunk(HEARTBEAT, upstream=False)
        finally:
            if not waiting.done():
                waiting.cancel()
                with contextlib.suppress(BaseException):
                    await waiting
            elif not handed_over and not waiting.cancelled() and waiting.exception() is None:
                rt.scheduler.release(waiting.result())

    async def _unload(self, rt: Runtime, ex: Exchange, parsed: Parsed) -> None:
        """``keep_alive: 0`` with no prompt. Under the ``bridge`` policy clients cannot
        evict a model for everyone: the request is acknowledged and nothing unloads
        (the bridge unloads idle models itself). Under ``honour`` the bridge unloads."""
        if self._bridge.settings.keep_alive_policy == "honour":
            await rt.scheduler.unload_model(parsed.key, None, "client", force=True)
        reply: dict[str, Any] = {"model": parsed.model, "created_at": _created_at()}
        if self._ep.path == "/api/chat":
            reply["message"] = {"role": "assistant", "content": ""}
            reply.update(done_reason="unload", done=True)
        else:
            reply.update(response="", done=True, done_reason="unload")
        await ex.respond(200, [(b"content-type", JSON_TYPE)], orjson.dumps(reply))

    def _record(self, ex: Exchange, state: _State, t0: float, scope: Scope) -> None:
        bridge = self._bridge
        now = time.monotonic()
        status = 499 if ex.client_gone else (ex.status or 500)
        path = self._ep.path
        m = bridge.metrics
        m.requests_by(path, state.model, str(status)).inc()
        m.latency_by(path, state.model).observe(now - t0)
        ttft = None
        if ex.first_byte_at is not None:
            ttft = (ex.first_byte_at - t0) * 1000
            m.ttft_by(path, state.model).observe(ttft / 1000)
        if state.stream_failed:
            m.stream_failures.labels(endpoint=path, reason="upstream").inc()
        if bridge.sink is None:
            return
        # References only (body, headers, last frame): the access-log event is built
        # from them off the request path (bridge.events.pipeline).
        lease = state.lease
        parsed = state.parsed
        bridge.sink(
            RequestRecord(
                endpoint=path,
                model=state.model,
                status=status,
                session=state.session,
                daemon=lease.daemon.name if lease else state.daemon,
                cold=lease.cold if lease else False,
                queue_ms=lease.queue_ms if lease else 0.0,
                load_ms=lease.load_ms if lease else 0.0,
                ttft_ms=ttft,
                total_ms=(now - t0) * 1000,
                stream_failed=state.stream_failed,
                api=self._ep.api.value,
                stream=parsed.stream if parsed else False,
                error="ClientGone" if ex.client_gone else state.error,
                num_ctx_applied=lease.gate.ctx if lease else 0,
                finished_at=time.time(),
                doc=parsed.doc if parsed else None,
                headers=scope["headers"],
                tail=ex.tail,
                key_id=state.key_id,
            )
        )


class _Held:
    """A slot held for one ``with`` block and given back exactly once when the block
    ends, however it ends (an answer, a failover, a bug, a cancellation). ``used``:
    the request went upstream (the slot's service time counts)."""

    __slots__ = ("_lease", "_scheduler", "used")

    def __init__(self, scheduler: Scheduler, lease: Lease) -> None:
        self._scheduler = scheduler
        self._lease = lease
        self.used = False

    def __enter__(self) -> _Held:
        return self

    def __exit__(self, *exc: object) -> None:
        self._scheduler.release(self._lease, used=self.used)


class _State:
    """What the record of one request needs, filled in as it progresses."""

    __slots__ = (
        "daemon",
        "error",
        "key_id",
        "lease",
        "model",
        "parsed",
        "permit",
        "prompt",
        "session",
        "stream_failed",
    )

    def __init__(self) -> None:
        self.model = "-"
        self.session = "-"
        self.daemon = ""
        self.lease: Lease | None = None
        #: The class name of the error answered, if any.
        self.error: str | None = None
        self.stream_failed = False
        self.prompt: PromptSize | None = None
        self.parsed: Parsed | None = None
        #: The bridge's API key of the request (``ALB_AUTH=keys``) and what it took.
        self.key_id: str | None = None
        self.permit: Permit | None = None
