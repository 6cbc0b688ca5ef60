"""A key's limits, held across replicas (issue #16).

The counting is the ``limits`` library's: its Redis storage (Lua scripts, atomic on
the server) in distributed mode, its memory storage otherwise. Per key, in this order
(``admit``), each refusal giving back what the earlier steps took:

1. **concurrent requests**: a sorted set per key (member per request, scored by its
   deadline, so a replica that dies frees its entries within ``ALB_REQUEST_TIMEOUT``
   + 60 s), added and counted in one MULTI, removed when over the limit (``limits``
   has no concurrency limiter; no Lua needed);
2. **daily tokens**: a counter per key and UTC day (``incr``), checked before, the
   reservation added after the other checks pass;
3. **tokens per minute**: a sliding-window counter; the request reserves its estimate
   (``bridge.policy.keys.reserve_tokens``); ``Permit.settle`` adds the difference to
   the final frame's ``prompt_eval_count + eval_count`` (``usage`` on /v1); a stream
   that ends without counts keeps its reservation;
4. **requests per minute**: a moving window (a timestamp per request): exact across
   replicas, last so that a refusal here never costs a token reservation.

Over a limit: ``RateLimited`` (429) with ``Retry-After`` and OpenAI's
``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` headers, which admitted
requests carry too.

**Redis down.** Every replica also counts what it admits in its own memory storage,
all the time. When a Redis call fails or times out (``ALB_REDIS_TIMEOUT``), the
circuit opens for a second and the replica enforces its share alone: each limit
divided by the most replicas it saw in the last minute (``Limits.share``; a count
that dropped as the others' heartbeats lapsed in the outage does not widen it),
against its own counts of the window, those from before the outage included. So a key
that had used its minute across three replicas stays refused, and a limit is never
multiplied by the replica count. Every cooldown a probe hands in to Redis what the
replica admitted alone; only once all of it is in does the replica take from Redis
again (``alb_key_limits_mode{mode}`` shows which), so the windows after the outage count
it and no request is admitted against a Redis that has not heard of them. Redis must
keep its data across a restart (``appendonly yes``; the throwaway Redis of ``make
run-cluster`` keeps none) for a window to survive one.

Usage (requests, prompt and output tokens per key and UTC day) is added to the key
store in batches every ``flush_s`` (``alb keys usage`` reads it), and per-key counters
go to Prometheus with the key id as label for the first ``metrics_keys`` keys seen,
``other`` after that.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from limits.aio.storage import MemoryStorage, RedisStorage
from limits.errors import StorageError
from prometheus_client import CollectorRegistry, Counter, Gauge
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, RedisError

from bridge.errors import RateLimited
from bridge.policy.health import Breaker
from bridge.policy.keys import KeyRecord, Limits, reset_text
from bridge.tenancy.store import KeyStore, Usage

log = logging.getLogger("alb.keys")

_MINUTE = 60
_DAY_TTL = 2 * 86400
#: A limit no request reaches: a settlement or a mirror entry is never refused (at most
#: 14 digits: Redis's Lua writes larger numbers in exponent form, which LTRIM refuses).
_NO_LIMIT = 10**9
_REDIS_ERRORS = (RedisError, StorageError, OSError, TimeoutError)

Headers = tuple[tuple[bytes, bytes], ...]


class QuotaMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.mode = Gauge(
            "alb_key_limits_mode",
            "1 for how this replica enforces key limits now: shared (Redis), local (its "
            "share, Redis unreachable) or memory (one replica, no Redis).",
            ["mode"],
            registry=registry,
        )
        self.requests = Counter(
            "alb_key_requests", "Requests admitted per key.", ["key"], registry=registry
        )
        self.tokens = Counter(
            "alb_key_tokens", "Tokens per key: prompt, output.", ["key", "kind"], registry=registry
        )
        self.limited = Counter(
            "alb_key_limited",
            "Requests refused 429 per key and limit: rpm, tpm, concurrency, daily_tokens.",
            ["key", "limit"],
            registry=registry,
        )
        self.errors = Counter(
            "alb_key_limits_errors",
            "Redis calls of the key limits that failed (the replica used its share).",
            registry=registry,
        )


@dataclass(slots=True)
class _Taken:
    """What one admission took from one storage, to give back or settle."""

    reserve: int
    tpm: bool = False
    daily: bool = False
    conc: str | None = None


class Permit:
    """One admitted request of a key: ``settle`` once its counts are known, ``release``
    when it is over (both idempotent; ``release`` settles at the reservation)."""

    __slots__ = ("_done", "_quotas", "_settled", "headers", "key", "local", "reserve", "shared")

    def __init__(  # noqa: PLR0917
        self,
        quotas: Quotas,
        key: KeyRecord,
        reserve: int,
        shared: _Taken | None,
        local: _Taken | None,
        headers: Headers,
    ) -> None:
        self._quotas = quotas
        self.key = key
        self.reserve = reserve
        self.shared = shared
        self.local = local
        self.headers = headers
        self._settled = False
        self._done = False

    async def settle(self, prompt: int | None, output: int | None) -> None:
        if self._settled:
            return
        self._settled = True
        await self._quotas._settle(self, prompt, output)

    async def release(self) -> None:
        if self._done:
            return
        self._done = True
        if not self._settled:
            await self.settle(None, None)
        await self._quotas._release(self)


class Quotas:
    """Per-key limits and usage (module doc)."""

    def __init__(
        self,
        store: KeyStore,
        *,
        redis_url: str | None = None,
        namespace: str = "alb",
        timeout: float = 0.1,
        replicas: Callable[[], int] = lambda: 1,
        replica: str = "r",
        request_timeout: float = 600.0,
        metrics: QuotaMetrics | None = None,
        flush_s: float = 5.0,
        metrics_keys: int = 100,
        cooldown_s: float = 1.0,
        pool_size: int = 32,
    ) -> None:
        self._store = store
        self._replicas = _Peak(replicas, _MINUTE)
        self._ns = namespace
        self._metrics = metrics
        self._flush_s = flush_s
        self._metrics_keys = metrics_keys
        self._labels: dict[str, str] = {}
        self._local = MemoryStorage()
        self._local_conc: dict[str, int] = {}
        self._shared: RedisStorage | None = None
        self._redis: Redis | None = None
        self._pool: BlockingConnectionPool | None = None
        if redis_url is not None:
            # One pool for the limits' storage and the concurrency sets, bounded: a burst
            # of admissions waits (at most ``timeout``) for a connection instead of
            # opening hundreds. One retry on a new connection when a pooled one is dead
            # (Redis was restarted: every connection of the pool is), none on a timeout:
            # a slow Redis costs one timeout. The retry is the pool's connections' (a
            # client given a pool ignores its own).
            self._pool = pool = BlockingConnectionPool.from_url(
                redis_url,
                max_connections=pool_size,
                timeout=timeout,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 1, supported_errors=(ConnectionError,)),
            )
            options: dict[str, Any] = {"connection_pool": pool}
            self._shared = RedisStorage(
                "async+" + redis_url,
                implementation="redispy",
                key_prefix=f"{namespace}:limits",
                **options,
            )
            self._redis = Redis(**options)
        self._breaker = Breaker(failures_to_open=1, cooldown=cooldown_s)
        self._cooldown_s = cooldown_s
        self._probe: asyncio.Task[None] | None = None
        self._conc_ttl = request_timeout + 60
        self._ids = itertools.count()
        self._replica = replica
        self._usage: dict[tuple[str, str], list[int]] = {}
        #: Per key: requests, tokens per minute and daily tokens admitted while Redis
        #: was unreachable, handed in when it answers again (``_hand_in``).
        self._backlog: dict[str, list[int]] = {}
        self._task: asyncio.Task[None] | None = None
        #: Settlements running after their responses went out (awaited at close).
        self._pending: set[asyncio.Task[None]] = set()
        self._mode = ""
        self._gauge("memory" if self._shared is None else "shared")

    # --- life -------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._flusher(), name="alb-usage")

    async def aclose(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.drain()
        await self.flush()
        if self._redis is not None:
            await self._redis.aclose()
        if self._pool is not None:  # the limits' storage and the client share it
            await self._pool.aclose()

    async def drain(self) -> None:
        """Wait for the settlements under way (``finish``)."""
        while self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    @property
    def mode(self) -> str:
        return self._mode

    def finish(self, permit: Permit, prompt: int | None, output: int | None) -> None:
        """Settle and release ``permit`` off the request path (its answer is out)."""

        async def run() -> None:
            try:
                await permit.settle(prompt, output)
            finally:
                await permit.release()

        task = asyncio.get_running_loop().create_task(run())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    # --- admission ------------------------------------------------------------------------
    async def admit(self, key: KeyRecord, reserve: int) -> Permit:
        """Take ``reserve`` tokens and one request from ``key``'s limits, or raise
        ``RateLimited``."""
        lim = key.limits
        shared = local = None
        headers: Headers = ()
        if lim.any:
            if self._shared is not None:
                self._replicas.see()
            # Closed only by the probe (``_recover``), once the outage is handed in.
            if self._shared is not None and self._breaker.allows_traffic(time.monotonic()):
                try:
                    shared, headers = await self._take(self._shared, lim, key.id, reserve, True)
                except _REDIS_ERRORS as exc:
                    self._redis_failed(exc)
                except RateLimited:  # Redis answered: refused
                    self._redis_ok()
                    raise
                else:
                    self._redis_ok()
            if shared is None:
                share = lim if self._shared is None else lim.share(self._replicas.peak())
                local, headers = await self._take(self._local, share, key.id, reserve, False)
                if self._shared is not None:
                    self._owed(key.id, lim, requests=1, tokens=reserve)
            else:
                # Count it here as well: the share this replica enforces if Redis goes.
                local = await self._mirror(lim, key.id, reserve)
        self._count(key.id, requests=1)
        return Permit(self, key, reserve, shared, local, headers)

    async def _take(
        self,
        storage: RedisStorage | MemoryStorage,
        lim: Limits,
        ident: str,
        reserve: int,
        shared: bool,
    ) -> tuple[_Taken, Headers]:
        """Two round trips at most: the concurrency slot, the day's count and the token
        reservation at once; then, if all three allow it, the request in the minute's
        window and the day's reservation at once (a refusal gives back what was taken)."""
        taken = _Taken(reserve)
        day_key = self._day_key(ident)
        tpm_key, rpm_key = self._key(ident, "tpm"), self._key(ident, "rpm")

        async def conc() -> bool:
            if lim.concurrency is None:
                return True
            taken.conc = await self._acquire_conc(ident, lim.concurrency, shared)
            return taken.conc is not None

        async def day() -> bool:
            if lim.daily_tokens is None:
                return True
            return await storage.get(day_key) + reserve <= lim.daily_tokens

        async def tpm() -> bool:
            if lim.tpm is None:
                return True
            taken.tpm = await storage.acquire_sliding_window_entry(
                tpm_key, lim.tpm, _MINUTE, reserve
            )
            return taken.tpm

        async def rpm() -> bool:
            if lim.rpm is None:
                return True
            return await storage.acquire_entry(rpm_key, lim.rpm, _MINUTE)

        async def book_day() -> bool:
            if lim.daily_tokens is not None:
                await storage.incr(day_key, _DAY_TTL, reserve)
                taken.daily = True
            return True

        try:
            ok_conc, ok_day, ok_tpm = await _all(conc(), day(), tpm())
            if not ok_conc:
                raise self._limited(ident, "concurrency", "concurrent requests", lim, 1.0)
            if not ok_day:
                raise self._limited(ident, "daily_tokens", "tokens per day", lim, _to_midnight())
            if not ok_tpm:
                wait = await self._tpm_wait(storage, ident, lim.tpm or 0, reserve)
                raise self._limited(ident, "tpm", "tokens per minute", lim, wait)
            ok_rpm, _ = await _all(rpm(), book_day())
            if not ok_rpm:
                wait = await self._rpm_wait(storage, ident, lim.rpm or 0)
                raise self._limited(ident, "rpm", "requests per minute", lim, wait)
        except BaseException:
            with contextlib.suppress(*_REDIS_ERRORS):
                await self._give_back(storage, ident, taken, shared)
            raise
        if shared:
            # The remaining counts would cost two more round trips per request: the
            # limits only (a 429 says what is left and when).
            return taken, _limits_only(lim)
        return taken, await self._headers(storage, ident, lim)

    async def _mirror(self, lim: Limits, ident: str, reserve: int) -> _Taken:
        local = self._local
        taken = _Taken(reserve)
        if lim.concurrency is not None:
            taken.conc = await self._acquire_conc(ident, _NO_LIMIT, False)
        if lim.tpm is not None:
            await local.acquire_sliding_window_entry(
                self._key(ident, "tpm"), _NO_LIMIT, _MINUTE, reserve
            )
            taken.tpm = True
        if lim.rpm is not None:
            await local.acquire_entry(self._key(ident, "rpm"), _NO_LIMIT, _MINUTE)
        if lim.daily_tokens is not None:
            await local.incr(self._day_key(ident), _DAY_TTL, reserve)
            taken.daily = True
        return taken

    async def _give_back(
        self, storage: RedisStorage | MemoryStorage, ident: str, taken: _Taken, shared: bool
    ) -> None:
        if taken.tpm:
            await storage.acquire_sliding_window_entry(
                self._key(ident, "tpm"), _NO_LIMIT, _MINUTE, -taken.reserve
            )
            taken.tpm = False
        if taken.daily:
            await storage.incr(self._day_key(ident), _DAY_TTL, -taken.reserve)
            taken.daily = False
        if taken.conc is not None:
            await self._release_conc(ident, taken.conc, shared)
            taken.conc = None

    # --- what Redis missed ----------------------------------------------------------------
    def _owed(self, ident: str, lim: Limits, *, requests: int = 0, tokens: int = 0) -> None:
        """Remember what this replica admitted (and settled) alone, for Redis."""
        row = self._backlog.setdefault(ident, [0, 0, 0])
        if lim.rpm is not None:
            row[0] += requests
        if lim.tpm is not None:
            row[1] += tokens
        if lim.daily_tokens is not None:
            row[2] += tokens

    async def _hand_in(self, storage: RedisStorage) -> None:
        """Add to Redis what this replica admitted while it could not reach it, so the
        windows after an outage count the requests and tokens of the outage (stamped
        when they are handed in: later, so never looser)."""
        if not self._backlog and not await storage.check():
            raise ConnectionError("Redis does not answer PING")
        backlog, self._backlog = self._backlog, {}
        try:
            for ident, (requests, tpm, daily) in backlog.items():
                if requests:
                    await storage.acquire_entry(
                        self._key(ident, "rpm"), _NO_LIMIT, _MINUTE, requests
                    )
                if tpm:
                    await storage.acquire_sliding_window_entry(
                        self._key(ident, "tpm"), _NO_LIMIT, _MINUTE, tpm
                    )
                if daily:
                    await storage.incr(self._day_key(ident), _DAY_TTL, daily)
                backlog[ident] = [0, 0, 0]
        finally:
            for ident, row in backlog.items():
                if any(row):
                    mine = self._backlog.setdefault(ident, [0, 0, 0])
                    for i, v in enumerate(row):
                        mine[i] += v

    # --- concurrency ------------------------------------------------------------------------
    async def _acquire_conc(self, ident: str, limit: int, shared: bool) -> str | None:
        member = f"{self._replica}:{next(self._ids)}"
        if not shared:
            n = self._local_conc.get(ident, 0)
            if n >= limit:
                return None
            self._local_conc[ident] = n + 1
            return member
        assert self._redis is not None
        name = self._key(ident, "conc")
        now = time.time()
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(name, "-inf", now)
            pipe.zadd(name, {member: now + self._conc_ttl})
            pipe.zcard(name)
            pipe.expire(name, math.ceil(self._conc_ttl))
            _, _, count, _ = await pipe.execute()
        if int(count) > limit:
            await self._redis.zrem(name, member)
            return None
        return member

    async def _release_conc(self, ident: str, member: str, shared: bool) -> None:
        if not shared:
            self._local_conc[ident] = max(0, self._local_conc.get(ident, 1) - 1)
            return
        assert self._redis is not None
        await self._redis.zrem(self._key(ident, "conc"), member)

    # --- settling -----------------------------------------------------------------------
    async def _settle(self, permit: Permit, prompt: int | None, output: int | None) -> None:
        ident = permit.key.id
        if prompt is None and output is None:
            return
        used = (prompt or 0) + (output or 0)
        self._count(ident, prompt=prompt or 0, output=output or 0)
        delta = used - permit.reserve
        if delta == 0 or not permit.key.limits.any:
            return
        if permit.shared is None and self._shared is not None:
            self._owed(ident, permit.key.limits, tokens=delta)
        for storage, taken in ((self._shared, permit.shared), (self._local, permit.local)):
            if storage is None or taken is None:
                continue
            steps: list[Coroutine[Any, Any, Any]] = []
            if taken.tpm:
                steps.append(
                    storage.acquire_sliding_window_entry(
                        self._key(ident, "tpm"), _NO_LIMIT, _MINUTE, delta
                    )
                )
            if taken.daily:
                steps.append(storage.incr(self._day_key(ident), _DAY_TTL, delta))
            try:
                await asyncio.gather(*steps)
            except _REDIS_ERRORS as exc:
                self._redis_failed(exc)

    async def _release(self, permit: Permit) -> None:
        ident = permit.key.id
        if permit.local is not None and permit.local.conc is not None:
            await self._release_conc(ident, permit.local.conc, False)
        if permit.shared is not None and permit.shared.conc is not None:
            try:
                await self._release_conc(ident, permit.shared.conc, True)
            except _REDIS_ERRORS as exc:  # its entry expires with its deadline
                self._redis_failed(exc)

    # --- answers ----------------------------------------------------------------------------
    async def _rpm_wait(self, storage: RedisStorage | MemoryStorage, ident: str, rpm: int) -> float:
        oldest, _count = await storage.get_moving_window(self._key(ident, "rpm"), rpm, _MINUTE)
        return max(0.0, oldest + _MINUTE - time.time()) if oldest else 1.0

    async def _tpm_wait(
        self, storage: RedisStorage | MemoryStorage, ident: str, tpm: int, reserve: int
    ) -> float:
        if reserve > tpm:
            return float(_MINUTE)
        prev, prev_ttl, _cur, cur_ttl = await storage.get_sliding_window(
            self._key(ident, "tpm"), _MINUTE
        )
        # The previous window's weight shrinks as it expires; after it, the current one's.
        return max(1.0, prev_ttl if prev else cur_ttl - _MINUTE)

    async def _headers(
        self, storage: RedisStorage | MemoryStorage, ident: str, lim: Limits
    ) -> Headers:
        out: list[tuple[bytes, bytes]] = []
        now = time.time()
        if lim.rpm is not None:
            oldest, count = await storage.get_moving_window(
                self._key(ident, "rpm"), lim.rpm, _MINUTE
            )
            reset = oldest + _MINUTE - now if oldest else 0.0
            out += _ratelimit("requests", lim.rpm, lim.rpm - count, reset)
        if lim.tpm is not None:
            prev, prev_ttl, cur, _ = await storage.get_sliding_window(
                self._key(ident, "tpm"), _MINUTE
            )
            weighted = prev * prev_ttl / _MINUTE + cur
            out += _ratelimit("tokens", lim.tpm, lim.tpm - math.floor(weighted), prev_ttl)
        return tuple(out)

    def _limited(self, ident: str, which: str, what: str, lim: Limits, wait: float) -> RateLimited:
        if self._metrics is not None:
            self._metrics.limited.labels(key=self._label(ident), limit=which).inc()
        headers: list[tuple[bytes, bytes]] = []
        if lim.rpm is not None and which == "rpm":
            headers += _ratelimit("requests", lim.rpm, 0, wait)
        if lim.tpm is not None and which == "tpm":
            headers += _ratelimit("tokens", lim.tpm, 0, wait)
        return RateLimited(
            f"key {ident} is over its limit of {what}", retry_after=max(wait, 1.0),
            headers=tuple(headers),
        )  # fmt: skip

    # --- Redis health ------------------------------------------------------------------------
    def _redis_failed(self, exc: BaseException) -> None:
        if self._metrics is not None:
            self._metrics.errors.inc()
        if self._breaker.failure(time.monotonic(), str(exc) or type(exc).__name__):
            log.warning("key limits: Redis unreachable (%s); enforcing this replica's share", exc)
        self._gauge("local")
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._recover())

    async def _recover(self) -> None:
        """While Redis is unreachable: every cooldown, hand in what this replica admitted
        alone (what it admits while a hand-in is under way too); once all of it is in,
        the circuit closes (``admit`` stays local until then, so the outage's requests
        are counted before it takes more from Redis's windows)."""
        assert self._shared is not None
        while True:
            await asyncio.sleep(self._cooldown_s)
            try:
                await self._hand_in(self._shared)
                while self._backlog:  # admitted alone while that was under way
                    await self._hand_in(self._shared)
            except _REDIS_ERRORS as exc:
                if self._metrics is not None:
                    self._metrics.errors.inc()
                self._breaker.failure(time.monotonic(), str(exc) or type(exc).__name__)
                continue
            self._redis_ok()
            return

    def _redis_ok(self) -> None:
        if self._breaker.success():
            log.info("key limits: Redis back, shared again")
        self._gauge("shared")

    def _gauge(self, mode: str) -> None:
        if mode == self._mode:
            return
        self._mode = mode
        if self._metrics is not None:
            for m in ("shared", "local", "memory"):
                self._metrics.mode.labels(mode=m).set(1 if m == mode else 0)

    # --- usage ----------------------------------------------------------------------------
    def _count(self, ident: str, *, requests: int = 0, prompt: int = 0, output: int = 0) -> None:
        row = self._usage.setdefault((_today(), ident), [0, 0, 0])
        row[0] += requests
        row[1] += prompt
        row[2] += output
        if self._metrics is not None:
            label = self._label(ident)
            if requests:
                self._metrics.requests.labels(key=label).inc(requests)
            if prompt:
                self._metrics.tokens.labels(key=label, kind="prompt").inc(prompt)
            if output:
                self._metrics.tokens.labels(key=label, kind="output").inc(output)

    def _label(self, ident: str) -> str:
        label = self._labels.get(ident)
        if label is None:
            label = ident if len(self._labels) < self._metrics_keys else "other"
            self._labels[ident] = label
        return label

    async def flush(self) -> None:
        rows, self._usage = self._usage, {}
        if not rows:
            return
        usage = [Usage(d, k, r, p, o) for (d, k), (r, p, o) in rows.items()]
        try:
            await self._store.add_usage(usage)
        except Exception as exc:  # kept for the next flush
            log.warning("key usage not written yet (%s); kept for the next flush", exc)
            for u in usage:
                row = self._usage.setdefault((u.day, u.key_id), [0, 0, 0])
                row[0] += u.requests
                row[1] += u.prompt_tokens
                row[2] += u.output_tokens

    async def _flusher(self) -> None:
        while True:
            await asyncio.sleep(self._flush_s)
            await self.flush()

    # --- names ------------------------------------------------------------------------------
    def _key(self, ident: str, kind: str) -> str:
        return f"{self._ns}:key:{ident}:{kind}"

    def _day_key(self, ident: str) -> str:
        return f"{self._ns}:key:{ident}:day:{_today()}"


class _Peak:
    """The largest count of replicas seen in the last ``window_s``: a replica live a
    moment ago may hold requests in this minute's window, so a count that drops (the
    others' heartbeats lapsed while Redis was down, or they left) does not widen a
    share until a window has passed. A count that grows narrows it at once."""

    def __init__(self, count: Callable[[], int], window_s: float) -> None:
        self._count = count
        self._window_s = window_s
        self._seen: dict[int, float] = {}  # count -> when last seen

    def see(self) -> int:
        n, now = max(1, self._count()), time.monotonic()
        self._seen[n] = now
        if len(self._seen) > 1:
            self._seen = {k: t for k, t in self._seen.items() if now - t <= self._window_s}
        return n

    def peak(self) -> int:
        self.see()
        return max(self._seen)


async def _all(*steps: Coroutine[Any, Any, bool]) -> list[bool]:
    """Run ``steps`` at once; every one finishes (so what each took is known) before the
    first failure is raised."""
    results = await asyncio.gather(*steps, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return [bool(r) for r in results]


def _limits_only(lim: Limits) -> Headers:
    out: list[tuple[bytes, bytes]] = []
    if lim.rpm is not None:
        out.append((b"x-ratelimit-limit-requests", str(lim.rpm).encode()))
    if lim.tpm is not None:
        out.append((b"x-ratelimit-limit-tokens", str(lim.tpm).encode()))
    return tuple(out)


def _ratelimit(kind: str, limit: int, remaining: int, reset: float) -> list[tuple[bytes, bytes]]:
    return [
        (f"x-ratelimit-limit-{kind}".encode(), str(limit).encode()),
        (f"x-ratelimit-remaining-{kind}".encode(), str(max(0, remaining)).encode()),
        (f"x-ratelimit-reset-{kind}".encode(), reset_text(max(0.0, reset)).encode()),
    ]


def _today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


def _to_midnight() -> float:
    now = datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight - now).total_seconds()
